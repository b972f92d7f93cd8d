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

    encoder-decoders (reformer_jax/encdec.py; s source length):
    encdec_prefill(params, cfg, source [b, s], source_mask [b, s], key)
        -> (log_probs [b, v] of the first target token, EncDecCache)
    encdec_step(params, cfg, cache, token [b]) -> (log_probs [b, v], EncDecCache)

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

from reformer_jax import attention, kinds, layers
from reformer_jax.config import ReformerConfig
from reformer_jax.encdec import ReformerEncDec, check_encdec_config
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
            "decoding a stack with cross-attention needs its encoder's memory: use "
            "encdec_prefill / encdec_step (or sampling.translate) for an encoder-decoder."
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


def _run_layers(blocks, cfg, cache_layers, x, attend, memory=None):
    """The blocks run forward: x [b, n, m] -> (concat(y1, y2) [b, n, 2m], new caches).

    blocks: the stack's stacked block parameters (params["blocks"]).
    attend(kind, q, k, v, cache entry, group) -> (attention output [b, h, n, e],
    new entry), between the attention half's own `project` and `output`.
    memory (a decoder of an encoder-decoder): {"kv": {name: (k, v) [g, b, h, s, d]},
    "bias": float32 [b, s]}, the encoder memory's keys and values projected
    once per source (`memory_kv`); each block then runs its cross-attention
    half between the two others and ends with the stack's swap
    (reformer_jax/reversible.py). Groups are unrolled (a decode step is
    small), so every cache array is updated in place at a static group index.
    """
    halves = ReformerStack(cfg, parent=None).halves()
    x1 = x2 = x
    new = {name: dict(entry) for name, entry in cache_layers.items()}
    for g in range(cfg.n_groups):
        for name, kind, (attn, cross, ff) in zip(
            block_names(cfg), cfg.attention_kinds, halves, strict=True
        ):
            p = jax.tree_util.tree_map(lambda a, g=g: a[g], blocks[name])
            bound = attn.bind({"params": p["attention"]})
            q, k, v = bound.project(x2)
            out, new[name] = attend(kinds.get(kind), q, k, v, new[name], g)
            x1 = x1 + bound.output(out)
            if memory is None:
                x2 = x2 + ff.apply({"params": p["feed_forward"]}, x1, jax.random.key(0))
                continue
            mk, mv = (t[g] for t in memory["kv"][name])
            c = cross.bind({"params": p["cross_attention"]})
            x2 = x2 + c.decode(x1, mk, mv, memory["bias"])
            x1 = x1 + ff.apply({"params": p["feed_forward"]}, x2, jax.random.key(0))
            x1, x2 = x2, x1
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

    h, new = _run_layers(params["blocks"], cfg, cache.layers, x, attend)
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

    h, new = _run_layers(params["blocks"], cfg, cache.layers, x, attend)
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


# ----------------------------------------------------------------------------- encoder-decoder


@flax.struct.dataclass
class EncDecCache:
    """Decoding state of a ReformerEncDec: the decoder's self-attention `Cache` and the memory.

    memory["kv"][name]: the encoder memory's cross-attention keys and values
    (k, v), each [g, b, h, s, d], per cycle position of the decoder;
    memory["bias"]: float32 [b, s], 0 at real source positions, -MASK_PENALTY at padding.
    """

    decoder: Cache
    memory: dict


def _encdec_call(params, cfg, method, *args, **kwargs):
    return ReformerEncDec(cfg).apply({"params": params}, *args, method=method, **kwargs)


def memory_kv(params: PyTree, cfg: ReformerConfig, memory: Array) -> dict:
    """memory [b, s, m] -> {name: (k, v) [g, b, h, s, d]}: every cross-attention half's keys
    and values, computed once per source."""
    cross = layers.CrossAttentionHalf(cfg, parent=None)

    def project(p):
        return cross.apply({"params": p}, memory, method=layers.CrossAttentionHalf.memory_kv)

    blocks = params["decoder"]["blocks"]
    return {name: jax.vmap(project)(blocks[name]["cross_attention"]) for name in block_names(cfg)}


@functools.partial(jax.jit, static_argnames=("cfg", "n_hashes"))
def encdec_prefill(
    params: PyTree,
    cfg: ReformerConfig,
    source: Array,
    source_mask: Array,
    key: Array,
    *,
    n_hashes: int | None = None,
) -> tuple[Array, EncDecCache]:
    """Encodes source [b, s] (mask bool [b, s]) and feeds the start token.

    Returns (log-probs [b, v] of the first target token, the cache). `key`
    draws the decoder's per-sample LSH rotations as `prefill`'s; the encoder
    runs deterministically (its fixed evaluation key).
    """
    check_encdec_config(cfg)
    n_hashes = cfg.n_hashes if n_hashes is None else n_hashes
    memory = _encdec_call(
        params, cfg, ReformerEncDec.encode, source, source_mask, n_hashes=n_hashes
    )
    mem = {
        "kv": memory_kv(params, cfg, memory),
        "bias": jnp.where(source_mask, 0.0, -attention.MASK_PENALTY).astype(jnp.float32),
    }
    batch = source.shape[0]
    cache = init_cache(cfg, batch, n_hashes=n_hashes, key=key)
    start = jnp.zeros((batch, 1), jnp.int32)  # the target shifted right starts with 0
    positions = jnp.zeros((batch, 1), jnp.int32)
    x = _encdec_call(params, cfg, ReformerEncDec.decoder_embed, start, positions)

    def attend(kind, q, k, v, entry, g):
        return kind.prefill(cfg, q, k, v, entry, g, n_hashes=n_hashes)

    h, new = _run_layers(params["decoder"]["blocks"], cfg, cache.layers, x, attend, mem)
    log_probs = _encdec_call(params, cfg, ReformerEncDec.log_probs, h[:, -1])
    return log_probs, EncDecCache(decoder=Cache(layers=new, length=jnp.int32(1)), memory=mem)


def encdec_step(
    params: PyTree, cfg: ReformerConfig, cache: EncDecCache, token: Array
) -> tuple[Array, EncDecCache]:
    """Feeds target token [b] at position cache.decoder.length -> (log-probs [b, v], cache)."""
    dec = cache.decoder
    pos = dec.length
    positions = jnp.broadcast_to(pos, token.shape)[:, None]
    x = _encdec_call(params, cfg, ReformerEncDec.decoder_embed, token[:, None], positions)

    def attend(kind, q, k, v, entry, g):
        one = lambda t: None if t is None else t[:, :, 0]
        out, entry = kind.decode(cfg, one(q), one(k), one(v), entry, g, pos)
        return out[:, :, None], entry

    h, new = _run_layers(params["decoder"]["blocks"], cfg, dec.layers, x, attend, cache.memory)
    log_probs = _encdec_call(params, cfg, ReformerEncDec.log_probs, h[:, 0])
    return log_probs, EncDecCache(decoder=Cache(layers=new, length=pos + 1), memory=cache.memory)
