"""The Reformer network: `ReformerStack` (hidden states) and `ReformerLM` (stack + LM head).

Shapes use the package's einsum legend (reformer_jax/__init__.py): here b
batch, l length, m d_model, v vocabulary, t context (memory) length.

    ReformerStack(cfg)(tokens [b, l], *, mask, causal, context, context_mask, key, ...)
        tokens -> embed -> dropout -> + positions -> (x1, x2) = (e, e)
        -> reversible blocks (attention of each layer's kind; with
           cfg.cross_attention a cross-attention half to `context`; feed-forward)
        -> concat(y1, y2): hidden states [b, l, 2m]
    ReformerLM(cfg)(tokens [b, l], ...) -> log-probs [b, l, v] | hidden | loss sums
        the stack under an LMHead (reformer_jax/heads.py), which owns the input
        shift and the chunked next-token loss

A ReformerLM's parameters are the stack's (`embed`, `axial_pos`, `blocks`)
and its head's (`head`), at the top level, as checkpoints have always held them.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax import attention, kinds, layers, reversible
from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.heads import LMHead, shift_right
from reformer_jax.positions import AxialPositionalEmbedding, sinusoidal_positions

__all__ = [
    "LMHead",
    "ReformerConfig",
    "ReformerLM",
    "ReformerStack",
    "RunSettings",
    "bits_per_token",
    "block_names",
    "count_params",
    "shift_right",
    "token_embedding",
]

Array = jax.Array


def block_names(cfg: ReformerConfig) -> list[str]:
    """Names of the stacked parameter blocks, in cycle order: "0_local", "1_shared_qk", ...

    A name says which parameters the block holds (its kind's family), not how
    it attends: "lsh" and "full_shared" layers have the same shared-QK
    parameters (no W_k) and are both named "shared_qk", so a model trained
    with LSH attention evaluates with full attention on the same checkpoint
    (paper Table 2).
    """
    return [f"{j}_{kinds.get(kind).family}" for j, kind in enumerate(cfg.attention_kinds)]


def split_key(key: Array) -> tuple[Array, Array, Array]:
    """A call's key -> (embedding dropout, the blocks' step key, the head's key)."""
    embed_key, blocks_key, head_key = jax.random.split(key, 3)
    return embed_key, blocks_key, head_key


def token_embedding(cfg: ReformerConfig, name: str = "embed") -> nn.Embed:
    """The token embedding [v, m], N(0, 1) as trax's (the positions add to it)."""
    return nn.Embed(
        cfg.vocab_size, cfg.d_model, name=name, embedding_init=nn.initializers.normal(1.0)
    )


class ReformerStack(nn.Module):
    """Embedding, positions and the reversible blocks: tokens -> hidden states.

    Call with `key` (a PRNG key, required when training) for hashing and
    dropout: layer i of a call uses fold_in(key's blocks part, i). Without a
    key, hashing uses a fixed key (evaluation is then deterministic).
    `n_hashes` overrides the config's hash rounds for this call (the paper's
    Table 2). `run` says how the step runs (chunk sizes, remat), which does
    not change what it computes.
    """

    cfg: ReformerConfig
    run: RunSettings = RunSettings()
    # A token embedding owned elsewhere (an encoder-decoder's shared embedding,
    # reformer_jax/encdec.py); None: the stack owns its own, named `embed`.
    shared_embedding: nn.Module | None = None

    def halves(self):
        """Per cycle position, the detached (attention, cross-attention | None, feed-forward)
        modules whose `apply` is a pure function of that layer's parameters."""
        cfg, run = self.cfg, self.run
        return [
            (
                layers.AttentionHalf(cfg, kind, run, parent=None),
                layers.CrossAttentionHalf(cfg, run, parent=None) if cfg.cross_attention else None,
                layers.FeedForwardHalf(cfg, run, parent=None),
            )
            for kind in cfg.attention_kinds
        ]

    def _init_blocks(self, rng: Array) -> dict:
        """Stacked parameters, one entry per cycle position (see `block_names`).

        blocks["<j>_<family>"] = {"attention": ..., ["cross_attention": ...,]
        "feed_forward": ...}, every leaf with a leading axis of size n_groups:
        layer g * len(cycle) + j of the model is index g of entry j.
        """
        cfg = self.cfg
        x = jnp.zeros((1, 2 * max(cfg.chunk_len, cfg.local_chunk_len), cfg.d_model), jnp.float32)
        context = {"memory": x, "bias": jnp.zeros(x.shape[:2], jnp.float32)}
        blocks = {}
        names = block_names(cfg)
        rngs = jax.random.split(rng, len(names))
        for j, (attn, cross, ff) in enumerate(self.halves()):

            def init_one(r, attn=attn, cross=cross, ff=ff):
                if cross is None:
                    ra, rf = jax.random.split(r)
                else:
                    ra, rf, rc = jax.random.split(r, 3)
                block = {"attention": attn.init(ra, x, jax.random.key(0))["params"]}
                if cross is not None:
                    block["cross_attention"] = cross.init(rc, x, context, jax.random.key(0))[
                        "params"
                    ]
                block["feed_forward"] = ff.init(rf, x, jax.random.key(0))["params"]
                return block

            blocks[names[j]] = jax.vmap(init_one)(jax.random.split(rngs[j], cfg.n_groups))
        return blocks

    def setup(self):
        cfg = self.cfg
        if self.shared_embedding is None:
            self.embedding = token_embedding(cfg)
        if cfg.pos_encoding == "axial":
            self.axial = AxialPositionalEmbedding(cfg.axial_shape, cfg.axial_dims, name="axial_pos")
        self.blocks = self.param("blocks", self._init_blocks)

    def positions(self, positions: Array, anchor: Array | None = None) -> Array:
        """The positional encoding of int positions [..., n] -> [..., n, m] float32."""
        cfg = self.cfg
        if cfg.pos_encoding == "axial":
            return self.axial(positions, anchor)
        if cfg.pos_encoding == "sinusoidal":
            return sinusoidal_positions(positions, cfg.d_model)
        return jnp.zeros((*jnp.shape(positions), cfg.d_model), jnp.float32)

    def embed(
        self,
        tokens: Array,
        positions: Array | None = None,
        *,
        key: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """tokens [b, n] at int positions [b, n] (default 0..n-1) -> [b, n, m] in cfg.dtype."""
        cfg = self.cfg
        embedding = self.embedding if self.shared_embedding is None else self.shared_embedding
        x = embedding(tokens)
        x = layers.dropout(x, cfg.dropout, key, deterministic)
        if positions is None:
            pos = self.positions(jnp.arange(tokens.shape[1], dtype=jnp.int32), anchor=x)[None]
        else:
            pos = self.positions(positions)
        return (x + pos).astype(jnp.dtype(cfg.dtype))

    def __call__(
        self,
        tokens: Array,
        *,
        mask: Array | None = None,
        causal: bool | None = None,
        context: Array | None = None,
        context_mask: Array | None = None,
        key: Array | None = None,
        deterministic: bool = True,
        n_hashes: int | None = None,
        buckets: dict[int, Array] | None = None,
        return_buckets: bool = False,
        streams: bool = False,
    ):
        """Runs the stack on tokens [b, l] (int) -> hidden states [b, l, 2m].

        mask: bool [b, l], True = real token; padding is never a key.
        causal: overrides cfg.causal for this call.
        context, context_mask: the memory [b, t, m] the cross-attention halves
          read (cfg.cross_attention) and its bool [b, t] mask; the gradient
          with respect to `context` flows through every block.
        streams=True returns the two streams (y1, y2), each [b, l, m], instead
        of their concatenation (for heads that read them chunk by chunk).
        buckets: {layer index: int [b, heads, n_hashes, l]} for every LSH layer
        (`cfg.lsh_layers()`), used instead of hashing; return_buckets=True
        returns (output, buckets used, in the same form).
        """
        cfg = self.cfg
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}.")
        length = tokens.shape[1]
        if length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds cfg.max_len={cfg.max_len}.")
        if mask is not None and mask.shape != tokens.shape:
            raise ValueError(f"mask has shape {mask.shape}; it must match tokens {tokens.shape}.")
        if key is None:
            if not deterministic and (cfg.dropout or cfg.attention_dropout):
                raise ValueError("training with dropout needs `key`.")
            key = jax.random.key(0)
        embed_key, blocks_key, _ = split_key(key)
        # A fixed hash seed: layer i hashes with fold_in(key(hash_seed), i) on every call.
        hash_base = None if cfg.hash_seed is None else jax.random.key(cfg.hash_seed)
        stacked_buckets = self._stack_buckets(buckets, tokens.shape[0], length, n_hashes)
        x = self.embed(tokens, key=embed_key, deterministic=deterministic)

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
                    causal=causal,
                )

            return f

        def make_g(module):
            return lambda p, x, k: module.apply({"params": p}, x, k[0], deterministic=deterministic)

        def make_c(module):
            return lambda p, x, ctx, k: module.apply(
                {"params": p}, x, ctx, k[0], deterministic=deterministic
            )

        halves = self.halves()
        names = block_names(cfg)
        parts = ("attention", "cross_attention", "feed_forward")
        params = [
            tuple(self.blocks[n][part] for part in parts if part in self.blocks[n]) for n in names
        ]
        cs, ctx = None, None
        if cfg.cross_attention:
            ctx = self._context(context, context_mask, tokens.shape[0])
            cs = [make_c(c) for _, c, _ in halves]
        elif context is not None:
            raise ValueError(
                "a context was given, but the stack has no cross-attention halves: set "
                "ReformerConfig.cross_attention=True."
            )
        y1, y2, used = reversible.reversible_stack(
            [make_f(a) for a, _, _ in halves],
            [make_g(g) for _, _, g in halves],
            params,
            x,
            x,
            (blocks_key, hash_base),
            reversible=cfg.reversible,
            remat=self.run.resolved(length).remat,
            buckets=stacked_buckets,
            return_buckets=True,
            cs=cs,
            context=ctx,
        )
        result = (y1, y2) if streams else jnp.concatenate([y1, y2], axis=-1)
        if return_buckets:
            return result, self._unstack_buckets(used)
        return result

    def _context(self, context, context_mask, batch):
        cfg = self.cfg
        if context is None:
            raise ValueError(
                "this stack has cross-attention halves (cfg.cross_attention): give `context`, "
                "the memory [batch, memory length, d_model] they attend to."
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.d_model:
            raise ValueError(
                f"context has shape {context.shape}; it must be [batch={batch}, memory length, "
                f"d_model={cfg.d_model}]."
            )
        if context_mask is None:
            context_mask = jnp.ones(context.shape[:2], bool)
        bias = jnp.where(context_mask, 0.0, -attention.MASK_PENALTY).astype(jnp.float32)
        return {"memory": context, "bias": bias}

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
            if not kinds.get(kind).hashes:
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


class ReformerLM(nn.Module):
    """Decoder-only Reformer language model: `ReformerStack` under an `LMHead`.

    The stack's parameters sit at the top level (shared scope) and the head's
    under `head`, so checkpoints written before the stack and the head were
    separate modules load unchanged. `run`: how a step runs (RunSettings).
    """

    cfg: ReformerConfig
    run: RunSettings = RunSettings()

    def setup(self):
        self.stack = ReformerStack(self.cfg, self.run)
        nn.share_scope(self, self.stack)
        self.head = LMHead(self.cfg)

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
        computed in run.loss_chunk_size chunks so [b, l, v] logits are never
        alive at once. `mask` (bool [b, l], True = real token) hides padding
        keys from attention. See `LMHead` for the shift and
        `ReformerStack.__call__` for `buckets`.
        """
        if output not in ("log_probs", "hidden", "loss"):
            raise ValueError(f"output={output!r}; use 'log_probs', 'hidden' or 'loss'.")
        # The stack checks the key and, without one, uses the fixed key(0): so does the head.
        head_key = split_key(jax.random.key(0) if key is None else key)[2]
        (y1, y2), used = self.stack(
            self.head.inputs(tokens),
            mask=mask,
            key=key,
            deterministic=deterministic,
            n_hashes=n_hashes,
            buckets=buckets,
            return_buckets=True,
            streams=True,
        )
        if output == "hidden":
            result = jnp.concatenate([y1, y2], axis=-1)
        elif output == "log_probs":
            hidden = jnp.concatenate([y1, y2], axis=-1)
            result = self.head(hidden, head_key, deterministic=deterministic)
        else:
            result = self.head.loss(
                (y1, y2),
                tokens,
                weights,
                head_key,
                loss_chunk_size=self.run.resolved(tokens.shape[1]).loss_chunk_size,
                deterministic=deterministic,
            )
        return (result, used) if return_buckets else result

    def embed(self, tokens: Array, positions: Array) -> Array:
        """The stack's embedding of network inputs at int positions (decoding)."""
        return self.stack.embed(tokens, positions)

    def log_probs(self, hidden: Array) -> Array:
        """The head on hidden states [..., 2m] -> log-probs [..., v], no dropout (decoding)."""
        return self.head(hidden)


def bits_per_token(nll_sum: Array | float, weight_sum: Array | float) -> Array | float:
    """Mean NLL in nats -> bits (bits per character / per dim for bytes / pixels)."""
    return nll_sum / weight_sum / math.log(2.0)


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))
