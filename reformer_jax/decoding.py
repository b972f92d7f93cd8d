"""Cached decoding of a ReformerLM, built on the model's own modules and the kind registry.

Public functions (pure, jit-compiled; einsum legend: b samples, h heads,
d / e per-head key / value dim, m d_model, v vocabulary, l cache length =
cfg.max_len, p prompt length):

    init_cache(cfg, batch, *, n_hashes=None, key=None) -> Cache
    cache_bytes(cfg, batch=1, *, n_hashes=None) -> int (from shapes, nothing allocated)
    prefill(params, cfg, prompt [b, p], key, *, n_hashes=None)
        -> (log_probs float32 [b, v] of the first new token, Cache)
    decode_step(params, cfg, cache, token [b]) -> (log_probs [b, v], Cache)
    recompute_log_probs(params, cfg, tokens [b, n], key) -> log_probs [b, v]
    reorder_cache(cache, rows [b']) -> Cache of rows b' picked from the old ones (beam search)

The LM head decides what the network reads: with cfg.shift_inputs (the
default) the prompt p_0..p_{P-1} is run as the inputs 0, p_0, ..., p_{P-1} at
positions 0..P, and the output at position P gives the first new token, which
is fed back at position P + 1. A model with cfg.shift_inputs=False (HF
checkpoints, reformer_jax.convert) reads the prompt as given at positions
0..P-1. P + new tokens must not exceed cfg.max_len.

Caches (`Cache.layers[name]` mirrors `params["blocks"][name]`: one entry per
cycle position, every array stacked over the n_groups layers of that
position, preallocated and updated in place). Each attention kind
(reformer_jax/kinds.py) owns its entry's layout: local attention a ring of its
window's keys and values, full attention all past keys and values, LSH also
the past buckets and the rotations drawn once per sample and layer from the
sampling key.

Decoding needs no reversibility: each layer runs its two halves forward on
the new position, y1 = x1 + F(x2) with the cache, y2 = x2 + G(y1), with the
training parameters and modules (the attention half's projections and output,
the feed-forward half, the stack's embedding, the LM head) and no dropout.
Prefill runs the prompt through the same layers in one pass and fills the
caches. For local and full attention cached decoding is exactly the training
forward on the whole prefix (it is causal); LSH's decode-time rule is in
docs/algorithm.md ("LSH at decode time").
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp

from reformer_jax import kinds
from reformer_jax.config import ReformerConfig
from reformer_jax.model import ReformerLM, ReformerStack, block_names

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class Cache:
    """Decoding state: `layers[name][field]` stacked over groups; `length` = positions filled."""

    layers: dict
    length: Array  # int32 scalar: the position the next fed token takes


def check_decodable(cfg: ReformerConfig) -> None:
    if not cfg.causal:
        raise ValueError("sampling needs a causal model (ReformerConfig.causal = True).")
    if cfg.cross_attention:
        raise ValueError(
            "decoding a stack with cross-attention needs its encoder's memory; this decoder "
            "runs decoder-only language models."
        )


def init_cache(
    cfg: ReformerConfig, batch: int, *, n_hashes: int | None = None, key: Array | None = None
) -> Cache:
    """Caches for `batch` samples, zeros except the LSH rotations drawn from `key` (if given)."""
    n_hashes = cfg.n_hashes if n_hashes is None else n_hashes
    cycle = len(cfg.attention_kinds)
    entries = {}
    for j, (name, kind) in enumerate(zip(block_names(cfg), cfg.attention_kinds, strict=True)):
        layers = [g * cycle + j for g in range(cfg.n_groups)]  # model-wide layer indices
        entries[name] = kinds.get(kind).init_cache(
            cfg, batch, n_hashes=n_hashes, layers=layers, key=key
        )
    return Cache(layers=entries, length=jnp.int32(0))


def cache_bytes(cfg: ReformerConfig, batch: int = 1, *, n_hashes: int | None = None) -> int:
    """Bytes of the decoding cache of `batch` samples (computed from shapes, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, batch, n_hashes=n_hashes))
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))


def _run_layers(params, cfg, cache_layers, x, attend):
    """The blocks run forward: x [b, n, m] -> (concat(y1, y2) [b, n, 2m], new caches).

    attend(kind, q, k, v, cache entry, group) -> (attention output [b, h, n, e],
    new entry), between the attention half's own `project` and `output`.
    Groups are unrolled (a decode step is small), so every cache array is
    updated in place at a static group index.
    """
    halves = ReformerStack(cfg, parent=None).halves()
    x1 = x2 = x
    new = {name: dict(entry) for name, entry in cache_layers.items()}
    for g in range(cfg.n_groups):
        for name, kind, (attn, _, ff) in zip(
            block_names(cfg), cfg.attention_kinds, halves, strict=True
        ):
            p = jax.tree_util.tree_map(lambda a, g=g: a[g], params["blocks"][name])
            bound = attn.bind({"params": p["attention"]})
            q, k, v = bound.project(x2)
            out, new[name] = attend(kinds.get(kind), q, k, v, new[name], g)
            x1 = x1 + bound.output(out)
            x2 = x2 + ff.apply({"params": p["feed_forward"]}, x1, jax.random.key(0))
    return jnp.concatenate([x1, x2], axis=-1), new


def _model_call(params, cfg, method, *args):
    return ReformerLM(cfg).apply({"params": params}, *args, method=method)


@functools.partial(jax.jit, static_argnames=("cfg", "n_hashes"))
def prefill(
    params: PyTree, cfg: ReformerConfig, prompt: Array, key: Array, *, n_hashes: int | None = None
) -> tuple[Array, Cache]:
    """Runs prompt [b, p] (ids) in one chunked pass; returns (log-probs [b, v] of token p, cache).

    `key` draws each sample's LSH rotations (sample s, layer i:
    fold_in(fold_in(key, s), i)); they stay in the cache for every later step.
    No input checks here (see `sampling.generate`): prompt length + 1 <=
    cfg.max_len (prompt length <= cfg.max_len without cfg.shift_inputs).
    """
    check_decodable(cfg)
    n_hashes = cfg.n_hashes if n_hashes is None else n_hashes
    cache = init_cache(cfg, prompt.shape[0], n_hashes=n_hashes, key=key)
    if cfg.shift_inputs:
        inputs = jnp.pad(prompt, ((0, 0), (1, 0)))  # shift right: 0, p_0, ..., p_{P-1}
    else:
        inputs = prompt
    n_inputs = inputs.shape[1]
    positions = jnp.broadcast_to(jnp.arange(n_inputs, dtype=jnp.int32), inputs.shape)
    x = _model_call(params, cfg, ReformerLM.embed, inputs, positions)

    def attend(kind, q, k, v, entry, g):
        return kind.prefill(cfg, q, k, v, entry, g, n_hashes=n_hashes)

    h, new = _run_layers(params, cfg, cache.layers, x, attend)
    log_probs = _model_call(params, cfg, ReformerLM.log_probs, h[:, -1])
    return log_probs, Cache(layers=new, length=jnp.int32(n_inputs))


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def decode_step(
    params: PyTree, cfg: ReformerConfig, cache: Cache, token: Array
) -> tuple[Array, Cache]:
    """Feeds token [b] at position cache.length -> (log-probs [b, v] of the next token, cache)."""
    return step(params, cfg, cache, token)


def step(params: PyTree, cfg: ReformerConfig, cache: Cache, token: Array) -> tuple[Array, Cache]:
    """`decode_step` without its own jit (for a decode loop compiled around it)."""
    pos = cache.length
    positions = jnp.broadcast_to(pos, token.shape)[:, None]
    x = _model_call(params, cfg, ReformerLM.embed, token[:, None], positions)

    def attend(kind, q, k, v, entry, g):
        one = lambda t: None if t is None else t[:, :, 0]  # [b, h, 1, .] -> [b, h, .]
        out, entry = kind.decode(cfg, one(q), one(k), one(v), entry, g, pos)
        return out[:, :, None], entry

    h, new = _run_layers(params, cfg, cache.layers, x, attend)
    log_probs = _model_call(params, cfg, ReformerLM.log_probs, h[:, 0])
    return log_probs, Cache(layers=new, length=pos + 1)


def recompute_log_probs(
    params: PyTree, cfg: ReformerConfig, tokens: Array, key: Array, *, n_hashes: int | None = None
) -> Array:
    """The reference for cached decoding: log-probs [b, v] of the token after tokens [b, n].

    Runs the whole prefix through the training layers again (with the same
    per-sample LSH rotations as `sampling.generate` draws from `key`'s hash half).
    """
    return prefill(params, cfg, tokens, key, n_hashes=n_hashes)[0]


def reorder_cache(cache: Cache, rows: Array) -> Cache:
    """Row r of every layer-cache array (batch axis 1: [g, b, ...]) becomes old row rows[r].

    The beam-search reorder (reformer_jax/beam_search.py); `length` is shared
    by all rows and stays. rows [b'] may repeat rows or change the batch size.
    """
    layers = jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=1), cache.layers)
    return cache.replace(layers=layers)
