"""ReformerLM (docs/algorithm.md §5) and its frozen config.

Shapes use the package's einsum legend (reformer_jax/__init__.py): here b
batch, l length, m d_model, v vocabulary, u loss chunks, c loss chunk length.

    tokens [b, l] -> shift right (unless cfg.shift_inputs=False) -> embed -> dropout -> + positions
      -> (x1, x2) = (e, e) -> reversible stack -> concat(y1, y2) [b, l, 2m]
      -> LayerNorm -> dropout -> Dense(vocab) -> log-softmax
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import layers, lsh, reversible

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
    """Everything that shapes a ReformerLM. Defaults: a small LSH language model.

    attention_kinds is the per-layer cycle ("lsh", "local", "full",
    "full_shared"); n_layers must be a multiple of its length. n_buckets=None
    uses the paper's 2L/c (docs/algorithm.md §1.2). axial_shape=None uses fixed sinusoidal
    positions; pos_encoding="none" uses none.

    Fields that imported checkpoints need (reformer_jax.convert), each
    defaulting to the behaviour trained models here already have:
    layer_norm_eps (HF transformers uses 1e-12); hash_seed (fixed LSH
    rotations: layer i hashes with fold_in(key(hash_seed), i) on every call,
    instead of rotations drawn from the call's key); shift_inputs (False: the
    model reads tokens as given, so position t predicts token t + 1, as HF's
    ReformerModelWithLMHead does); local_n_chunks_before/after (the local
    layers' window when it differs from the LSH layers'; None = the same).
    """

    vocab_size: int = 256
    max_len: int = 1024
    d_model: int = 256
    d_ff: int = 512
    n_heads: int = 4
    d_head: int = 64
    n_layers: int = 2
    attention_kinds: tuple[str, ...] = ("lsh",)
    chunk_len: int = 64
    local_chunk_len: int = 128
    n_hashes: int = 2
    n_buckets: int | tuple[int, ...] | None = None
    n_chunks_before: int = 1
    n_chunks_after: int = 0
    dedup: bool = False
    axial_shape: tuple[int, ...] | None = None
    axial_dims: tuple[int, ...] | None = None
    pos_encoding: str = "auto"  # "auto" (axial if axial_shape else sinusoidal), "none"
    dropout: float = 0.0
    attention_dropout: float | None = None  # None: same as dropout
    ff_activation: str = "relu"
    ff_chunk_size: int | None = None
    attention_head_chunk: int | None = None  # heads per step; None = all at once
    loss_chunk_size: int | None = None
    reversible: bool = True
    remat: bool = False
    causal: bool = True
    dtype: str = "float32"
    layer_norm_eps: float = 1e-6
    hash_seed: int | None = None
    shift_inputs: bool = True
    local_n_chunks_before: int | None = None
    local_n_chunks_after: int | None = None

    def __post_init__(self):
        # Sequences given as lists (gin, JSON) become tuples so the config hashes.
        for name in ("attention_kinds", "n_buckets", "axial_shape", "axial_dims"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.attention_dropout is None:
            object.__setattr__(self, "attention_dropout", self.dropout)
        self.validate()

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "max_len",
            "d_model",
            "d_ff",
            "n_heads",
            "d_head",
            "n_layers",
            "chunk_len",
            "local_chunk_len",
            "n_hashes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ReformerConfig.{name} must be a positive int, got {value!r}.")
        kinds = self.attention_kinds
        if not kinds or any(k not in layers.ATTENTION_KINDS for k in kinds):
            raise ValueError(
                f"ReformerConfig.attention_kinds={kinds!r}: each kind must be one of "
                f"{layers.ATTENTION_KINDS}."
            )
        if self.n_layers % len(kinds):
            raise ValueError(
                f"n_layers={self.n_layers} is not a multiple of the attention cycle "
                f"{kinds} (length {len(kinds)}): layers are stacked per cycle position, so "
                f"use n_layers = {len(kinds)} * k."
            )
        if self.n_buckets is not None:
            lsh.bucket_factors(self.n_buckets)
        if self.ff_activation not in layers.ACTIVATIONS:
            raise ValueError(
                f"ff_activation={self.ff_activation!r}; use one of {sorted(layers.ACTIVATIONS)}."
            )
        if self.attention_head_chunk is not None and (
            not isinstance(self.attention_head_chunk, int)
            or self.attention_head_chunk <= 0
            or self.n_heads % self.attention_head_chunk
        ):
            raise ValueError(
                f"attention_head_chunk={self.attention_head_chunk!r} must be a positive divisor "
                f"of n_heads={self.n_heads} (or None for all heads at once)."
            )
        for name in ("ff_chunk_size", "loss_chunk_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.pos_encoding not in ("auto", "none"):
            raise ValueError(f"pos_encoding={self.pos_encoding!r}; use 'auto' or 'none'.")
        if (self.axial_shape is None) != (self.axial_dims is None):
            raise ValueError("set both axial_shape and axial_dims, or neither.")
        if self.axial_shape is not None:
            layers.check_axial(self.axial_shape, self.axial_dims, self.max_len, self.d_model)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}; use 'float32' or 'bfloat16'.")
        if not isinstance(self.layer_norm_eps, (int, float)) or not self.layer_norm_eps > 0:
            raise ValueError(
                f"layer_norm_eps must be a positive float, got {self.layer_norm_eps!r}."
            )
        if self.hash_seed is not None and (
            isinstance(self.hash_seed, bool) or not isinstance(self.hash_seed, int)
        ):
            raise ValueError(
                f"hash_seed must be an int (fixed LSH rotations) or None, got {self.hash_seed!r}."
            )
        for name in ("n_chunks_before", "n_chunks_after") + tuple(
            f"local_{n}" for n in ("n_chunks_before", "n_chunks_after")
        ):
            value = getattr(self, name)
            if value is None and name.startswith("local_"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}.")

    @property
    def n_groups(self) -> int:
        return self.n_layers // len(self.attention_kinds)

    def lsh_buckets(self, length: int) -> int | tuple[int, ...]:
        """Buckets per round: as configured, or the paper's default for `length`."""
        if self.n_buckets is not None:
            return self.n_buckets
        return lsh.default_n_buckets(lsh.round_up(length, self.chunk_len), self.chunk_len)

    @property
    def local_window(self) -> tuple[int, int]:
        """(chunks before, chunks after) of the local layers' window."""
        before, after = self.local_n_chunks_before, self.local_n_chunks_after
        return (
            self.n_chunks_before if before is None else before,
            self.n_chunks_after if after is None else after,
        )

    def lsh_layers(self) -> list[int]:
        """Indices of the layers that use LSH attention (the keys of `buckets`)."""
        kinds = self.attention_kinds
        return [i for i in range(self.n_layers) if kinds[i % len(kinds)] == "lsh"]

    def replace(self, **changes) -> ReformerConfig:
        return dataclasses.replace(self, **changes)


def block_names(cfg: ReformerConfig) -> list[str]:
    """Names of the stacked parameter blocks, in cycle order: "0_local", "1_shared_qk", ...

    A name says which parameters the block holds, not how it attends: "lsh"
    and "full_shared" layers have the same shared-QK parameters (no W_k) and
    are both named "shared_qk", so a model trained with LSH attention
    evaluates with full attention on the same checkpoint (paper Table 2).
    """
    family = {"lsh": "shared_qk", "full_shared": "shared_qk", "local": "local", "full": "full"}
    return [f"{j}_{family[kind]}" for j, kind in enumerate(cfg.attention_kinds)]


def shift_right(tokens: Array) -> Array:
    """[b, l] -> [b, l]: prepend 0 and drop the last token (teacher forcing)."""
    return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


class ReformerLM(nn.Module):
    """Decoder-only Reformer language model (docs/algorithm.md §5).

    Call with `key` (a PRNG key, required when training) for hashing and
    dropout: layer i of a call uses fold_in(key, i). Without a key, hashing
    uses a fixed key (evaluation is then deterministic). `n_hashes` overrides
    the config's hash rounds for this call (the paper's Table 2).
    """

    cfg: ReformerConfig

    def _halves(self):
        # parent=None: detached modules whose `apply` is a pure function of params.
        cfg = self.cfg
        return (
            [layers.AttentionHalf(cfg, kind, parent=None) for kind in cfg.attention_kinds],
            [layers.FeedForwardHalf(cfg, parent=None) for _ in cfg.attention_kinds],
        )

    def _init_blocks(self, rng: Array) -> dict:
        """Stacked parameters, one entry per cycle position (see `block_names`).

        blocks["<j>_<kind>"] = {"attention": ..., "feed_forward": ...}, every
        leaf with a leading axis of size n_groups: layer g * len(cycle) + j of
        the model is index g of entry j.
        """
        cfg = self.cfg
        attn, ff = self._halves()
        x = jnp.zeros((1, 2 * max(cfg.chunk_len, cfg.local_chunk_len), cfg.d_model), jnp.float32)
        blocks = {}
        names = block_names(cfg)
        for j, rj in enumerate(jax.random.split(rng, len(attn))):

            def init_one(r, j=j):
                ra, rf = jax.random.split(r)
                pa = attn[j].init(ra, x, jax.random.key(0))["params"]
                pf = ff[j].init(rf, x, jax.random.key(0))["params"]
                return {"attention": pa, "feed_forward": pf}

            blocks[names[j]] = jax.vmap(init_one)(jax.random.split(rj, cfg.n_groups))
        return blocks

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        *,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
        mask: Array | None = None,
        weights: Array | None = None,
        output: str = "log_probs",
        buckets: dict[int, Array] | None = None,
        return_buckets: bool = False,
    ):
        """Runs the model on tokens [b, l] (int).

        output="log_probs": float32 [b, l, v]; "hidden": [b, l, 2m] before the
        head; "loss": float32 sums {"nll", "correct", "weight"} of the
        next-token loss weighted by `weights` [b, l] (default all ones),
        computed in cfg.loss_chunk_size chunks so [b, l, v] logits are never
        alive at once. `mask` (bool [b, l], True = real token) hides padding
        keys from attention.

        With cfg.shift_inputs (the default) position t predicts token t from
        tokens < t; with shift_inputs=False position t predicts token t + 1,
        and the loss scores tokens 1..l-1 (weights[:, 1:]).

        buckets: {layer index: int [b, heads, n_hashes, l]} for every LSH layer
        (`cfg.lsh_layers()`), used instead of hashing; values in
        [0, buckets per round). return_buckets=True returns (output, buckets
        used, in the same form).
        """
        cfg = self.cfg
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}.")
        length = tokens.shape[1]
        if length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds cfg.max_len={cfg.max_len}.")
        if key is None:
            if not deterministic and (cfg.dropout or cfg.attention_dropout):
                raise ValueError("training with dropout needs `key`.")
            key = jax.random.key(0)
        dtype = jnp.dtype(cfg.dtype)
        embed_key, stack_key, head_key = jax.random.split(key, 3)
        # A fixed hash seed: layer i hashes with fold_in(key(hash_seed), i) on every call.
        hash_base = None if cfg.hash_seed is None else jax.random.key(cfg.hash_seed)
        stacked_buckets = self._stack_buckets(buckets, tokens.shape[0], length, n_hashes)

        inputs = shift_right(tokens) if cfg.shift_inputs else tokens
        x = nn.Embed(
            cfg.vocab_size, cfg.d_model, name="embed", embedding_init=nn.initializers.normal(1.0)
        )(inputs)
        x = layers.dropout(x, cfg.dropout, embed_key, deterministic)
        x = (x + self._positions(length, anchor=x)[None]).astype(dtype)

        blocks = self.param("blocks", self._init_blocks)
        attn, ff = self._halves()

        def make_f(module):
            def f(p, x, k, buckets):
                layer_key, hash_key = k
                return module.apply(
                    {"params": p},
                    x,
                    layer_key,
                    n_hashes=n_hashes,
                    buckets=buckets,
                    hash_key=hash_key,
                    deterministic=deterministic,
                    mask=mask,
                )

            return f

        def make_g(module):
            return lambda p, x, k: module.apply({"params": p}, x, k[0], deterministic=deterministic)

        y1, y2, used = reversible.reversible_stack(
            [make_f(m) for m in attn],
            [make_g(m) for m in ff],
            [(blocks[n]["attention"], blocks[n]["feed_forward"]) for n in block_names(cfg)],
            x,
            x,
            (stack_key, hash_base),
            reversible=cfg.reversible,
            remat=cfg.remat,
            buckets=stacked_buckets,
            return_buckets=True,
        )
        head = OutputHead(cfg, name="head")
        if output == "hidden":
            result = jnp.concatenate([y1, y2], axis=-1)  # [b, l, 2m]
        elif output == "log_probs":
            result = head(jnp.concatenate([y1, y2], axis=-1), head_key, deterministic=deterministic)
        elif output == "loss":
            if weights is None:
                weights = jnp.ones(tokens.shape, jnp.float32)
            streams, targets = (y1, y2), tokens
            if not cfg.shift_inputs:  # position t predicts token t + 1
                streams = (y1[:, :-1], y2[:, :-1])
                targets, weights = tokens[:, 1:], weights[:, 1:]
            result = head.loss(streams, targets, weights, head_key, deterministic=deterministic)
        else:
            raise ValueError(f"output={output!r}; use 'log_probs', 'hidden' or 'loss'.")
        if return_buckets:
            return result, self._unstack_buckets(used)
        return result

    def _stack_buckets(self, buckets, batch, length, n_hashes):
        """{layer: [b, h, r, l]} -> per cycle position, None or [n_groups, b, h, r, l]."""
        cfg = self.cfg
        if buckets is None:
            return None
        wanted = cfg.lsh_layers()
        given = sorted(buckets)
        if given != wanted:
            raise ValueError(
                f"buckets given for layers {given}, but the LSH layers are {wanted}: give "
                "buckets for every LSH layer (or none)."
            )
        r = cfg.n_hashes if n_hashes is None else n_hashes
        shape = (batch, cfg.n_heads, r, length)
        cycle = len(cfg.attention_kinds)
        stacked = []
        for j, kind in enumerate(cfg.attention_kinds):
            if kind != "lsh":
                stacked.append(None)
                continue
            per_group = []
            for g in range(cfg.n_groups):
                b = jnp.asarray(buckets[g * cycle + j])
                if b.shape != shape:
                    raise ValueError(
                        f"buckets[{g * cycle + j}] has shape {b.shape}; expected [batch, heads, "
                        f"n_hashes, length] = {shape}."
                    )
                per_group.append(b.astype(jnp.int32))
            stacked.append(jnp.stack(per_group))
        return stacked

    def _unstack_buckets(self, used) -> dict[int, Array]:
        cycle = len(self.cfg.attention_kinds)
        return {
            g * cycle + j: used[j][g]
            for j in range(cycle)
            if used[j] is not None
            for g in range(self.cfg.n_groups)
        }

    def _positions(self, length: int, anchor: Array | None = None) -> Array:
        cfg = self.cfg
        if cfg.pos_encoding == "none":
            return jnp.zeros((length, cfg.d_model), jnp.float32)
        if cfg.axial_shape is not None:
            return layers.AxialPositionalEmbedding(
                cfg.axial_shape, cfg.axial_dims, name="axial_pos"
            )(length, anchor)
        return layers.sinusoidal_positions(length, cfg.d_model)


class OutputHead(nn.Module):
    """LayerNorm(2d) -> dropout -> Dense(vocab) -> log-softmax, optionally in chunks."""

    cfg: ReformerConfig

    def setup(self):
        width, vocab = 2 * self.cfg.d_model, self.cfg.vocab_size
        self.norm = layers.LayerNormParams(width, name="norm")
        self.kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (width, vocab), jnp.float32
        )
        self.bias = self.param("bias", nn.initializers.zeros, (vocab,), jnp.float32)

    def __call__(self, h: Array, key: Array, *, deterministic: bool = True) -> Array:
        """h [b, l, 2m] -> float32 log-probs [b, l, v]."""
        return self._log_probs(self._params(), h, key, deterministic)

    def _params(self):
        return {
            "norm": self.norm(),
            "kernel": self.kernel,
            "bias": self.bias,
        }

    def _log_probs(self, p, h, key, deterministic):
        # Pure in p: safe inside lax.map / checkpoint.
        h = layers.layer_norm(h, p["norm"]["scale"], p["norm"]["bias"], self.cfg.layer_norm_eps)
        h = layers.dropout(h, self.cfg.dropout, key, deterministic)
        logits = (
            jnp.einsum(
                "blm,mv->blv", h, p["kernel"].astype(h.dtype), preferred_element_type=jnp.float32
            )
            + p["bias"]
        )
        return jax.nn.log_softmax(logits, axis=-1)

    def loss(
        self,
        streams: Sequence[Array],
        targets: Array,
        weights: Array,
        key: Array,
        *,
        deterministic: bool = True,
    ) -> dict[str, Array]:
        """Sums of weighted NLL (nats), correct predictions and weights.

        streams: the stack's outputs, each [b, l, m]; the head reads their
        concatenation [b, l, 2m] one chunk of cfg.loss_chunk_size positions at a
        time (`layers.sum_chunks`), so neither the [b, l, v] logits nor the
        [b, l, 2m] input is ever alive whole.
        """
        params = self._params()

        def chunk_stats(p, args, k):
            *parts, t_c, w_c = args
            h_c = jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
            logp = self._log_probs(p, h_c, k, deterministic)
            nll = -jnp.take_along_axis(logp, t_c[..., None], axis=-1)[..., 0]
            correct = (jnp.argmax(logp, axis=-1) == t_c).astype(jnp.float32)
            return jnp.stack([jnp.sum(nll * w_c), jnp.sum(correct * w_c), jnp.sum(w_c)])

        weights = weights.astype(jnp.float32)
        length = targets.shape[1]
        args = (*streams, targets, weights)
        c = self.cfg.loss_chunk_size
        if not c or c >= length:
            sums = chunk_stats(params, args, key)
        else:
            padded = lsh.round_up(length, c)
            args = tuple(lsh.pad_length(a, padded, axis=1) for a in args)
            sums = layers.sum_chunks(chunk_stats, c, params, args, key)
        return {"nll": sums[0], "correct": sums[1], "weight": sums[2]}


def bits_per_token(nll_sum: Array | float, weight_sum: Array | float) -> Array | float:
    """Mean NLL in nats -> bits (bits per character / per dim for bytes / pixels)."""
    return nll_sum / weight_sum / math.log(2.0)


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))
