"""The halves of a reversible block: Flax modules that own parameters and call the pure math.

Shapes use the package's einsum legend (reformer_jax/__init__.py): here b
batch, l length, m d_model, h heads, a heads per head chunk, d per-head dim,
f d_ff, c chunk length, t context (memory) length.

    AttentionHalf(cfg, kind)   F: LayerNorm -> attention of `kind` (reformer_jax/kinds.py) -> W_o
    CrossAttentionHalf(cfg)    C: LayerNorm -> attention to a context (an encoder's memory)
    FeedForwardHalf(cfg)       G: LayerNorm -> Dense(d_ff) -> activation -> Dense

The two halves of a reversible block (docs/algorithm.md §3) are modules whose `apply` is a
pure function of (params, x, key): the reversible stack (reversible.py)
differentiates and replays them with `jax.vjp`. Every random choice inside a
half (hashing, attention dropout, output dropout, feed-forward dropout) comes
from the `key` argument, never from Flax's rng streams, so the backward pass
regenerates the forward's masks exactly.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import attention, kinds
from reformer_jax.chunked import positionwise, scan_head_chunks
from reformer_jax.config import RunSettings

Array = jax.Array
# "gelu" is the tanh approximation (trax's and jax's default); "gelu_exact" the
# erf form (PyTorch's and HF transformers' "gelu").
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
}

# Sub-keys of a layer key (docs/algorithm.md, "Keys and randomness").
HASH, ATTN_DROPOUT, OUT_DROPOUT, FF_DROPOUT = range(4)


def layer_keys(key: Array) -> Array:
    """A layer key -> 4 keys: hashing, attention dropout, output dropout, FF dropout."""
    return jax.random.split(key, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float = 1e-6) -> Array:
    """LayerNorm over the last axis with float32 statistics; output in x's dtype.

    The backward pass is written out (a custom VJP) so that it saves only x
    (in its own dtype) and the per-position float32 mean and 1/std: autodiff
    of the formula keeps several float32 [..., d] intermediates alive
    (x - mean, the normalised x, the broadcast scale), 1.5 GiB per call at
    [65536, 1024]. The gradient equals autodiff's (tests/test_model.py).
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(var + eps)
    y = ((x32 - mean) * rstd * scale + bias).astype(x.dtype)
    return y, (x, scale, mean, rstd)


def _layer_norm_bwd(eps, residuals, g):
    # y = xhat * scale + bias, xhat = (x - mean) * rstd:
    # dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)), gs = g * scale.
    x, scale, mean, rstd = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd
    g32 = g.astype(jnp.float32)
    gs = g32 * scale
    dx = rstd * (
        gs
        - jnp.mean(gs, axis=-1, keepdims=True)
        - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True)
    )
    axes = tuple(range(x.ndim - 1))
    dscale = jnp.sum(g32 * xhat, axis=axes).astype(scale.dtype)
    dbias = jnp.sum(g32, axis=axes).astype(scale.dtype)
    return dx.astype(x.dtype), dscale, dbias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def dropout(x: Array, rate: float, key: Array | None, deterministic: bool) -> Array:
    """Inverted dropout; identity when deterministic or rate == 0."""
    if deterministic or rate == 0.0:
        return x
    if key is None:
        raise ValueError("dropout in training mode needs a PRNG key.")
    return attention.apply_dropout(x, rate, key)


class LayerNormParams(nn.Module):
    """The parameters of a LayerNorm, `<name>/scale` and `<name>/bias` (float32).

    Calling it returns them as a dict for the pure `layer_norm`, so code that
    runs under `lax.map`/`jax.checkpoint` can pass them explicitly. Every
    LayerNorm in the model is named `norm`.
    """

    width: int

    @nn.compact
    def __call__(self) -> dict[str, Array]:
        return {
            "scale": self.param("scale", nn.initializers.ones, (self.width,), jnp.float32),
            "bias": self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32),
        }


def _projection_init():
    # Fan-in is d_model for the [m, h, d] projections.
    return nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))


def _output_init():
    # Fan-in is h * d for the [h, d, m] output projection.
    return nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)


class AttentionHalf(nn.Module):
    """F of a reversible block: LayerNorm -> attention -> W_o -> dropout.

    `kind` names an attention kind of reformer_jax/kinds.py, which decides
    the parameters (shared-QK kinds have no W_k, so an LSH layer evaluates
    with shared-QK full attention on the same checkpoint, paper Table 2) and
    the attention itself. Projections have no biases (docs/algorithm.md §1.1).

    Besides the training call, `project` and `output` are the position-wise
    ends on their own: decoding (reformer_jax/decoding.py) runs the kind's
    cached attention between them.
    """

    cfg: Any  # reformer_jax.config.ReformerConfig
    kind: str
    run: RunSettings = RunSettings()

    def setup(self):
        cfg = self.cfg
        shape = (cfg.d_model, cfg.n_heads, cfg.d_head)
        self.attention_kind = kinds.get(self.kind)
        self.wq = self.param("wq", _projection_init(), shape, jnp.float32)
        if not self.attention_kind.shared_qk:
            self.wk = self.param("wk", _projection_init(), shape, jnp.float32)
        self.wv = self.param("wv", _projection_init(), shape, jnp.float32)
        self.wo = self.param(
            "wo", _output_init(), (cfg.n_heads, cfg.d_head, cfg.d_model), jnp.float32
        )
        self.norm = LayerNormParams(cfg.d_model)

    def _weights(self) -> tuple[Array, Array | None, Array]:
        wk = None if self.attention_kind.shared_qk else self.wk
        return self.wq, wk, self.wv

    def project(self, x: Array) -> tuple[Array, Array | None, Array]:
        """x [b, l, m] -> q, k (None for a shared-QK kind), v: [b, h, l, d], no chunking."""
        dtype = jnp.dtype(self.cfg.dtype)
        norm = self.norm()
        h = layer_norm(x, norm["scale"], norm["bias"], self.cfg.layer_norm_eps).astype(dtype)
        w = lambda p: None if p is None else jnp.einsum("blm,mhd->bhld", h, p.astype(dtype))
        return tuple(w(p) for p in self._weights())

    def output(self, out: Array) -> Array:
        """Attention output [b, h, l, e] -> [b, l, m] (W_o summed over heads; no dropout)."""
        wo = self.wo.astype(jnp.dtype(self.cfg.dtype))
        return jnp.einsum("bhle,hem->blm", out, wo, preferred_element_type=jnp.float32).astype(
            out.dtype
        )

    def __call__(
        self,
        x: Array,
        key: Array,
        *,
        n_hashes: int | None = None,
        buckets: Array | None = None,
        hash_key: Array | None = None,
        deterministic: bool = True,
        mask: Array | None = None,
        causal: bool | None = None,
    ) -> tuple[Array, Array | None]:
        """x: [b, l, m] -> (y [b, l, m], LSH buckets [b, h, r, l] or None).

        LSH rotations come from `hash_key` when given (a fixed hash seed),
        else from `key`; `buckets` skips hashing altogether. `mask` (bool
        [b, l], True = real token) hides padding keys; `causal` defaults to
        the config's.
        """
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        heads, dk = cfg.n_heads, cfg.d_head
        causal = cfg.causal if causal is None else causal
        keys = layer_keys(key)
        norm = self.norm()
        wq, wk, wv = self._weights()
        attn_rate = 0.0 if deterministic else cfg.attention_dropout
        hash_key = keys[HASH] if hash_key is None else hash_key
        kind = self.attention_kind

        # Position-wise parts run over the sequence in chunks of run.ff_chunk_size
        # (`positionwise`): the LayerNorm and the q/k/v projections of a head chunk,
        # and the output projection with its dropout. Only the attention itself
        # sees the whole sequence, one head chunk at a time.
        run = self.run.resolved(x.shape[1])  # "auto" settings for this length
        eps, c = cfg.layer_norm_eps, run.ff_chunk_size

        def project(p, xc, _):  # xc: [b, c, m] -> q, k (or None), v: [b, c, a, d]
            hc = layer_norm(xc, p["norm"]["scale"], p["norm"]["bias"], eps).astype(dtype)
            w = lambda name: jnp.einsum("bcm,mad->bcad", hc, p[name].astype(dtype))
            return w("wq"), None if p.get("wk") is None else w("wk"), w("wv")

        def heads_out(wq, wk, wv, hash_key, drop_key, buckets, x=x, norm=norm, mask=mask):
            """Heads of [m, a, d] projections -> (attention output [b, l, a, d], buckets)."""
            p = {"norm": norm, "wq": wq, "wk": wk, "wv": wv}
            q, k, v = positionwise(project, c, p, (x,), None)
            bhld = lambda t: None if t is None else jnp.swapaxes(t, 1, 2)
            out, new_buckets = kind.attend(
                cfg,
                bhld(q),
                bhld(k),
                bhld(v),
                causal=causal,
                mask=mask,
                n_hashes=n_hashes,
                hash_key=hash_key,
                buckets=buckets,
                dropout_rate=attn_rate,
                dropout_key=drop_key,
                impl=self.run.attention_impl,
            )
            return jnp.swapaxes(out, 1, 2), new_buckets

        per_chunk = run.attention_head_chunk or heads
        if per_chunk >= heads:
            out, new_buckets = heads_out(wq, wk, wv, hash_key, keys[ATTN_DROPOUT], buckets)
        else:
            # Head chunks in a loop (`scan_head_chunks`), from the projections on:
            # one chunk's q, v and [chunks, c, w] logits are alive at a time,
            # forward and backward. Head chunk i hashes and drops out with keys
            # folded with i.
            n = heads // per_chunk

            def split(t, axis):  # [.., h, ..] -> [n, .., a, ..], h at `axis`
                if t is None:
                    return None
                t = t.reshape(*t.shape[:axis], n, per_chunk, *t.shape[axis + 1 :])
                return jnp.moveaxis(t, axis, 0)

            def chunk_out(shared, p_i, x, e_i):
                wq_i, wk_i, wv_i = p_i
                return heads_out(
                    wq_i, wk_i, wv_i, e_i["hash"], e_i["drop"], e_i["buckets"], x, **shared
                )

            fold = lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(n))
            extras = {"hash": fold(hash_key), "drop": fold(keys[ATTN_DROPOUT])}
            extras["buckets"] = split(buckets, 1)
            out, chunk_buckets = scan_head_chunks(
                chunk_out,
                {"norm": norm, "mask": mask},
                (split(wq, 1), split(wk, 1), split(wv, 1)),
                x,
                extras,
            )
            new_buckets = (
                None
                if chunk_buckets is None
                else jnp.moveaxis(chunk_buckets, 0, 1).reshape(
                    chunk_buckets.shape[1], heads, *chunk_buckets.shape[3:]
                )
            )
        out = out.reshape(*out.shape[:2], heads, dk)

        def output(p, oc, key):  # oc: [b, c, h, d] -> [b, c, m]
            yc = jnp.einsum(
                "bchd,hdm->bcm", oc, p.astype(dtype), preferred_element_type=jnp.float32
            )
            return (dropout(yc.astype(dtype), cfg.dropout, key, deterministic),)

        (y,) = positionwise(output, c, self.wo, (out,), keys[OUT_DROPOUT])
        return y, new_buckets


class CrossAttentionHalf(nn.Module):
    """C of a decoder block: LayerNorm -> attention to a context -> W_o -> dropout.

    Queries come from the block's stream, keys and values from the context
    (an encoder's memory [b, t, m], not normalised again: the encoder ends
    with its own LayerNorm). Attention is full over the context (paper §5's
    translation model uses dense encoder-decoder attention, as trax's
    EncDecAttention) and runs over chunks of run.ff_chunk_size queries, so
    only one chunk's [b, h, c, t] logits are alive.

    `memory_kv` and `decode` are the two ends on their own for cached
    decoding (reformer_jax/decoding.py): the memory's keys and values are
    projected once per source, and each new position attends to them.
    """

    cfg: Any
    run: RunSettings = RunSettings()

    def setup(self):
        cfg = self.cfg
        shape = (cfg.d_model, cfg.n_heads, cfg.d_head)
        self.norm = LayerNormParams(cfg.d_model)
        self.wq = self.param("wq", _projection_init(), shape, jnp.float32)
        self.wo = self.param(
            "wo", _output_init(), (cfg.n_heads, cfg.d_head, cfg.d_model), jnp.float32
        )
        self.wk = self.param("wk", _projection_init(), shape, jnp.float32)
        self.wv = self.param("wv", _projection_init(), shape, jnp.float32)

    def memory_kv(self, memory: Array) -> tuple[Array, Array]:
        """memory [b, t, m] -> its keys and values [b, h, t, d] (in cfg.dtype)."""
        dtype = jnp.dtype(self.cfg.dtype)
        memory = memory.astype(dtype)
        k = jnp.einsum("btm,mhd->bhtd", memory, self.wk.astype(dtype))
        v = jnp.einsum("btm,mhd->bhtd", memory, self.wv.astype(dtype))
        return k, v

    def _attend(self, p, xc, k, deterministic):
        """xc [b, c, m] against p's keys/values [b, h, t, d] and bias [b, 1, 1, t] -> [b, c, m]."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        attn_rate = 0.0 if deterministic else cfg.attention_dropout
        hc = layer_norm(xc, p["norm"]["scale"], p["norm"]["bias"], cfg.layer_norm_eps)
        q = jnp.einsum("bcm,mhd->bhcd", hc.astype(dtype), p["wq"].astype(dtype))
        logits = jnp.einsum("bhcd,bhtd->bhct", q, p["k"], preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * cfg.d_head**-0.5 + p["bias"], axis=-1)
        k_attn, k_out = (None, None) if k is None else jax.random.split(k)
        probs = dropout(probs, attn_rate, k_attn, attn_rate == 0.0)
        out = jnp.einsum("bhct,bhte->bhce", probs.astype(dtype), p["v"])
        y = jnp.einsum(
            "bhce,hem->bcm", out, p["wo"].astype(dtype), preferred_element_type=jnp.float32
        )
        return dropout(y.astype(dtype), cfg.dropout, k_out, deterministic)

    def _params(self, k: Array, v: Array, bias: Array) -> dict:
        return {
            "norm": self.norm(),
            "wq": self.wq,
            "wo": self.wo,
            "k": k,
            "v": v,
            "bias": bias.astype(jnp.float32)[:, None, None, :],  # [b, 1, 1, t]
        }

    def __call__(self, x: Array, context: dict, key: Array, *, deterministic: bool = True):
        """x [b, l, m], context {"memory": [b, t, m], "bias": float32 [b, t]} -> [b, l, m].

        bias is 0 for real context positions and -MASK_PENALTY for padding.
        """
        k, v = self.memory_kv(context["memory"])
        p = self._params(k, v, context["bias"])

        def chunk(p, xc, k):
            return self._attend(p, xc, k, deterministic)

        out_key = layer_keys(key)[OUT_DROPOUT]
        c = self.run.resolved(x.shape[1]).ff_chunk_size
        return positionwise(chunk, c, p, (x,), out_key)

    def decode(self, x: Array, k: Array, v: Array, bias: Array) -> Array:
        """x [b, n, m] against memory keys/values [b, h, t, d] (`memory_kv`) -> [b, n, m].

        No dropout (decoding); bias float32 [b, t] as in `__call__`.
        """
        return self._attend(self._params(k, v, bias), x, None, True)


class FeedForwardHalf(nn.Module):
    """G of a reversible block: LayerNorm -> Dense(d_ff) -> dropout -> act -> Dense -> dropout.

    Dropout sits before the activation, as in trax (docs/algorithm.md §4). With
    `run.ff_chunk_size`, the sequence is processed in chunks by `positionwise`
    (recomputed in the backward pass), so only one chunk's [b, c, f]
    activation is alive in the forward or the backward pass. Each chunk draws its dropout mask from
    fold_in(key, chunk index), so masks depend on the chunk size.
    """

    cfg: Any
    run: RunSettings = RunSettings()

    @nn.compact
    def __call__(self, x: Array, key: Array, *, deterministic: bool = True) -> Array:
        """x: [b, l, m] -> [b, l, m]."""
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        d, f = cfg.d_model, cfg.d_ff
        params = {
            "norm": LayerNormParams(d, name="norm")(),
            "w1": self.param("w1", nn.initializers.lecun_normal(), (d, f), jnp.float32),
            "b1": self.param("b1", nn.initializers.zeros, (f,), jnp.float32),
            "w2": self.param("w2", nn.initializers.lecun_normal(), (f, d), jnp.float32),
            "b2": self.param("b2", nn.initializers.zeros, (d,), jnp.float32),
        }
        act = ACTIVATIONS[cfg.ff_activation]

        def block(p, xc, k):  # xc: [b, c, m]
            h = layer_norm(xc, p["norm"]["scale"], p["norm"]["bias"], cfg.layer_norm_eps)
            h = h.astype(dtype)
            k1, k2 = jax.random.split(k)
            h = jnp.einsum("bcm,mf->bcf", h, p["w1"].astype(dtype)) + p["b1"].astype(dtype)
            h = act(dropout(h, cfg.dropout, k1, deterministic))
            h = jnp.einsum("bcf,fm->bcm", h, p["w2"].astype(dtype)) + p["b2"].astype(dtype)
            return dropout(h, cfg.dropout, k2, deterministic)

        ff_key = layer_keys(key)[FF_DROPOUT]
        c = self.run.resolved(x.shape[1]).ff_chunk_size
        return positionwise(block, c, params, (x,), ff_key)
