"""Hashing, sorting and chunking for LSH attention: pure jnp functions.

Shapes use the package's einsum legend (reformer_jax/__init__.py): here
    b batch, h heads, r hash rounds (n_hashes), l sequence length, d per-head dim,
    k rotation columns, n = r * l sorted slots, u chunks, c chunk length, w window
    length ((n_chunks_before + 1 + n_chunks_after) * c).

Everything here follows docs/algorithm.md §1 (paper §2.1-2.2): angular LSH by random
rotations, a round-major sort by (round, bucket, position), and chunking of the
sorted sequence with a look-back window. `hf_window_table`, `hf_default_length` and
`sort_by_bucket(hf_length=...)` are HF transformers' windows, lengths and order (the
"hf" window rule, docs/algorithm.md "Window rules"); `duplicate_counts` is App. A's N_ij.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

BucketSpec = int | Sequence[int]

# How a chunked layer's windows are formed (ReformerConfig.window_rule, docs/algorithm.md,
# "Window rules"): "reformer", this package's; "hf", HF transformers' (`hf_window_table`).
WINDOW_RULES = ("reformer", "hf")


def bucket_factors(n_buckets: BucketSpec) -> tuple[int, ...]:
    """Validates `n_buckets` (an int or a list of factors) and returns the factors.

    Each factor must be an even integer >= 2: angular LSH takes the argmax over
    [xR, -xR], so a factor f uses f/2 random projections.
    """
    factors = (n_buckets,) if isinstance(n_buckets, int) else tuple(n_buckets)
    if not factors:
        raise ValueError(
            "n_buckets is empty: give an even int such as 64, or even factors [32, 16]."
        )
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, int):
            raise ValueError(f"n_buckets must be an int or a list of ints, got {n_buckets!r}.")
        if f < 2 or f % 2:
            raise ValueError(
                f"n_buckets={n_buckets!r}: every bucket count must be an even integer >= 2 "
                "(angular LSH takes argmax over [xR, -xR]); use e.g. 64 or [32, 16]."
            )
    return factors


def total_buckets(n_buckets: BucketSpec) -> int:
    """Number of distinct bucket ids: the product of the factors."""
    return math.prod(bucket_factors(n_buckets))


def default_n_buckets(length: int, chunk_len: int) -> int | list[int]:
    """The paper's choice n_b = 2L/c (an average bucket holds c/2 tokens).

    Rounded up to an even number; factorised into two even factors when it
    exceeds 128 (docs/algorithm.md §1.2), e.g. L=65536, c=256 -> [32, 16].
    """
    if length <= 0 or chunk_len <= 0:
        raise ValueError(f"length ({length}) and chunk_len ({chunk_len}) must be positive.")
    n = max(2, -(-2 * length // chunk_len))
    n += n % 2
    if n <= 128:
        return n
    # Smallest even divisor at least sqrt(n) whose cofactor is also even.
    for f1 in range(math.isqrt(n - 1) + 1, n):
        if f1 % 2 == 0 and n % f1 == 0 and (n // f1) % 2 == 0:
            return [f1, n // f1]
    return n


def hash_vectors(
    x: jax.Array, *, key: jax.Array, n_buckets: BucketSpec, n_hashes: int, per_example: bool = False
) -> jax.Array:
    """Angular LSH of x: [b, h, l, d] -> int32 buckets [b, h, r, l] in [0, prod(n_buckets)).

    Round r projects x on fresh Gaussian directions R[:, r, :] (not orthogonalised)
    and takes argmax(concat(xR, -xR)). Rotations differ per head, and per example
    when `per_example`. Factorised buckets: each factor f_i takes its own f_i/2
    columns, bucket = a_1 + f_1 * a_2 + f_1 * f_2 * a_3 + ...
    Buckets are integers, so no gradient flows through them.
    """
    _check_rank(x, 4, "x")
    factors = bucket_factors(n_buckets)
    if not isinstance(n_hashes, int) or n_hashes < 1:
        raise ValueError(f"n_hashes must be a positive int, got {n_hashes!r}.")
    b, h, _, d = x.shape
    n_cols = sum(f // 2 for f in factors)
    rot_shape = (b if per_example else 1, h, d, n_hashes, n_cols)
    rotations = jax.random.normal(key, rot_shape, jnp.float32)
    return hash_with_rotations(x, rotations, factors)


def hash_with_rotations(x: jax.Array, rotations: jax.Array, factors: tuple[int, ...]) -> jax.Array:
    """The bucket rule of `hash_vectors` with given rotations.

    x [b, h, l, d], rotations [b or 1, h, d, r, k] with k = sum(f // 2 for f in
    factors) -> int32 buckets [b, h, r, l]. Decoding uses it with rotations
    held fixed for a whole sample.
    """
    # Hash in float32: the bucket of a bfloat16 vector should not depend on
    # rounding inside the projection.
    proj = jnp.einsum("bhld,bhdrk->bhrlk", x.astype(jnp.float32), rotations)
    buckets = jnp.zeros(proj.shape[:-1], jnp.int32)
    offset, stride = 0, 1
    for f in factors:
        p = proj[..., offset : offset + f // 2]
        a = jnp.argmax(jnp.concatenate([p, -p], axis=-1), axis=-1).astype(jnp.int32)
        buckets = buckets + stride * a
        offset, stride = offset + f // 2, stride * f
    return jax.lax.stop_gradient(buckets)


def sort_by_bucket(
    buckets: jax.Array,
    n_buckets_total: int,
    valid: jax.Array | None = None,
    hf_length: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Round-major sort of hashed positions.

    buckets: [b, h, r, l] -> (perm, inv), both int32 [b, h, n] with n = r * l.
    perm[s] is the flat index r * l + t of the (round, position) pair in sorted
    slot s; inv is its inverse (inv[perm[s]] = s). The order is by round, then
    bucket, then position: the stable sort of round * n_b + bucket over the
    round-major flattening (which is already in position order) gives exactly
    that, without a composite integer key that could overflow at long lengths.

    valid: optional bool [b, l] (True = real token). Padding goes into one
    extra bucket after every round's buckets, so the real tokens fill the
    first r * (real count) slots exactly as they would without the padding
    (docs/algorithm.md, "Padding").

    hf_length: optional int32 [b] or an int (needs `valid`): HF transformers' order
    (docs/algorithm.md, "Window rules"): positions before hf_length that are
    not valid go into an extra bucket of their own round, after that round's
    real tokens, and only the positions from hf_length on sort after every
    round. Each example's first r * hf_length slots are then HF's sorted order.
    """
    b, h, r, l = buckets.shape
    rounds = jnp.arange(r, dtype=jnp.int32)[:, None]
    keys = rounds * n_buckets_total + buckets  # [b, h, r, l]
    if hf_length is not None:
        keys = rounds * (n_buckets_total + 1) + jnp.where(
            valid[:, None, None, :], buckets, n_buckets_total
        )
        inside = jnp.arange(l) < jnp.reshape(jnp.asarray(hf_length), (-1, 1))  # [b or 1, l]
        keys = jnp.where(inside[:, None, None, :], keys, r * (n_buckets_total + 1))
    elif valid is not None:
        keys = jnp.where(valid[:, None, None, :], keys, r * n_buckets_total)
    keys = keys.reshape(b, h, r * l)
    perm = jnp.argsort(keys, axis=-1, stable=True).astype(jnp.int32)
    inv = jnp.argsort(perm, axis=-1).astype(jnp.int32)
    return perm, inv


@jax.custom_vjp
def permute(x: jax.Array, perm: jax.Array, inv: jax.Array) -> jax.Array:
    """y[..., s, :] = x[..., perm[s], :] along axis 2 of [b, h, n, ...].

    `inv` must be the inverse permutation. The gradient is the inverse gather
    (g[..., inv[t], :]) rather than autodiff's scatter-add, which serialises
    on accelerators while a gather does not.
    """
    return _take(x, perm)


def _permute_fwd(x, perm, inv):
    return _take(x, perm), (perm, inv)


def _permute_bwd(res, g):
    perm, inv = res
    return _take(g, inv), None, None


permute.defvjp(_permute_fwd, _permute_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def sort_rounds(x: jax.Array, perm: jax.Array, inv: jax.Array, n_hashes: int) -> jax.Array:
    """The r hash rounds of x in sorted order: y[..., s, :] = x[..., perm[s] % l, :].

    x: [b, h, l, ...]; perm, inv: [b, h, r * l] from `sort_by_bucket`. Equals
    `permute` of x tiled r times, without materialising the tiled copy. The
    gradient gathers with `inv` and sums the r rounds.
    """
    return _take(x, perm % x.shape[2])


def _sort_rounds_fwd(x, perm, inv, n_hashes):
    return _take(x, perm % x.shape[2]), (perm, inv)


def _sort_rounds_bwd(n_hashes, res, g):
    perm, inv = res
    b, h, n = inv.shape
    g = _take(g, inv)  # round-major: [b, h, r * l, ...]
    g = g.reshape(b, h, n_hashes, n // n_hashes, *g.shape[3:])
    return jnp.sum(g, axis=2, dtype=jnp.float32).astype(g.dtype), None, None


sort_rounds.defvjp(_sort_rounds_fwd, _sort_rounds_bwd)


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x: [b, h, n, ...], idx: [b, h, m] -> [b, h, m, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 3))
    return jnp.take_along_axis(x, idx, axis=2)


def chunk(x: jax.Array, chunk_len: int) -> jax.Array:
    """[b, h, n, ...] -> [b, h, n / c, c, ...]."""
    b, h, n = x.shape[:3]
    return x.reshape(b, h, n // chunk_len, chunk_len, *x.shape[3:])


def look_around(
    x: jax.Array, before: int, after: int, wrap: int | jax.Array | None = None
) -> jax.Array:
    """Concatenates each chunk with its neighbours, wrapping around.

    x: [b, h, n_c, c, ...] -> [b, h, n_c, (before + 1 + after) * c, ...]; the
    window of chunk i is chunks i - before, ..., i + after (mod W), in that
    order, W = `wrap`: the chunk count n_c (None), an int, or int32 [b] per
    example (then x must be [b, ...] in full). Callers clamp before/after with
    `window_sizes` so no chunk repeats.
    """
    n_c, c = x.shape[2], x.shape[3]
    raw = jnp.arange(n_c, dtype=jnp.int32)[:, None] + jnp.arange(-before, after + 1)  # [n_c, n_win]
    if wrap is None or jnp.ndim(wrap) == 0:
        out = jnp.take(x, (raw % (n_c if wrap is None else wrap)).reshape(-1), axis=2)
    else:
        idx = (raw[None] % wrap[:, None, None]).reshape(x.shape[0], 1, -1)
        out = jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 3)), axis=2)
    # [b, h, n_c * n_win, c, ...] -> [b, h, n_c, n_win * c, ...]
    return out.reshape(*x.shape[:2], n_c, raw.shape[1] * c, *x.shape[4:])


def window_sizes(n_chunks: int, before: int, after: int) -> tuple[int, int]:
    """Clamps (before, after) so a window never holds the same chunk twice.

    With few chunks the wrapped window would repeat a chunk and count its keys
    twice in one softmax; the clamped window covers each chunk once.
    """
    if before < 0 or after < 0:
        raise ValueError(f"n_chunks_before={before} and n_chunks_after={after} must be >= 0.")
    before = min(before, n_chunks - 1)
    after = min(after, n_chunks - 1 - before)
    return before, after


def hf_window_table(n_chunks: int, before: int, after: int, wrap) -> jax.Array:
    """HF transformers' windows: int32 [b or 1, n_chunks, before + 1 + after] key chunks.

    The window of chunk t holds chunks (t + j) mod W for j = -before, ..., after,
    W = `wrap` (an int, or int32 [b] per example). HF concatenates copies of
    the chunks rolled by j, so with few chunks a window holds a chunk more than
    once, and a roll by |j| >= W leaves the chunks in place: such a j counts
    as 0 (docs/algorithm.md, "Window rules").
    """
    offsets = jnp.arange(-before, after + 1, dtype=jnp.int32)  # [n_win]
    wrap = jnp.reshape(jnp.asarray(wrap, jnp.int32), (-1, 1, 1))  # [b or 1, 1, 1]
    offsets = jnp.where(jnp.abs(offsets) < wrap, offsets, 0)  # [b or 1, 1, n_win]
    t = jnp.arange(n_chunks, dtype=jnp.int32)[None, :, None]
    return (t + offsets) % wrap


def hf_default_length(mask: jax.Array | None, length: int, chunk_len: int) -> int | jax.Array:
    """The length HF transformers runs each sequence at when its chunks are all of chunk_len:
    up to its last real token (mask: bool [b, l]), rounded up to a multiple of chunk_len.
    An int without a mask, else int32 [b]."""
    if mask is None:
        return round_up(length, chunk_len)
    return -(-sequence_ends(mask) // chunk_len) * chunk_len


def sequence_ends(mask: jax.Array) -> jax.Array:
    """mask: bool [b, l] -> int32 [b], one past each sequence's last real token (0 if none)."""
    positions = jnp.arange(1, mask.shape[1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(mask, positions, 0), axis=1)


def chunk_count(slots: int | jax.Array, chunk_len: int) -> int | jax.Array:
    """ceil(slots / chunk_len), at least 1: an int for an int, else int32 [b]."""
    if jnp.ndim(slots) == 0:
        return max(-(-int(slots) // chunk_len), 1)
    return jnp.maximum(-(-slots // chunk_len), 1).astype(jnp.int32)


def duplicate_counts(inv, s_pos, k_pos, n_hashes, chunk_len, before, after, wrap):
    """N_ij of the paper's App. A for every (query slot, window slot) pair.

    N_ij = number of (round r of query copy, round r' of key copy) such that the
    chunk holding key j's copy r' lies in the window of the chunk holding query
    i's copy r, the windows wrapping around the first `wrap` chunks (an int,
    or int32 [b] narrowed per example as in `attention._attend`). Returns float32
    [b, h, u, c, w], each entry >= 1 (padding keys, masked anyway, count 1).
    """
    b, h, n = inv.shape
    padded = n // n_hashes
    n_chunks = n // chunk_len
    # chunk_of[b, h, t, r]: the sorted chunk of position t's copy in round r.
    chunk_of = (inv // chunk_len).reshape(b, h, n_hashes, padded).transpose(0, 1, 3, 2)
    q_chunks = jnp.take_along_axis(chunk_of, s_pos.reshape(b, h, n)[..., None], axis=2)
    q_chunks = q_chunks.reshape(b, h, n_chunks, chunk_len, n_hashes)  # [b, h, u, c, r]
    k_chunks = jnp.take_along_axis(chunk_of, k_pos.reshape(b, h, -1)[..., None], axis=2)
    k_chunks = k_chunks.reshape(b, h, n_chunks, -1, n_hashes)  # [b, h, u, w, r]
    if jnp.ndim(wrap) == 1:  # per example: [b, 1, 1, 1, 1]
        wrap = wrap.reshape(b, 1, 1, 1, 1)
        before = jnp.minimum(before, wrap - 1)
        after = jnp.minimum(after, wrap - 1 - before)
    counts = jnp.zeros(q_chunks.shape[:-1] + k_chunks.shape[-2:-1], jnp.int32)
    for r in range(n_hashes):
        for r2 in range(n_hashes):
            offset = (k_chunks[..., None, :, r2] - q_chunks[..., :, None, r]) % wrap
            counts += ((offset <= after) | (offset >= wrap - before)).astype(jnp.int32)
    return jax.lax.stop_gradient(jnp.maximum(counts, 1).astype(jnp.float32))


def pad_length(x: jax.Array, length: int, axis: int, value=0) -> jax.Array:
    """Pads axis `axis` of x at the end up to `length`."""
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _check_rank(x, rank: int, name: str) -> None:
    if getattr(x, "ndim", None) != rank:
        raise ValueError(
            f"{name} must have rank {rank} ([batch, heads, length, dim]), "
            f"got shape {getattr(x, 'shape', None)}."
        )
