"""Autoregressive sampling from a ReformerLM with per-layer decoding caches.

Public functions (pure, jit-compiled; einsum legend: b samples, h heads,
d / e per-head key / value dim, m d_model, v vocabulary, l cache length =
cfg.max_len, r hash rounds, w LSH window, s local ring length, p prompt length):

    generate(params, cfg, prompt [b, p], key, *, num_tokens, greedy=False,
             temperature=1.0, top_k=None, top_p=None, n_hashes=None) -> ids int32 [b, num_tokens]
    prefill(params, cfg, prompt [b, p], key, *, n_hashes=None)
        -> (log_probs float32 [b, v] of the first new token, Cache)
    decode_step(params, cfg, cache, token [b]) -> (log_probs [b, v], Cache)
    init_cache(cfg, batch, *, n_hashes=None) -> Cache (zeros; eval_shape gives its bytes)
    filter_logits(logits [b, v], *, temperature, top_k, top_p) -> [b, v] (-inf = removed)
    sample_logits(logits [b, v], key, *, greedy, temperature, top_k, top_p) -> ids int32 [b]
    lsh_decode_attention(q [b, h, d], k [b, h, l, d], v [b, h, l, e], buckets [b, h, r, l],
             pos, *, n_buckets, window, dedup) -> out [b, h, e]

The model shifts its input right (a 0 in front), so the prompt p_0..p_{P-1}
is run as the inputs 0, p_0, ..., p_{P-1} at positions 0..P; the output at
position P gives the first new token, which is fed back at position P + 1,
and so on. P + num_tokens must not exceed cfg.max_len. A model with
cfg.shift_inputs=False (HF checkpoints, reformer_jax.convert) reads the prompt
as given at positions 0..P-1; the output at P-1 gives the first new token.

Caches (`Cache.layers[name]` mirrors `params["blocks"][name]`: one entry per
cycle position, every array stacked over the n_groups layers of that
position, preallocated for cfg.max_len and updated in place):

    local        k, v: [g, b, h, s, .] a ring buffer of the last
                 s = (n_chunks_before + 1) * local_chunk_len keys and values
    full         k, v: [g, b, h, l, .] all past keys (unscaled) and values
    full_shared  k, v: [g, b, h, l, .] all past normalised keys and values
    lsh          k, v as full_shared, buckets int32 [g, b, h, r, l], and the
                 random rotations float32 [g, b, h, d, r, n_cols] drawn once
                 per sample and layer from the sampling key and never again

Decoding needs no reversibility: each layer runs its two halves forward on
the new position, y1 = x1 + F(x2) with the cache, y2 = x2 + G(y1), with the
training parameters unchanged and no dropout.

Prefill runs the prompt through the same layers as training in one pass
(chunked LSH, chunked local, full attention over the prompt; chunked
feed-forward), with each sample's fixed rotations, and fills the caches. For
`local`, `full` and `full_shared` layers cached decoding is exactly the
training forward on the whole prefix (it is causal).

LSH at decode time
------------------
Training-time LSH attention is not exactly causal: which keys share a sorted
chunk with a query depends on how many later tokens sort before it (paper
§2.2). A decoder cannot know later tokens, so decoding uses this definition.
In each hash round the sorted order over the positions decoded so far is
(bucket, position), read cyclically (after the highest bucket comes bucket 0
again, as training's first chunk looks back at the last one). The new token
is the latest position, so it sorts last within its bucket. It attends to the
`window` = (n_chunks_before + 1) * chunk_len slots that end at itself in that
cyclic order: itself (with the self-penalty of paper §2.2, so it is used only
when nothing else is), the most recent keys of its own bucket, then the most
recent keys of the next lower buckets until the window is full. Rounds are
combined by softmax of their log-sum-exps (paper eq. 14); with `dedup` a key
seen in N rounds gets -log N (paper App. A), as in training.

Why this one: it is the window a training query gets when its chunk ends at
it and no later token takes a slot in its window, so it uses the same window
size and the same neighbours-in-sorted-order notion of similarity as
training, while depending only on the past: a token's attention is fixed
when it is decoded and never changes with the sample's length, and the cost
per step is one pass of attention over the cache plus a threshold search for
the window (no re-sort). When the positions so far fit in one window (at most
`window` tokens) every round sees every earlier key and decoding equals
shared-QK full attention, as training does when the sequence fits one chunk. HF transformers instead
widens the matching bucket's past positions to the sorted chunks they would
occupy (which depends on the prefix length); trax keeps a bounded memory of
past keys. docs/benchmarks.md measures how often the greedy token of this
definition agrees with recomputing the whole prefix with training-time LSH.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax import attention, layers, lsh
from reformer_jax.model import ReformerConfig, block_names

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class Cache:
    """Decoding state: `layers[name][field]` stacked over groups; `length` = positions filled."""

    layers: dict
    length: Array  # int32 scalar: the position the next fed token takes


# ----------------------------------------------------------------------------- logits filters


def filter_logits(
    logits: Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """logits [b, v] -> float32 [b, v] scaled by 1/temperature, removed entries -inf.

    top_k keeps the k largest logits (ties at the k-th value are all kept).
    top_p (nucleus) keeps the smallest set of most probable ids whose
    probability mass (after temperature) is at least p.
    """
    x = logits.astype(jnp.float32) / jnp.float32(temperature)
    if top_k is not None and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p is not None and not (isinstance(top_p, (int, float)) and top_p >= 1.0):
        order = jnp.argsort(-x, axis=-1)
        sorted_x = jnp.take_along_axis(x, order, axis=-1)
        probs = jax.nn.softmax(sorted_x, axis=-1)
        # Keep id i of the sorted list when the mass strictly before it is < p:
        # that is the smallest prefix whose mass reaches p.
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < top_p
        keep = (
            jnp.zeros_like(keep_sorted).at[jnp.arange(x.shape[0])[:, None], order].set(keep_sorted)
        )
        x = jnp.where(keep, x, -jnp.inf)
    return x


def sample_logits(
    logits: Array,
    key: Array,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """One id per row of logits [b, v]: argmax if greedy, else a draw from the filtered softmax."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- caches


def _lsh_shape(cfg: ReformerConfig, n_hashes: int) -> tuple[tuple[int, ...], int]:
    """(bucket factors, rotation columns) of the decoding hash: buckets fixed for max_len."""
    factors = lsh.bucket_factors(cfg.lsh_buckets(cfg.max_len))
    return factors, sum(f // 2 for f in factors)


def lsh_window(cfg: ReformerConfig) -> int:
    """Slots a new token's LSH window holds per round (itself included)."""
    return min((cfg.n_chunks_before + 1) * cfg.chunk_len, cfg.max_len)


def local_ring_len(cfg: ReformerConfig) -> int:
    return (cfg.local_window[0] + 1) * cfg.local_chunk_len


def init_cache(cfg: ReformerConfig, batch: int, *, n_hashes: int | None = None) -> Cache:
    """Zero caches for `batch` samples; see the module docstring for the shapes."""
    n_hashes = cfg.n_hashes if n_hashes is None else n_hashes
    dtype = jnp.dtype(cfg.dtype)
    g, h, dk, length = cfg.n_groups, cfg.n_heads, cfg.d_head, cfg.max_len
    caches = {}
    for name, kind in zip(block_names(cfg), cfg.attention_kinds, strict=True):
        n = local_ring_len(cfg) if kind == "local" else length
        entry = {
            "k": jnp.zeros((g, batch, h, n, dk), dtype),
            "v": jnp.zeros((g, batch, h, n, dk), dtype),
        }
        if kind == "lsh":
            _, cols = _lsh_shape(cfg, n_hashes)
            entry["buckets"] = jnp.zeros((g, batch, h, n_hashes, length), jnp.int32)
            entry["rotations"] = jnp.zeros((g, batch, h, dk, n_hashes, cols), jnp.float32)
        caches[name] = entry
    return Cache(layers=caches, length=jnp.int32(0))


def cache_bytes(cfg: ReformerConfig, batch: int = 1, *, n_hashes: int | None = None) -> int:
    """Bytes of the decoding cache of `batch` samples (computed from shapes, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, batch, n_hashes=n_hashes))
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))


def _rotations(cfg, key, batch, layer, n_hashes):
    """Per-sample rotations of one layer: [b, h, d, r, k], from fold_in(key, sample), layer.

    With cfg.hash_seed every sample uses the rotations the model's forward
    pass uses: fold_in(key(hash_seed), layer).
    """
    _, cols = _lsh_shape(cfg, n_hashes)

    def one(s):
        if cfg.hash_seed is not None:
            k = jax.random.fold_in(jax.random.key(cfg.hash_seed), layer)
        else:
            k = jax.random.fold_in(jax.random.fold_in(key, s), layer)
        return jax.random.normal(k, (cfg.n_heads, cfg.d_head, n_hashes, cols), jnp.float32)

    return jax.vmap(one)(jnp.arange(batch))


# ----------------------------------------------------------------------------- attention at decode


def _attend_one(q, k, v, admissible, self_mask=None, bias=None):
    """q [b, h, (r,) d] against k [b, h, (r,) w, d]; returns out [b, h, (r,) e], lse float32.

    The masks and the softmax are those of training's chunked kernel.
    """
    logits = jnp.einsum("...d,...wd->...w", q, k, preferred_element_type=jnp.float32)
    logits = logits + jnp.where(admissible, 0.0, -attention.MASK_PENALTY)
    if self_mask is not None:
        logits = logits - jnp.where(self_mask, attention.SELF_PENALTY, 0.0)
    if bias is not None:
        logits = logits + bias
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnorm = jnp.exp(logits - peak)
    total = jnp.sum(unnorm, axis=-1, keepdims=True)
    probs = unnorm / total
    lse = (peak + jnp.log(total))[..., 0]
    out = jnp.einsum(
        "...w,...we->...e", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(v.dtype), lse


def lsh_decode_attention(
    q: Array,
    k: Array,
    v: Array,
    buckets: Array,
    pos: Array,
    *,
    n_buckets: int,
    window: int,
    dedup: bool = False,
) -> Array:
    """The decode-time LSH attention of the module docstring for the token at `pos`.

    q: [b, h, d] the new token's (unnormalised) query; k: [b, h, l, d]
    normalised keys and v: [b, h, l, e] values of positions 0..pos (the new
    token's already written at `pos`); buckets: int32 [b, h, r, l], likewise.
    Entries past `pos` are ignored. Returns [b, h, e].
    """
    length = k.shape[2]
    if n_buckets * length >= 2**31:
        raise ValueError(
            f"n_buckets ({n_buckets}) x cache length ({length}) overflows int32 sort keys; "
            "use fewer buckets or a shorter max_len for decoding."
        )
    positions = jnp.arange(length, dtype=jnp.int32)
    mine = jax.lax.dynamic_index_in_dim(buckets, pos, axis=3, keepdims=True)  # [b, h, r, 1]
    # Cyclic (bucket, position) order ending at the new token: its own bucket
    # ranks highest, then the next lower buckets; future slots rank below all.
    rank = jnp.mod(buckets - mine - 1, n_buckets) * length + positions
    rank = jnp.where(positions <= pos, rank, -1)
    in_window = rank >= _window_threshold(rank, window, n_buckets * length)  # [b, h, r, l]
    # One [l] row of logits serves every round: rounds differ only in their window.
    logits = jnp.einsum("bhd,bhld->bhl", q, k, preferred_element_type=jnp.float32)
    logits = logits[:, :, None] - jnp.where(positions == pos, attention.SELF_PENALTY, 0.0)
    logits = logits + jnp.where(in_window, 0.0, -attention.MASK_PENALTY)
    if dedup:
        # N_j: in how many rounds' windows key j appears (paper App. A).
        counts = jnp.sum(in_window, axis=2, keepdims=True).astype(jnp.float32)
        logits = logits - jnp.log(jnp.maximum(counts, 1.0))
    peak = jnp.max(logits, axis=-1, keepdims=True)
    unnorm = jnp.exp(logits - peak)
    total = jnp.sum(unnorm, axis=-1, keepdims=True)
    lse = (peak + jnp.log(total))[..., 0]  # [b, h, r]
    out = jnp.einsum(
        "bhrl,bhle->bhre", (unnorm / total).astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    weights = jax.nn.softmax(lse, axis=2)[..., None]  # paper eq. 14
    return jnp.sum(out * weights, axis=2).astype(v.dtype)


def _window_threshold(rank: Array, window: int, bound: int) -> Array:
    """The window-th largest value of each row of rank [..., l] -> [..., 1] (0 if fewer valid).

    Valid ranks are distinct integers in [0, bound); invalid ones are -1. A
    bisection on the threshold (about log2(bound) counting passes over the
    row) replaces a top-k, which XLA's CPU backend runs as a slow sort.
    """
    lo = jnp.zeros(rank.shape[:-1], jnp.int32)  # count(rank >= lo) >= window, or lo = 0
    hi = jnp.full(rank.shape[:-1], bound, jnp.int32)  # count(rank >= hi) = 0 < window

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(rank >= mid[..., None], axis=-1) >= window
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, max(bound, 2).bit_length(), halve, (lo, hi))
    return lo[..., None]


def _project(p, x, dtype, eps):
    """LayerNorm -> per-head projections as in training: x [b, p, m] -> dict of [b, h, p, d]."""
    hn = layers.layer_norm(x, p["norm"]["scale"], p["norm"]["bias"], eps).astype(dtype)
    out = {}
    for name in ("wq", "wk", "wv"):
        if name in p:
            out[name] = jnp.einsum("bpm,mhd->bhpd", hn, p[name].astype(dtype))
    return out


def _write(stack, value, g, pos, axis=3):
    """Writes value at group g and position pos (on `axis`) of a stacked cache array, in place.

    stack: k/v [g, b, h, l, d] (axis 3) or buckets [g, b, h, r, l] (axis 4);
    value: the slice without the group and position axes.
    """
    update = jnp.expand_dims(value, (0, axis)).astype(stack.dtype)
    start = [jnp.int32(0)] * stack.ndim
    start[0], start[axis] = jnp.int32(g), jnp.asarray(pos, jnp.int32)
    return jax.lax.dynamic_update_slice(stack, update, start)


def _attention_step(kind, p, cfg, c, g, x, pos):
    """F on one new position: x [b, m] -> (y [b, m], cache entry c with layer g updated).

    c holds the arrays of one cycle position stacked over groups; layer g's
    slices are written in place and read without copying the stack.
    """
    dtype = jnp.dtype(cfg.dtype)
    pr = _project(p, x[:, None], dtype, cfg.layer_norm_eps)
    q, v = pr["wq"][:, :, 0], pr["wv"][:, :, 0]  # [b, h, d]
    c = dict(c)
    if kind == "local":
        ring = c["k"].shape[3]
        slot = pos % ring
        c["k"] = _write(c["k"], pr["wk"][:, :, 0], g, slot)
        c["v"] = _write(c["v"], v, g, slot)
        # Slot s holds the latest position congruent to s; local attention
        # sees its own chunk and n_chunks_before chunks before it, as in training.
        slots = jnp.arange(ring, dtype=jnp.int32)
        key_pos = pos - jnp.mod(pos - slots, ring)
        chunk = cfg.local_chunk_len
        ok = (key_pos >= 0) & (key_pos // chunk >= pos // chunk - cfg.local_window[0])
        q = q * jnp.asarray(cfg.d_head**-0.5, q.dtype)
        out, _ = _attend_one(q, c["k"][g], c["v"][g], ok)
    elif kind == "full":
        c["k"] = _write(c["k"], pr["wk"][:, :, 0], g, pos)
        c["v"] = _write(c["v"], v, g, pos)
        ok = jnp.arange(c["k"].shape[3]) <= pos
        q = q * jnp.asarray(cfg.d_head**-0.5, q.dtype)
        out, _ = _attend_one(q, c["k"][g], c["v"][g], ok)
    else:
        c["k"] = _write(c["k"], attention.normalize_keys(q), g, pos)
        c["v"] = _write(c["v"], v, g, pos)
        if kind == "full_shared":
            positions = jnp.arange(c["k"].shape[3])
            out, _ = _attend_one(
                q, c["k"][g], c["v"][g], positions <= pos, self_mask=positions == pos
            )
        else:
            factors = lsh.bucket_factors(cfg.lsh_buckets(cfg.max_len))
            new = lsh.hash_with_rotations(q[:, :, None], c["rotations"][g], factors)  # [b, h, r, 1]
            c["buckets"] = _write(c["buckets"], new[..., 0], g, pos, axis=4)
            out = lsh_decode_attention(
                q,
                c["k"][g],
                c["v"][g],
                c["buckets"][g],
                pos,
                n_buckets=math.prod(factors),
                window=lsh_window(cfg),
                dedup=cfg.dedup,
            )
    y = jnp.einsum("bhe,hem->bm", out, p["wo"].astype(dtype))
    return y, c


def _feed_forward(cfg, p, x):
    """G on x [b, n, m], deterministic (no dropout), chunked as configured."""
    return layers.FeedForwardHalf(cfg, parent=None).apply({"params": p}, x, jax.random.key(0))


def _layer_params(params, name, g):
    return jax.tree_util.tree_map(lambda a: a[g], params["blocks"][name])


# ----------------------------------------------------------------------------- embed and head


def _embed(params, cfg, ids, positions):
    """ids, positions: int [b, n] -> [b, n, m] in cfg.dtype (embedding + positional encoding)."""
    x = params["embed"]["embedding"][ids]
    return (x + _positions(params, cfg, positions)).astype(jnp.dtype(cfg.dtype))


def _positions(params, cfg, positions):
    """The model's positional encoding of int positions [b, n] -> [b, n, m] float32."""
    if cfg.pos_encoding == "none":
        return jnp.zeros((*positions.shape, cfg.d_model), jnp.float32)
    if cfg.axial_shape is not None:
        # Position p has row-major coordinates (p_1, ..., p_k); its encoding
        # concatenates the per-axis vectors (paper §5 / trax axial positions).
        parts, rest = [], positions
        strides = [math.prod(cfg.axial_shape[i + 1 :]) for i in range(len(cfg.axial_shape))]
        for i, stride in enumerate(strides):
            parts.append(params["axial_pos"][f"axis_{i}"][rest // stride])
            rest = rest % stride
        return jnp.concatenate(parts, axis=-1)
    d = cfg.d_model
    pos = positions.astype(jnp.float32)[..., None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    enc = jnp.zeros((*positions.shape, d), jnp.float32)
    enc = enc.at[..., 0::2].set(jnp.sin(pos * freq))
    return enc.at[..., 1::2].set(jnp.cos(pos * freq[: d // 2]))


def _head(params, cfg, h):
    """h [b, 2m] -> float32 log-probs [b, v] (the training head without dropout)."""
    p = params["head"]
    h = layers.layer_norm(h, p["norm"]["scale"], p["norm"]["bias"], cfg.layer_norm_eps)
    logits = (
        jnp.einsum("bm,mv->bv", h, p["kernel"].astype(h.dtype), preferred_element_type=jnp.float32)
        + p["bias"]
    )
    return jax.nn.log_softmax(logits, axis=-1)


# ----------------------------------------------------------------------------- prefill and step


def _prefill_attention(kind, p, cfg, x, c, g, n_hashes):
    """F over a whole prompt x [b, n, m] with training's attention; fills layer g of entry c."""
    dtype = jnp.dtype(cfg.dtype)
    pr = _project(p, x, dtype, cfg.layer_norm_eps)
    q, v = pr["wq"], pr["wv"]
    n = x.shape[1]
    c = dict(c)
    if kind == "local":
        out = attention.local_attention(
            q,
            pr["wk"],
            v,
            chunk_len=cfg.local_chunk_len,
            causal=True,
            n_chunks_before=cfg.local_window[0],
            n_chunks_after=0,
        )
        ring = c["k"].shape[3]
        keep = min(ring, n)  # the last `keep` positions go to slots position % ring
        slots = np.arange(n - keep, n) % ring
        for f, a in (("k", pr["wk"]), ("v", v)):
            c[f] = c[f].at[g].set(c[f][g].at[:, :, slots].set(a[:, :, n - keep :]))
    elif kind == "full":
        out = attention.full_attention(q, pr["wk"], v, causal=True)
        c["k"] = c["k"].at[g, :, :, :n].set(pr["wk"])
        c["v"] = c["v"].at[g, :, :, :n].set(v)
    else:
        c["k"] = c["k"].at[g, :, :, :n].set(attention.normalize_keys(q))
        c["v"] = c["v"].at[g, :, :, :n].set(v)
        if kind == "full_shared":
            out = attention.full_attention(q, None, v, causal=True, shared_qk=True)
        else:
            factors = lsh.bucket_factors(cfg.lsh_buckets(cfg.max_len))
            buckets = lsh.hash_with_rotations(q, c["rotations"][g], factors)  # [b, h, r, n]
            out, _ = attention.lsh_attention(
                q,
                v,
                buckets=buckets,
                n_hashes=n_hashes,
                n_buckets=factors,
                chunk_len=cfg.chunk_len,
                causal=True,
                n_chunks_before=cfg.n_chunks_before,
                n_chunks_after=0,
                dedup=cfg.dedup,
            )
            c["buckets"] = c["buckets"].at[g, :, :, :, :n].set(buckets)
    y = jnp.einsum("bhpe,hem->bpm", out, p["wo"].astype(dtype))
    return y, c


def _run_layers(params, cfg, cache_layers, x, attn_fn):
    """The reversible blocks run forward: x [b, n, m] -> (concat(y1, y2) [b, n, 2m], new caches).

    attn_fn(kind, attention params, cache entry, group, x2) -> (F(x2), new entry),
    where the entry holds one cycle position's arrays stacked over groups.
    Groups are unrolled (a decode step is small), so every cache array is
    updated in place at a static group index.
    """
    names = block_names(cfg)
    x1 = x2 = x
    new = {name: dict(entry) for name, entry in cache_layers.items()}
    for g in range(cfg.n_groups):
        for name, kind in zip(names, cfg.attention_kinds, strict=True):
            p = _layer_params(params, name, g)
            y, new[name] = attn_fn(kind, p["attention"], new[name], g, x2)
            x1 = x1 + y
            x2 = x2 + _feed_forward(cfg, p["feed_forward"], x1)
    return jnp.concatenate([x1, x2], axis=-1), new


def _check_decodable(cfg: ReformerConfig) -> None:
    if not cfg.causal:
        raise ValueError("sampling needs a causal model (ReformerConfig.causal = True).")


@functools.partial(jax.jit, static_argnames=("cfg", "n_hashes"))
def prefill(
    params: PyTree, cfg: ReformerConfig, prompt: Array, key: Array, *, n_hashes: int | None = None
) -> tuple[Array, Cache]:
    """Runs prompt [b, p] (ids) in one chunked pass; returns (log-probs [b, v] of token p, cache).

    `key` draws each sample's LSH rotations (sample s, layer i:
    fold_in(fold_in(key, s), i)); they stay in the cache for every later step.
    No input checks here (see `generate`): prompt length + 1 <= cfg.max_len
    (prompt length <= cfg.max_len without cfg.shift_inputs).
    """
    _check_decodable(cfg)
    n_hashes = cfg.n_hashes if n_hashes is None else n_hashes
    b = prompt.shape[0]
    cache_layers = dict(init_cache(cfg, b, n_hashes=n_hashes).layers)
    names = block_names(cfg)
    for j, (name, kind) in enumerate(zip(names, cfg.attention_kinds, strict=True)):
        if kind == "lsh":
            rot = [
                _rotations(cfg, key, b, g * len(names) + j, n_hashes) for g in range(cfg.n_groups)
            ]
            cache_layers[name] = {**cache_layers[name], "rotations": jnp.stack(rot)}
    if cfg.shift_inputs:
        inputs = jnp.pad(prompt, ((0, 0), (1, 0)))  # shift right: 0, p_0, ..., p_{P-1}
    else:
        inputs = prompt
    n_inputs = inputs.shape[1]
    positions = jnp.broadcast_to(jnp.arange(n_inputs, dtype=jnp.int32), inputs.shape)
    x = _embed(params, cfg, inputs, positions)

    def attn(kind, p, entry, g, x2):
        return _prefill_attention(kind, p, cfg, x2, entry, g, n_hashes)

    h, new = _run_layers(params, cfg, cache_layers, x, attn)
    return _head(params, cfg, h[:, -1]), Cache(layers=new, length=jnp.int32(n_inputs))


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def decode_step(
    params: PyTree, cfg: ReformerConfig, cache: Cache, token: Array
) -> tuple[Array, Cache]:
    """Feeds token [b] at position cache.length -> (log-probs [b, v] of the next token, cache)."""
    return _decode_step(params, cfg, cache, token)


def _decode_step(params, cfg, cache, token):
    pos = cache.length
    x = _embed(params, cfg, token[:, None], jnp.broadcast_to(pos, token.shape)[:, None])

    def attn(kind, p, entry, g, x2):
        y, entry = _attention_step(kind, p, cfg, entry, g, x2[:, 0], pos)
        return y[:, None], entry

    h, new = _run_layers(params, cfg, cache.layers, x, attn)
    return _head(params, cfg, h[:, 0]), Cache(layers=new, length=pos + 1)


# ----------------------------------------------------------------------------- generate


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How each token is chosen from the model's log-probs (see `sample_logits`)."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or math.isinf(t):
            raise ValueError(
                f"temperature must be a finite number > 0, got {t!r} (use greedy for T -> 0)."
            )
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be an int >= 1 (or None for no limit), got {k!r}.")
        p = self.top_p
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1
        ):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}.")


def check_prompt(cfg: ReformerConfig, prompt, num_tokens: int) -> None:
    """One clear error for a prompt [b, p] the model cannot continue by num_tokens."""
    shape = getattr(prompt, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"prompt must be int ids of shape [samples, length], got shape {shape}.")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must hold integer ids, got dtype {prompt.dtype}.")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"prompt is empty (shape {tuple(shape)}): give at least one token to continue."
        )
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}.")
    if shape[1] + num_tokens > cfg.max_len:
        raise ValueError(
            f"prompt length {shape[1]} + num_tokens {num_tokens} exceeds the model's max_len "
            f"{cfg.max_len}: shorten the prompt or ask for at most {cfg.max_len - shape[1]} tokens."
        )
    lo, hi = int(jnp.min(prompt)), int(jnp.max(prompt))
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(
            f"prompt ids must lie in 0..{cfg.vocab_size - 1} (the model's vocabulary), "
            f"got {lo}..{hi}."
        )


def generate(
    params: PyTree,
    cfg: ReformerConfig,
    prompt: Array,
    key: Array,
    *,
    num_tokens: int,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n_hashes: int | None = None,
) -> Array:
    """Samples num_tokens ids after prompt [b, p] for each of b samples -> int32 [b, num_tokens].

    One compiled program: `prefill`, then a `lax.scan` of decode steps. The
    key decides everything: the LSH rotations of each sample and every draw,
    so the same key gives the same samples. `n_hashes` overrides the
    configured hash rounds (the paper's Table 2 evaluates LSH-1..8).
    """
    _check_decodable(cfg)
    opts = SamplingOptions(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
    if n_hashes is not None and (
        isinstance(n_hashes, bool) or not isinstance(n_hashes, int) or n_hashes < 1
    ):
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}.")
    prompt = jnp.asarray(prompt)
    check_prompt(cfg, prompt, num_tokens)
    # temperature and top_p are traced, so a sweep over them compiles once;
    # greedy and top_k decide the program's shape and stay static.
    use_top_p = opts.top_p is not None and opts.top_p < 1.0
    return _generate(
        params,
        cfg,
        prompt.astype(jnp.int32),
        key,
        jnp.float32(opts.temperature),
        jnp.float32(opts.top_p) if use_top_p else None,
        num_tokens=num_tokens,
        greedy=opts.greedy,
        top_k=opts.top_k,
        n_hashes=n_hashes,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "num_tokens", "greedy", "top_k", "n_hashes"))
def _generate(params, cfg, prompt, key, temperature, top_p, *, num_tokens, greedy, top_k, n_hashes):
    hash_key, draw_key = jax.random.split(key)
    choose = functools.partial(
        sample_logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p
    )
    log_probs, cache = prefill(params, cfg, prompt, hash_key, n_hashes=n_hashes)
    first = choose(log_probs, jax.random.fold_in(draw_key, 0))

    def step(carry, i):
        cache, token = carry
        log_probs, cache = _decode_step(params, cfg, cache, token)
        token = choose(log_probs, jax.random.fold_in(draw_key, i))
        return (cache, token), token

    _, rest = jax.lax.scan(step, (cache, first), jnp.arange(1, num_tokens))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def recompute_log_probs(
    params: PyTree, cfg: ReformerConfig, tokens: Array, key: Array, *, n_hashes: int | None = None
) -> Array:
    """The reference for cached decoding: log-probs [b, v] of the token after tokens [b, n].

    Runs the whole prefix through the training layers again (with the same
    per-sample LSH rotations as `generate` draws from `key`'s hash half).
    """
    return prefill(params, cfg, tokens, key, n_hashes=n_hashes)[0]
