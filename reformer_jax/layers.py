"""Flax modules that own the Reformer's parameters and call the pure math.

Shapes use the package's einsum legend (reformer_jax/__init__.py): here b
batch, l length, m d_model, h heads, g heads per group, d per-head dim,
f d_ff, u chunks, c chunk length.

The two halves of a reversible block (docs/algorithm.md §3) are modules whose `apply` is a
pure function of (params, x, key): the reversible stack (reversible.py)
differentiates and replays them with `jax.vjp`. Every random choice inside a
half (hashing, attention dropout, output dropout, feed-forward dropout) comes
from the `key` argument, never from Flax's rng streams, so the backward pass
regenerates the forward's masks exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import attention, lsh

Array = jax.Array
ATTENTION_KINDS = ("lsh", "local", "full", "full_shared")
SHARED_QK_KINDS = ("lsh", "full_shared")
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


class AttentionHalf(nn.Module):
    """F of a reversible block: LayerNorm -> attention -> W_o -> dropout.

    `kind` is one of "lsh" (shared-QK LSH, docs/algorithm.md §1), "local"
    (chunked, docs/algorithm.md §2), "full" (dense, separate W_k) or
    "full_shared" (dense shared-QK, the same parameters as "lsh": an LSH layer
    can be evaluated with full attention).
    Projections have no biases (docs/algorithm.md §1.1).
    """

    cfg: Any  # reformer_jax.model.ReformerConfig
    kind: str

    @nn.compact
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
    ) -> tuple[Array, Array | None]:
        """x: [b, l, m] -> (y [b, l, m], LSH buckets [b, h, r, l] or None).

        LSH rotations come from `hash_key` when given (a fixed hash seed),
        else from `key`; `buckets` skips hashing altogether.
        """
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        d, heads, dk = cfg.d_model, cfg.n_heads, cfg.d_head
        # Fan-in is d_model for the [m, h, d] projections, h * d for [h, d, m].
        init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        proj = lambda name: self.param(name, init, (d, heads, dk), jnp.float32)
        wq = proj("wq")
        wk = None if self.kind in SHARED_QK_KINDS else proj("wk")
        wv = proj("wv")
        wo = self.param(
            "wo",
            nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
            (heads, dk, d),
            jnp.float32,
        )
        keys = layer_keys(key)

        norm = LayerNormParams(d, name="norm")()
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {self.kind!r}; use one of {ATTENTION_KINDS}.")
        n_hashes = cfg.n_hashes if n_hashes is None else n_hashes
        attn_rate = 0.0 if deterministic else cfg.attention_dropout
        hash_key = keys[HASH] if hash_key is None else hash_key

        def attend(q, k, v, hash_key, drop_key, buckets, mask):  # [b, g, l, .] for g heads
            common = dict(dropout_rate=attn_rate, dropout_key=drop_key, mask=mask)
            if self.kind == "lsh":
                return attention.lsh_attention(
                    q,
                    v,
                    key=hash_key,
                    n_hashes=n_hashes,
                    n_buckets=cfg.lsh_buckets(x.shape[1]),
                    chunk_len=cfg.chunk_len,
                    causal=cfg.causal,
                    n_chunks_before=cfg.n_chunks_before,
                    n_chunks_after=cfg.n_chunks_after,
                    dedup=cfg.dedup,
                    buckets=buckets,
                    **common,
                )
            if self.kind == "local":
                out = attention.local_attention(
                    q,
                    k,
                    v,
                    chunk_len=cfg.local_chunk_len,
                    causal=cfg.causal,
                    n_chunks_before=cfg.local_window[0],
                    n_chunks_after=cfg.local_window[1],
                    **common,
                )
            else:
                out = attention.full_attention(
                    q, k, v, causal=cfg.causal, shared_qk=self.kind == "full_shared", **common
                )
            return out, None

        # Position-wise parts run over the sequence in chunks of cfg.ff_chunk_size
        # (`positionwise`): the LayerNorm and the q/k/v projections of a head group,
        # and the output projection with its dropout. Only the attention itself
        # sees the whole sequence, one head group at a time.
        eps, c = cfg.layer_norm_eps, cfg.ff_chunk_size

        def project(p, xc, _):  # xc: [b, c, m] -> q, k (or None), v: [b, c, g, d]
            hc = layer_norm(xc, p["norm"]["scale"], p["norm"]["bias"], eps).astype(dtype)
            w = lambda name: jnp.einsum("bcm,mgd->bcgd", hc, p[name].astype(dtype))
            return w("wq"), None if p.get("wk") is None else w("wk"), w("wv")

        def heads_out(wq, wk, wv, hash_key, drop_key, buckets, x=x, norm=norm, mask=mask):
            """Heads of [m, g, d] projections -> (attention output [b, l, g, d], buckets)."""
            p = {"norm": norm, "wq": wq, "wk": wk, "wv": wv}
            q, k, v = positionwise(project, c, p, (x,), None)
            bhld = lambda a: None if a is None else jnp.swapaxes(a, 1, 2)
            out, new_buckets = attend(bhld(q), bhld(k), bhld(v), hash_key, drop_key, buckets, mask)
            return jnp.swapaxes(out, 1, 2), new_buckets

        group = cfg.attention_head_chunk or heads
        if group >= heads:
            out, new_buckets = heads_out(wq, wk, wv, hash_key, keys[ATTN_DROPOUT], buckets)
        else:
            # Head groups in a loop (`scan_groups`), from the projections on: one
            # group's q, v and [chunks, c, w] logits are alive at a time, forward
            # and backward. Group i hashes and drops out with keys folded with i.
            n = heads // group

            def split(a, axis):  # [.., h, ..] -> [n, .., g, ..], h at `axis`
                if a is None:
                    return None
                a = a.reshape(*a.shape[:axis], n, group, *a.shape[axis + 1 :])
                return jnp.moveaxis(a, axis, 0)

            def group_out(shared, p_i, x, e_i):
                wq_i, wk_i, wv_i = p_i
                return heads_out(
                    wq_i, wk_i, wv_i, e_i["hash"], e_i["drop"], e_i["buckets"], x, **shared
                )

            fold = lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(n))
            extras = {"hash": fold(hash_key), "drop": fold(keys[ATTN_DROPOUT])}
            extras["buckets"] = split(buckets, 1)
            out, group_buckets = scan_groups(
                group_out,
                {"norm": norm, "mask": mask},
                (split(wq, 1), split(wk, 1), split(wv, 1)),
                x,
                extras,
            )
            new_buckets = (
                None
                if group_buckets is None
                else jnp.moveaxis(group_buckets, 0, 1).reshape(
                    group_buckets.shape[1], heads, *group_buckets.shape[3:]
                )
            )
        out = out.reshape(*out.shape[:2], heads, dk)

        def output(p, oc, key):  # oc: [b, c, h, d] -> [b, c, m]
            yc = jnp.einsum(
                "bchd,hdm->bcm", oc, p.astype(dtype), preferred_element_type=jnp.float32
            )
            return (dropout(yc.astype(dtype), cfg.dropout, key, deterministic),)

        (y,) = positionwise(output, c, wo, (out,), keys[OUT_DROPOUT])
        return y, new_buckets


class FeedForwardHalf(nn.Module):
    """G of a reversible block: LayerNorm -> Dense(d_ff) -> dropout -> act -> Dense -> dropout.

    Dropout sits before the activation, as in trax (docs/algorithm.md §4). With
    `cfg.ff_chunk_size`, the sequence is processed in chunks by `map_chunks`
    (recomputed in the backward pass), so only one chunk's [b, c, f]
    activation is alive in the forward or the backward pass. Each chunk draws its dropout mask from
    fold_in(key, chunk index), so masks depend on the chunk size.
    """

    cfg: Any

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
        ff_key = layer_keys(key)[FF_DROPOUT]
        act = ACTIVATIONS[cfg.ff_activation]

        def block(p, xc, k):  # xc: [b, c, m]
            h = layer_norm(xc, p["norm"]["scale"], p["norm"]["bias"], cfg.layer_norm_eps)
            h = h.astype(dtype)
            k1, k2 = jax.random.split(k)
            h = jnp.einsum("bcm,mf->bcf", h, p["w1"].astype(dtype)) + p["b1"].astype(dtype)
            h = act(dropout(h, cfg.dropout, k1, deterministic))
            h = jnp.einsum("bcf,fm->bcm", h, p["w2"].astype(dtype)) + p["b2"].astype(dtype)
            return dropout(h, cfg.dropout, k2, deterministic)

        b, length, _ = x.shape
        c = cfg.ff_chunk_size
        if not c or c >= length:
            return block(params, x, ff_key)
        padded = lsh.round_up(length, c)
        xs = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))
        return map_chunks(block, c, params, xs, ff_key)[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def map_chunks(fn, chunk: int, params, x: Array, key: Array) -> Array:
    """y[:, i*c:(i+1)*c] = fn(params, x[:, i*c:(i+1)*c], fold_in(key, i)) for x: [b, n*c, m].

    Both passes loop over the chunks writing into one [b, l, m] output in
    place; the backward pass recomputes each chunk's forward inside `jax.vjp`
    and sums the parameter gradients. Only one chunk's activations are alive
    at a time, and no stacked [n, b, c, m] copies of x, y or their cotangents
    are made (`lax.map` over a transposed x makes several; at [65536, 1024]
    each is 256 MiB in float32).
    """
    return _map_chunks_fwd(fn, chunk, params, x, key)[0]


def _slice(x, i, chunk):
    # Passing x through a barrier with the loop index keeps the slice inside the
    # loop: XLA:CPU computes bfloat16 arithmetic in float32, and would otherwise
    # convert the whole loop-invariant x to float32 before the loop and carry
    # that copy through it (2 GiB per [2^20, 512] input).
    x, _ = jax.lax.optimization_barrier((x, i))
    return jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)


def _map_chunks_fwd(fn, chunk, params, x, key):
    # One buffer holds x's chunks not yet processed and y's chunks already
    # written: chunk i is read before it is overwritten. (A zeros-initialised
    # output buffer would be a separate allocation that XLA's CPU scheduler
    # hoists to the start of the reversible layer, alive for its whole duration.)
    def body(i, buf):
        y_i = fn(params, _slice(buf, i, chunk), jax.random.fold_in(key, i))
        return jax.lax.dynamic_update_slice_in_dim(buf, y_i.astype(buf.dtype), i * chunk, axis=1)

    y = jax.lax.fori_loop(0, x.shape[1] // chunk, body, x)
    return y, (params, x, key)


def _map_chunks_bwd(fn, chunk, residuals, dy):
    params, x, key = residuals

    def body(i, carry):  # buf: dy's chunks >= i, dx's chunks < i (as in the forward)
        buf, dparams = carry
        _, vjp = jax.vjp(
            lambda p, x_i: fn(p, x_i, jax.random.fold_in(key, i)), params, _slice(x, i, chunk)
        )
        dp_i, dx_i = vjp(_slice(buf, i, chunk))
        buf = jax.lax.dynamic_update_slice_in_dim(buf, dx_i.astype(buf.dtype), i * chunk, axis=1)
        return buf, jax.tree_util.tree_map(jnp.add, dparams, dp_i)

    init = (dy.astype(x.dtype), jax.tree_util.tree_map(jnp.zeros_like, params))
    dx, dparams = jax.lax.fori_loop(0, x.shape[1] // chunk, body, init)
    return dparams, dx, None


map_chunks.defvjp(_map_chunks_fwd, _map_chunks_bwd)


def positionwise(fn, chunk: int | None, params, xs: tuple, key: Array | None) -> tuple:
    """fn(params, xs, key) for a position-wise fn, in chunks of `chunk` positions.

    xs: a tuple of [b, l, ...] arrays; fn maps their [b, c, ...] slices to a
    tuple of [b, c, ...] arrays (None entries pass through). Without a chunk
    (or chunk >= l) fn runs once on the whole sequence; otherwise the inputs are
    padded to a multiple of `chunk`, `scan_chunks` runs the chunks (chunk i with
    fold_in(key, i)), and the outputs are cut back to l.
    """
    length = xs[0].shape[1]
    if not chunk or chunk >= length:
        return fn(params, xs[0] if len(xs) == 1 else xs, key)
    padded = lsh.round_up(length, chunk)
    xs = tuple(lsh.pad_length(a, padded, axis=1) for a in xs)
    unpack = (lambda p, a, k: fn(p, a[0], k)) if len(xs) == 1 else fn
    key = jax.random.key(0) if key is None else key
    ys = scan_chunks(unpack, chunk, params, xs, key)
    return tuple(None if y is None else y[:, :length] for y in ys)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def scan_chunks(fn, chunk: int, params, xs: tuple, key: Array) -> tuple:
    """ys[j][:, i*c:(i+1)*c] = fn(params, xs[:, i*c:(i+1)*c], fold_in(key, i))[j].

    Like `map_chunks`, for inputs and outputs of other shapes: both passes loop
    over the chunks, writing each output (and, backward, each input's
    cotangent) into one [b, l, ...] buffer in place, and the backward pass
    recomputes a chunk's forward inside `jax.vjp`. No stacked per-chunk copies
    are made, and a chunk's intermediates (and, on XLA:CPU, the float32 copies
    of its bfloat16 matmul operands) are the only ones alive.
    """
    return _scan_chunks_fwd(fn, chunk, params, xs, key)[0]


def _grow(part: Array, size: int, axis: int) -> Array:
    """part zero-padded at the end of `axis` to `size`: the loops' output buffer.

    Made from the first chunk's (or group's) result rather than as a zeros
    array: XLA would make a zeros buffer (and the copy a loop state takes) at
    the start of the enclosing loop body, alive for all of it, while a buffer
    computed from data is made where the data is.
    """
    widths = [(0, 0)] * part.ndim
    widths[axis] = (0, size - part.shape[axis])
    return jnp.pad(part, widths)


def _write(bufs, parts, i, chunk):
    return jax.tree_util.tree_map(
        lambda buf, part: jax.lax.dynamic_update_slice_in_dim(buf, part, i * chunk, axis=1),
        bufs,
        parts,
    )


def _backward_loop(step, chunk: int, length: int):
    """The chunk loops' backward pass: step(i) -> (parameter cotangents, input
    cotangents of chunk i); writes the latter into [b, length, ...] buffers grown
    from chunk 0's and sums the former."""

    def body(i, carry):
        dxs, dparams = carry
        dp_i, dxs_i = step(i)
        return _write(dxs, dxs_i, i, chunk), jax.tree_util.tree_map(jnp.add, dparams, dp_i)

    dp_0, dxs_0 = step(0)
    init = (tuple(_grow(d, length, 1) for d in dxs_0), dp_0)
    return jax.lax.fori_loop(1, length // chunk, body, init)


def _scan_chunks_fwd(fn, chunk, params, xs, key):
    length = xs[0].shape[1]
    call = lambda i: fn(params, tuple(_slice(a, i, chunk) for a in xs), jax.random.fold_in(key, i))
    ys = jax.tree_util.tree_map(lambda y: _grow(y, length, 1), call(0))
    ys = jax.lax.fori_loop(1, length // chunk, lambda i, bufs: _write(bufs, call(i), i, chunk), ys)
    return ys, (params, xs, key)


def _scan_chunks_bwd(fn, chunk, residuals, dys):
    params, xs, key = residuals
    length = xs[0].shape[1]

    def step(i):  # -> (parameter cotangents, input cotangents) of chunk i
        f = lambda p, *parts: fn(p, parts, jax.random.fold_in(key, i))
        ys_i, vjp = jax.vjp(f, params, *(_slice(a, i, chunk) for a in xs))
        dys_i = jax.tree_util.tree_map(
            lambda dy, y: _slice(dy, i, chunk).astype(y.dtype), dys, ys_i
        )
        dp_i, *dxs_i = vjp(dys_i)
        return dp_i, tuple(d.astype(a.dtype) for d, a in zip(dxs_i, xs, strict=True))

    dxs, dparams = _backward_loop(step, chunk, length)
    return dparams, dxs, None


scan_chunks.defvjp(_scan_chunks_fwd, _scan_chunks_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def sum_chunks(fn, chunk: int, params, xs: tuple, key: Array) -> Array:
    """sum_i fn(params, xs[:, i*c:(i+1)*c], fold_in(key, i)) for a fn returning an array.

    The chunked loss: both passes loop over the chunks, and the backward pass
    recomputes each chunk inside `jax.vjp`, writing the inputs' cotangents into
    [b, l, ...] buffers in place, so no chunk's logits outlive it and no
    stacked copy of the inputs is made.
    """
    return _sum_chunks_fwd(fn, chunk, params, xs, key)[0]


def _sum_chunks_fwd(fn, chunk, params, xs, key):
    n = xs[0].shape[1] // chunk
    call = lambda i: fn(params, tuple(_slice(a, i, chunk) for a in xs), jax.random.fold_in(key, i))
    total = jax.lax.fori_loop(1, n, lambda i, acc: acc + call(i), call(0))
    return total, (params, xs, key)


def _sum_chunks_bwd(fn, chunk, residuals, dtotal):
    params, xs, key = residuals
    length = xs[0].shape[1]
    # Cotangents flow to the floating inputs; integer ones (targets) get None.
    floating = [jnp.issubdtype(a.dtype, jnp.floating) for a in xs]
    diff = tuple(a for a, f in zip(xs, floating, strict=True) if f)

    def step(i):
        parts = [_slice(a, i, chunk) for a in xs]

        def f(p, *diff_parts):
            it = iter(diff_parts)
            merged = tuple(next(it) if fl else a for a, fl in zip(parts, floating, strict=True))
            return fn(p, merged, jax.random.fold_in(key, i))

        _, vjp = jax.vjp(f, params, *(a for a, fl in zip(parts, floating, strict=True) if fl))
        dp_i, *dxs_i = vjp(dtotal)
        return dp_i, tuple(d.astype(a.dtype) for d, a in zip(dxs_i, diff, strict=True))

    dxs, dparams = _backward_loop(step, chunk, length)
    it = iter(dxs)
    return dparams, tuple(next(it) if fl else None for fl in floating), None


sum_chunks.defvjp(_sum_chunks_fwd, _sum_chunks_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan_groups(fn, shared, params, x: Array, extras):
    """Runs fn over n groups (of attention heads): for i in range(n),

        out_i, buckets_i = fn(shared, params[i], x, extras[i])

    and returns (out [b, l, n, ...], the buckets_i stacked along a leading axis,
    or None). params and extras have a leading axis of size n; shared (params
    used by every group, plus non-differentiable arrays such as a mask) does
    not. extras must be a dict with a "buckets" entry (None, or buckets fn must
    use); its other entries (keys) are not differentiated.

    A custom VJP: the backward pass recomputes each group's forward inside
    `jax.vjp`, with the buckets the forward used, and sums the groups' input
    cotangents in one buffer. Only one group's internals are alive at a time,
    and XLA cannot carry float32 copies of the bfloat16 x across the loop
    (see `_slice`), which it does with `jax.checkpoint` in a `lax.scan`.
    """
    return _scan_groups_fwd(fn, shared, params, x, extras)[0]


def _n_groups(extras) -> int:
    return jax.tree_util.tree_leaves(extras)[0].shape[0]


def _first_and_rest(tree):
    return (
        jax.tree_util.tree_map(lambda a: a[0], tree),
        jax.tree_util.tree_map(lambda a: a[1:], tree),
    )


def _prepend(first, rest):
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


def _scan_groups_fwd(fn, shared, params, x, extras):
    n = _n_groups(extras)
    (p_0, e_0), rest = _first_and_rest((params, extras))
    out_0, buckets_0 = fn(shared, p_0, x, e_0)

    def body(out, args):
        i, p_i, e_i = args
        x_i, _ = jax.lax.optimization_barrier((x, i))
        out_i, buckets_i = fn(shared, p_i, x_i, e_i)
        return jax.lax.dynamic_update_index_in_dim(out, out_i, i, axis=2), buckets_i

    out = _grow(out_0[:, :, None], n, 2)
    out, buckets = jax.lax.scan(body, out, (jnp.arange(1, n), *rest))
    buckets = None if buckets_0 is None else _prepend(buckets_0, buckets)
    return (out, buckets), (shared, params, x, extras, buckets)


def _scan_groups_bwd(fn, residuals, cotangents):
    shared, params, x, extras, buckets = residuals
    dout = cotangents[0]
    if buckets is not None:  # replay the forward's buckets
        extras = {**extras, "buckets": buckets}
    diff_shared = {k: v for k, v in shared.items() if k != "mask"}

    def step(i, p_i, e_i):
        x_i, _ = jax.lax.optimization_barrier((x, i))

        def f(s, p, xx):
            return fn({**shared, **s}, p, xx, e_i)[0]

        _, vjp = jax.vjp(f, diff_shared, p_i, x_i)
        return vjp(jax.lax.dynamic_index_in_dim(dout, i, axis=2, keepdims=False))

    def body(carry, args):
        dx, dshared = carry
        ds_i, dp_i, dx_i = step(*args)
        dshared = jax.tree_util.tree_map(jnp.add, dshared, ds_i)
        return (dx + dx_i.astype(dx.dtype), dshared), dp_i

    (p_0, e_0), rest = _first_and_rest((params, extras))
    ds_0, dp_0, dx_0 = step(0, p_0, e_0)  # group 0 starts the sums: no zeros buffers
    carry = (dx_0.astype(x.dtype), ds_0)
    (dx, dshared), dparams = jax.lax.scan(body, carry, (jnp.arange(1, _n_groups(extras)), *rest))
    dshared = {**{k: None for k in shared}, **dshared}
    return dshared, _prepend(dp_0, dparams), dx, jax.tree_util.tree_map(lambda _: None, extras)


scan_groups.defvjp(_scan_groups_fwd, _scan_groups_bwd)


def check_axial(shape: Sequence[int], dims: Sequence[int], length: int, d_model: int) -> None:
    """Clear errors for axial shapes that cannot encode `length` positions in d_model."""
    if len(shape) != len(dims) or not shape:
        raise ValueError(
            f"axial_shape {tuple(shape)} and axial_dims {tuple(dims)} must be non-empty and "
            "of the same length (one embedding width per axis)."
        )
    if math.prod(shape) != length:
        raise ValueError(
            f"axial_shape {tuple(shape)} multiplies to {math.prod(shape)}, but the sequence "
            f"length is {length}: choose axes whose product is {length}, e.g. "
            f"({_near_sqrt_factor(length)}, {length // _near_sqrt_factor(length)})."
        )
    if sum(dims) != d_model:
        raise ValueError(
            f"axial_dims {tuple(dims)} sum to {sum(dims)}, but d_model is {d_model}: the "
            "per-axis embeddings are concatenated, so their widths must add up to d_model."
        )


def _near_sqrt_factor(n: int) -> int:
    for f in range(math.isqrt(n), 0, -1):
        if n % f == 0:
            return f
    return 1


class AxialPositionalEmbedding(nn.Module):
    """Axial positions (docs/algorithm.md §5): one N(0, 1) table per axis, concatenated.

    Position p of a shape (s_1, ..., s_k) has coordinates (p_1, ..., p_k) in
    row-major order and encoding concat(E_1[p_1], ..., E_k[p_k]). A call with a
    shorter length takes the first positions, so a model trained at length
    prod(shape) evaluates and decodes at any length up to it.
    """

    shape: tuple[int, ...]
    dims: tuple[int, ...]

    @nn.compact
    def __call__(self, length: int, anchor: Array | None = None) -> Array:
        """-> [length, sum(dims)] float32.

        `anchor`: any array the caller computes per step (e.g. the token
        embeddings). The tables pass through an optimization barrier with it,
        so the [length, d] encoding is built where it is used: without it, XLA
        hoists this step-invariant array out of a gradient-accumulation loop
        and keeps it alive for the whole step (256 MiB at enwik8's 64K x 1024).
        """
        total = math.prod(self.shape)
        if length > total:
            raise ValueError(
                f"sequence length {length} exceeds the axial positions' capacity {total} "
                f"(axial_shape {self.shape}); enlarge axial_shape."
            )
        # Position p's coordinate on axis i is (p // stride_i) % s_i. Gathering
        # each table at those coordinates builds only the `length` rows asked
        # for and lets XLA fuse the lookups into the consumer (the sum with the
        # token embeddings), instead of broadcasting every table to the full
        # grid of prod(shape) positions first.
        p = jnp.arange(length, dtype=jnp.int32)
        parts = []
        stride = total
        for i, (s, e) in enumerate(zip(self.shape, self.dims, strict=True)):
            table = self.param(f"axis_{i}", nn.initializers.normal(1.0), (s, e), jnp.float32)
            if anchor is not None:
                table, _ = jax.lax.optimization_barrier((table, anchor))
            stride //= s
            parts.append(jnp.take(table, (p // stride) % s, axis=0, mode="clip"))
        return jnp.concatenate(parts, axis=-1)


def sinusoidal_positions(length: int, d_model: int) -> Array:
    """The Transformer's fixed sin/cos encoding, [length, d_model] float32."""
    pos = jnp.arange(length, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    enc = jnp.zeros((length, d_model), jnp.float32)
    enc = enc.at[:, 0::2].set(jnp.sin(pos * freq))
    return enc.at[:, 1::2].set(jnp.cos(pos * freq[: d_model // 2]))
