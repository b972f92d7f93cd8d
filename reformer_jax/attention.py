"""LSH, local and full attention as pure, jit-able functions.

Arrays are [batch, heads, length, dim]. Shapes use the package's einsum legend
(reformer_jax/__init__.py): here b batch, h heads, r hash rounds, l length,
d per-head dim (e for values), n sorted slots (r * l), u chunks, c chunk
length, w window length ((before + 1 + after) * c).

All three share one chunked kernel (`_attend`): dot products of a chunk of
queries against a window of keys, additive float32 masks computed from the
ORIGINAL positions of queries and keys (docs/algorithm.md §1.7), a float32 softmax whose
log-sum-exp is kept, optional dropout on the probabilities, and the weighted
sum of values. Memory is O(l * w) per head: no [l, l] array on the LSH or local
path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from reformer_jax import lsh
from reformer_jax.kernels import window

# Additive logit penalties (docs/algorithm.md §1.7). Finite on purpose: a query whose only
# admissible key is itself still attends to itself instead of producing NaN.
MASK_PENALTY = 1e9
SELF_PENALTY = 1e5


def apply_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout: zeroes each element with probability ~`rate`, scales the rest.

    The random bits come from XLA's counter-based generator (RngBitGenerator,
    JAX's "rbg" key type) seeded by 128 bits drawn from `key`, 16 bits per
    element: threefry on CPU is lowered as a loop that materialises several
    u32 arrays of x's shape (2 GiB for one [65536, 1024] activation), the rbg
    bits are a single u16 array. An element is kept when its bits u satisfy
    u >= t, t = round(rate * 2^16), so the rate is t / 2^16 (0.2 -> 0.199997)
    and the kept elements are scaled by 1 / (1 - t / 2^16): the expectation is
    exactly x. The mask is a pure function of (key, x.shape): the backward pass
    (a custom VJP) draws it again instead of keeping it, and the reversible
    backward pass regenerates the forward's mask.
    """
    threshold = min(round(rate * 2**16), 2**16 - 1)
    return _dropout(x, key, threshold)


def _keep_scale(key, shape, dtype, threshold):
    """The dropout multiplier: 0 where dropped, 1 / P(keep) where kept."""
    seed = jax.random.bits(key, (4,), jnp.uint32)
    bits = jax.random.bits(jax.random.wrap_key_data(seed, impl="rbg"), shape, jnp.uint16)
    scale = jnp.asarray(2**16 / (2**16 - threshold), dtype)
    return jnp.where(bits >= jnp.uint16(threshold), scale, jnp.zeros((), dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, key, threshold):
    return (x * _keep_scale(key, x.shape, x.dtype, threshold)).astype(x.dtype)


def _dropout_fwd(x, key, threshold):
    return _dropout(x, key, threshold), key


def _dropout_bwd(threshold, key, g):
    # Tied to g, so XLA neither merges this draw with the forward's (keeping
    # the bits alive in between) nor makes it before it is needed.
    key, _ = jax.lax.optimization_barrier((key, g))
    return (g * _keep_scale(key, g.shape, g.dtype, threshold)).astype(g.dtype), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


def normalize_keys(q: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Shared-QK keys: k = q * rsqrt(mean(q^2) + eps) / sqrt(d) (docs/algorithm.md §1.6).

    That is q/|q| up to eps; the statistics are computed in float32.
    """
    q32 = q.astype(jnp.float32)
    k = q32 * jax.lax.rsqrt(jnp.mean(q32 * q32, axis=-1, keepdims=True) + eps)
    return (k / jnp.sqrt(jnp.float32(q.shape[-1]))).astype(q.dtype)


def lsh_attention(
    qk: jax.Array,
    v: jax.Array,
    *,
    key: jax.Array | None = None,
    n_hashes: int,
    n_buckets: lsh.BucketSpec,
    chunk_len: int,
    causal: bool = True,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    dedup: bool = False,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    buckets: jax.Array | None = None,
    per_example_rotations: bool = False,
    impl: str = "xla",
) -> tuple[jax.Array, jax.Array]:
    """Shared-QK LSH self-attention (docs/algorithm.md §1, paper §2).

    Args:
      qk: [b, h, l, d] shared queries/keys (keys are the normalised queries).
      v: [b, h, l, e] values.
      key: PRNG key of the random rotations; required unless `buckets` given.
      n_hashes: hash rounds r; a call-time choice, not part of any weight.
      n_buckets: buckets per round, an even int or a list of even factors.
      chunk_len: c. Any l works: the sequence is padded to a multiple of c
        internally (pad keys are masked) and the output is cut back to l.
      causal: mask keys at later positions.
      n_chunks_before, n_chunks_after: the window of each sorted chunk
        (wrapping around: chunk 0 looks back at the last chunk).
      dedup: the paper's App. A correction: subtract log N_ij where N_ij counts
        how often key j appears in the windows of query i's r copies, so a pair
        seen in several rounds is counted once. Off by default (as trax and
        HF transformers).
      mask: optional bool [b, l], True for real tokens; False keys are masked.
      dropout_rate, dropout_key: dropout on the attention probabilities (after
        the log-sum-exp is taken).
      buckets: optional int [b, h, r, l] buckets to use instead of hashing
        (the reversible backward pass replays the forward's buckets).
      per_example_rotations: draw different rotations for each example.
      impl: how the chunks attend: "xla" (jnp, the reference), "pallas" (the
        fused GPU kernel, reformer_jax/kernels), "auto" (the kernel on a GPU
        when it takes these sizes, else jnp) or "interpret" (the kernel in
        Pallas's interpret mode: any backend, slow; for checks). See
        `kernels.window.resolve_impl`.

    Returns:
      (out [b, h, l, e] in v's dtype, buckets int32 [b, h, r, l]).
    """
    lsh._check_rank(qk, 4, "qk")
    lsh._check_rank(v, 4, "v")
    _check_same_prefix(qk, v, "qk", "v")
    _check_chunk_len(chunk_len)
    bsz, heads, length, _ = qk.shape
    n_total = lsh.total_buckets(n_buckets)
    if buckets is None:
        if key is None:
            raise ValueError("lsh_attention needs `key` (PRNG key for the rotations) or `buckets`.")
        buckets = lsh.hash_vectors(
            qk, key=key, n_buckets=n_buckets, n_hashes=n_hashes, per_example=per_example_rotations
        )
    elif buckets.shape != (bsz, heads, n_hashes, length):
        raise ValueError(
            f"buckets has shape {buckets.shape}; expected [batch, heads, n_hashes, length] = "
            f"{(bsz, heads, n_hashes, length)}."
        )
    buckets = jax.lax.stop_gradient(buckets.astype(jnp.int32))
    valid = _key_validity(mask, bsz, length)

    # Pad the length to a multiple of the chunk. Padding (these positions and
    # the mask's) is never a key and sorts after every real token of every
    # round, so the real tokens fill the first r * (real count) sorted slots
    # and the windows wrap around the chunks that hold them: the result at a
    # real position is the one its sequence gets without any padding
    # (docs/algorithm.md, "Padding").
    padded = lsh.round_up(length, chunk_len)
    qk_p = lsh.pad_length(qk, padded, axis=2)
    v_p = lsh.pad_length(v, padded, axis=2)
    buckets_p = lsh.pad_length(buckets, padded, axis=3)
    valid_p = lsh.pad_length(valid, padded, axis=1, value=False)

    padding = mask is not None or padded != length
    perm, inv = lsh.sort_by_bucket(buckets_p, n_total, valid_p if padding else None)  # [b, h, n]
    n_chunks = n_hashes * padded // chunk_len
    if mask is None:  # the chunks of real tokens: a static count
        wrap = -(-n_hashes * length // chunk_len)
        before, after = lsh.window_sizes(wrap, n_chunks_before, n_chunks_after)
    else:  # per example, int32 [b]; `_attend` narrows each example's window
        real = jnp.sum(valid.astype(jnp.int32), axis=1)
        wrap = jnp.maximum(-(-n_hashes * real // chunk_len), 1)
        before, after = lsh.window_sizes(n_chunks, n_chunks_before, n_chunks_after)

    def sort(x):  # [b, h, l, ...] -> the r rounds sorted and chunked, [b, h, u, c, ...]
        return lsh.chunk(lsh.sort_rounds(x, perm, inv, n_hashes), chunk_len)

    s_pos = lsh.chunk(perm % padded, chunk_len)  # [b, h, u, c]
    s_valid = jnp.take_along_axis(
        jnp.broadcast_to(valid_p[:, None], (bsz, heads, padded)), perm % padded, axis=2
    )
    bias = None
    if dedup:
        k_pos = lsh.look_around(s_pos, before, after, wrap)
        counts = _duplicate_counts(inv, s_pos, k_pos, n_hashes, chunk_len, before, after, wrap)
        bias = -jnp.log(counts)

    s_out, s_lse = _attend(
        sort(qk_p),
        None,  # keys: the normalised queries (docs/algorithm.md §1.6)
        sort(v_p),
        s_pos,
        s_pos,
        lsh.chunk(s_valid, chunk_len),
        before=before,
        after=after,
        wrap=wrap,
        causal=causal,
        self_penalty=True,
        bias=bias,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
        impl=impl,
    )
    # Undo the sort: another gather, with the inverse permutation.
    n = n_hashes * padded
    out = lsh.permute(s_out.reshape(bsz, heads, n, -1), inv, perm)
    lse = lsh.permute(s_lse.reshape(bsz, heads, n), inv, perm)
    out = out.reshape(bsz, heads, n_hashes, padded, -1)  # [b, h, r, l, e]
    lse = lse.reshape(bsz, heads, n_hashes, padded)  # [b, h, r, l]
    # Combine rounds with weights softmax_r(lse_r) (paper eq. 14).
    weights = jax.nn.softmax(lse, axis=2)[..., None]
    out = jnp.sum(out.astype(jnp.float32) * weights, axis=2)
    return out[:, :, :length].astype(v.dtype), buckets


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    chunk_len: int,
    causal: bool = True,
    n_chunks_before: int = 1,
    n_chunks_after: int = 0,
    mask: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """Chunked local attention in the original order (docs/algorithm.md §2).

    Each chunk of c queries attends to its own chunk and `n_chunks_before` /
    `n_chunks_after` neighbours, logits q.k / sqrt(d). Unlike LSH attention the
    window does not wrap around: the first chunk has no previous chunk.

    q, k: [b, h, l, d]; v: [b, h, l, e]; mask: optional bool [b, l] (True =
    real token). Returns [b, h, l, e] in v's dtype. Any l works (padded to a
    multiple of c internally). `impl` as in `lsh_attention`.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        lsh._check_rank(x, 4, name)
    _check_same_prefix(q, k, "q", "k")
    _check_same_prefix(q, v, "q", "v")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape} and {k.shape}.")
    _check_chunk_len(chunk_len)
    bsz, _, length, d = q.shape
    valid = _key_validity(mask, bsz, length)
    padded = lsh.round_up(length, chunk_len)
    n_chunks = padded // chunk_len
    # Without wrapping a window cannot repeat a chunk: only cap it at the sequence.
    lsh.window_sizes(n_chunks, n_chunks_before, n_chunks_after)  # checks the counts
    before, after = min(n_chunks_before, n_chunks - 1), min(n_chunks_after, n_chunks - 1)

    def chunks(x):  # [b, h, l, ...] -> [b, h, u, c, ...]
        return lsh.chunk(lsh.pad_length(x, padded, axis=2), chunk_len)

    pos = lsh.chunk(jnp.arange(padded, dtype=jnp.int32)[None, None], chunk_len)  # [1, 1, u, c]
    scale = jnp.asarray(d**-0.5, q.dtype)
    out, _ = _attend(
        chunks(q * scale),
        chunks(k),
        chunks(v),
        pos,
        pos,
        chunks(lsh.pad_length(valid, padded, axis=1, value=False)[:, None]),
        before=before,
        after=after,
        wrap=None,  # the first chunk has no previous chunk
        causal=causal,
        self_penalty=False,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
        impl=impl,
    )
    b, h = out.shape[:2]
    return out.reshape(b, h, padded, -1)[:, :, :length]


def full_attention(
    q: jax.Array,
    k: jax.Array | None,
    v: jax.Array,
    *,
    causal: bool,
    mask: jax.Array | None = None,
    shared_qk: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Ordinary O(l^2) attention, and its shared-QK variant (docs/algorithm.md §2).

    Standard: logits q.k / sqrt(d). Shared-QK (`shared_qk=True`, pass k=None):
    keys are `normalize_keys(q)`, queries unscaled, and a token attends to
    itself only when nothing else is admissible (the "Full" row of the paper's
    Table 2). q, k: [b, h, l, d]; v: [b, h, l, e] -> [b, h, l, e].
    """
    lsh._check_rank(q, 4, "q")
    lsh._check_rank(v, 4, "v")
    _check_same_prefix(q, v, "q", "v")
    if shared_qk:
        if k is not None:
            raise ValueError("full_attention(shared_qk=True) derives keys from q: pass k=None.")
    else:
        if k is None:
            raise ValueError("full_attention needs k (or shared_qk=True).")
        lsh._check_rank(k, 4, "k")
        _check_same_prefix(q, k, "q", "k")
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"q and k must have the same head dim, got {q.shape} and {k.shape}.")
        q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    bsz, _, length, _ = q.shape
    valid = _key_validity(mask, bsz, length)
    pos = jnp.arange(length, dtype=jnp.int32)[None, None, None]  # [1, 1, 1, l]
    out, _ = _attend(
        q[:, :, None],
        None if k is None else k[:, :, None],
        v[:, :, None],
        pos,
        pos,
        valid[:, None, None],
        before=0,
        after=0,
        wrap=None,
        causal=causal,
        self_penalty=shared_qk,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
    )
    return out[:, :, 0]


# `_attend` runs the chunks in blocks of at most this many elements of
# [b, h, chunks, c, w] logits (16 MiB of float32 per block), once all the
# logits would fill at least 4 blocks: below that, the blocks' stacked copies
# of q, k and v cost more than the logits they save.
BLOCK_ELEMENTS = 2**22


def _attend(
    q,
    k,
    v,
    q_pos,
    k_pos,
    k_valid,
    *,
    before,
    after,
    wrap,
    causal,
    self_penalty,
    bias=None,
    dropout_rate=0.0,
    dropout_key=None,
    impl="xla",
):
    """Each chunk of queries against the window of chunks around it.

    q: [b, h, u, c, d]; k: [b, h, u, c, d], or None for shared-QK keys (the
    normalised queries, docs/algorithm.md §1.6); v: [b, h, u, c, e];
    q_pos, k_pos, k_valid: [.., u, c] (broadcastable over b, h); bias:
    optional float32 [b, h, u, c, w]. The window of chunk t is chunks
    t - before, ..., t + after, in that order (w = (before + 1 + after) * c).
    `wrap` None: keys outside [0, u) are masked (local attention). `wrap` an
    int W: the chunk indices wrap around the first W chunks (LSH's sorted
    order, whose real tokens fill the first W chunks). `wrap` an int32 [b]:
    W per example, and each example's window is narrowed with
    `lsh.window_sizes(W)` so it never holds a chunk twice. Returns out
    [b, h, u, c, e] and the float32 log-sum-exp [b, h, u, c].

    The chunks run in blocks, under `jax.checkpoint` when there are several,
    and each block gathers its own windows from the per-chunk keys and values:
    only one block's windows, logits, probabilities and masks are alive at a
    time, forward and backward, and no [.., u, w, d] copy of all the windows
    is made. Block j draws its dropout mask with fold_in(dropout_key, j); a
    single block uses dropout_key itself.

    `impl` (see `kernels.window.resolve_impl`) may hand the whole computation to the fused
    kernel (reformer_jax/kernels/window.py), which computes the same masks and
    softmax; its dropout draws different bits (a hash of positions).
    """
    b, h, u, c = q.shape[:4]
    impl = window.resolve_impl(impl, c, q.shape[-1], v.shape[-1])
    if impl != "xla":
        windows, window_ok = window.window_table(u, before, after, wrap)
        return window.chunk_attention(
            q,
            normalize_keys(q) if k is None else k,
            v,
            q_pos,
            k_pos,
            k_valid,
            windows,
            window_ok,
            causal=causal,
            self_penalty=self_penalty,
            bias=bias,
            dropout_rate=dropout_rate,
            dropout_key=dropout_key,
            interpret=impl == "interpret",
        )
    n_win = before + 1 + after
    per_chunk = b * h * c * n_win * c
    blk = max([n for n in range(1, u + 1) if u % n == 0 and n * per_chunk <= BLOCK_ELEMENTS] or [1])
    kw = dict(causal=causal, self_penalty=self_penalty, dropout_rate=dropout_rate)
    shared = k is None
    per_example = wrap is not None and jnp.ndim(wrap) == 1
    if per_example:
        # Window offsets -before..after each example keeps: [b, w].
        narrow_before = jnp.minimum(before, wrap - 1)
        narrow_after = jnp.minimum(after, wrap - 1 - narrow_before)
        offsets = jnp.arange(-before, after + 1, dtype=jnp.int32)
        keep = (offsets >= -narrow_before[:, None]) & (offsets <= narrow_after[:, None])
        window_mask = jnp.repeat(keep, c, axis=1)

    def block(i, q_i, bias_i, key_i, size):
        # Chunk indices i * size - before, ..., (i + 1) * size + after - 1: the
        # windows of this block's chunks are consecutive runs of n_win of them.
        raw = i * size + jnp.arange(-before, size + after, dtype=jnp.int32)

        def runs(ext, axis):  # n_win consecutive chunks along `axis`, concatenated
            parts = [jax.lax.slice_in_dim(ext, j, j + size, axis=axis) for j in range(n_win)]
            return jnp.concatenate(parts, axis=axis + 1) if n_win > 1 else ext

        if per_example:  # [b, m] chunk indices; every array here is [b, h, u, ...]
            idx = raw[None] % wrap[:, None]
            take = lambda x: jnp.take_along_axis(
                x, idx.reshape(b, 1, -1, *(1,) * (x.ndim - 3)), axis=2
            )
        else:
            idx = raw % (u if wrap is None else wrap)
            take = lambda x: jnp.take(x, idx, axis=2)
        # [B, H, u, c, ...] -> [B, H, size, w, ...]
        windows = lambda x: runs(take(x), 2)
        k_valid_i = windows(k_valid)
        if wrap is None:
            in_range = jnp.broadcast_to(((raw >= 0) & (raw < u))[:, None], (raw.shape[0], c))
            k_valid_i = k_valid_i & runs(in_range, 0)
        elif per_example:
            k_valid_i = k_valid_i & window_mask[:, None, None, :]
        win_k = normalize_keys(windows(q)) if shared else windows(k)
        return _attend_block(
            q_i,
            win_k,
            windows(v),
            jax.lax.dynamic_slice_in_dim(q_pos, i * size, size, axis=2),
            windows(k_pos),
            k_valid_i,
            bias=bias_i,
            dropout_key=key_i,
            **kw,
        )

    if blk == u or u * per_chunk < 4 * BLOCK_ELEMENTS:
        return block(0, q, bias, dropout_key, u)
    n_blocks = u // blk

    def split(x):  # [B, H, u, ...] -> [n_blocks, B, H, blk, ...] (B, H may be 1)
        if x is None:
            return None
        return jnp.moveaxis(x.reshape(*x.shape[:2], n_blocks, blk, *x.shape[3:]), 2, 0)

    def body(args):
        i, q_i, bias_i = args
        key_i = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
        return block(i, q_i, bias_i, key_i, blk)

    out, lse = jax.lax.map(jax.checkpoint(body), (jnp.arange(n_blocks), split(q), split(bias)))
    merge = lambda x: jnp.moveaxis(x, 0, 2).reshape(b, h, u, *x.shape[4:])
    return merge(out), merge(lse)


def _attend_block(
    q,
    k,
    v,
    q_pos,
    k_pos,
    k_valid,
    *,
    causal,
    self_penalty,
    bias=None,
    dropout_rate=0.0,
    dropout_key=None,
):
    """One window of keys per chunk of queries.

    q: [b, h, u, c, d], k: [b, h, u, w, d], v: [b, h, u, w, e]; q_pos [.., u, c],
    k_pos and k_valid [.., u, w] (broadcastable over b, h); bias: optional
    float32 [b, h, u, c, w] added to the logits. Returns out [b, h, u, c, e]
    and the float32 log-sum-exp [b, h, u, c] of the masked logits.
    """
    logits = jnp.einsum("bhucd,bhuwd->bhucw", q, k, preferred_element_type=jnp.float32)
    qp, kp = q_pos[..., :, None], k_pos[..., None, :]
    admissible = k_valid[..., None, :]
    if causal:
        admissible = admissible & (kp <= qp)
    logits = logits + jnp.where(admissible, 0.0, -MASK_PENALTY)
    if self_penalty:
        logits = logits - jnp.where(kp == qp, SELF_PENALTY, 0.0)
    if bias is not None:
        logits = logits + bias
    # Normalise by the explicit sum rather than exp(logits - lse): when only
    # self-penalised keys are admissible the logits sit near -1e5, where a
    # float32 lse is off by up to 4e-3 and the probabilities would not sum to 1.
    peak = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    unnorm = jnp.exp(logits - peak)
    total = jnp.sum(unnorm, axis=-1, keepdims=True)
    probs = unnorm / total
    lse = (peak + jnp.log(total))[..., 0]
    if dropout_rate > 0.0:
        if dropout_key is None:
            raise ValueError("dropout_rate > 0 needs a dropout_key.")
        probs = apply_dropout(probs, dropout_rate, dropout_key)
    out = jnp.einsum(
        "bhucw,bhuwe->bhuce", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.astype(v.dtype), lse


def _duplicate_counts(inv, s_pos, k_pos, n_hashes, chunk_len, before, after, wrap):
    """N_ij of the paper's App. A for every (query slot, window slot) pair.

    N_ij = number of (round r of query copy, round r' of key copy) such that the
    chunk holding key j's copy r' lies in the window of the chunk holding query
    i's copy r, the windows wrapping around the first `wrap` chunks (an int,
    or int32 [b] narrowed per example as in `_attend`). Returns float32
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


def _key_validity(mask, bsz, length):
    if mask is None:
        return jnp.ones((bsz, length), bool)
    if mask.shape != (bsz, length):
        raise ValueError(
            f"mask must be a bool [batch, length] = {(bsz, length)} (True = real token), "
            f"got shape {mask.shape}."
        )
    return mask.astype(bool)


def _check_same_prefix(a, b, name_a, name_b):
    if a.shape[:3] != b.shape[:3]:
        raise ValueError(
            f"{name_a} and {name_b} must agree on [batch, heads, length]: "
            f"got {a.shape} and {b.shape}."
        )


def _check_chunk_len(chunk_len):
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len <= 0:
        raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}.")
