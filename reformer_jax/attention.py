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

import jax
import jax.numpy as jnp

from reformer_jax import lsh
from reformer_jax.dropout import apply_dropout
from reformer_jax.kernels import window

# Additive logit penalties (docs/algorithm.md §1.7). Finite on purpose: a query whose only
# admissible key is itself still attends to itself instead of producing NaN.
MASK_PENALTY = 1e9
SELF_PENALTY = 1e5


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
    window_rule: str = "reformer",
    hf_length: jax.Array | int | None = None,
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
      window_rule: "reformer" (the windows above) or "hf", HF transformers'
        (docs/algorithm.md, "Window rules"): each sequence runs at length
        `hf_length` (int32 [b] or an int; default: up to its last real token,
        rounded up to a multiple of c), whose padding sorts into an extra
        bucket of every round; the windows wrap around all r * hf_length / c
        chunks and hold a chunk as often as HF's rolled copies do; a
        sequence of hf_length <= c is full shared-QK attention. No dedup.

    Returns:
      (out [b, h, l, e] in v's dtype, buckets int32 [b, h, r, l]).
    """
    hf = _check_window_rule(window_rule) == "hf"
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

    if hf:
        if dedup:
            raise ValueError("window_rule='hf' has no dedup (HF transformers counts every copy).")
        seq_len = lsh.hf_default_length(mask, length, chunk_len) if hf_length is None else hf_length
        full = _hf_standard(qk, v, mask, causal, chunk_len, seq_len, dropout_rate, dropout_key)
        if length <= chunk_len:  # every sequence fits one chunk: HF's full attention
            return full, buckets

    padding = mask is not None or padded != length
    perm, inv = lsh.sort_by_bucket(
        buckets_p,
        n_total,
        valid_p if padding or hf else None,
        seq_len if hf else None,
    )  # [b, h, n]
    n_chunks = n_hashes * padded // chunk_len
    if hf:  # HF's chunks: those of r * seq_len sorted slots, pads included
        wrap = lsh.chunk_count(n_hashes * seq_len, chunk_len)
        before, after = n_chunks_before, n_chunks_after
    elif mask is None:  # the chunks of real tokens: a static count
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
        counts = lsh.duplicate_counts(inv, s_pos, k_pos, n_hashes, chunk_len, before, after, wrap)
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
        window_rule=window_rule,
    )
    # Undo the sort: another gather, with the inverse permutation.
    n = n_hashes * padded
    out = lsh.permute(s_out.reshape(bsz, heads, n, -1), inv, perm)
    lse = lsh.permute(s_lse.reshape(bsz, heads, n), inv, perm)
    out = out.reshape(bsz, heads, n_hashes, padded, -1)  # [b, h, r, l, e]
    lse = lse.reshape(bsz, heads, n_hashes, padded)  # [b, h, r, l]
    # Combine rounds with weights softmax_r(lse_r) (paper eq. 14).
    weights = jax.nn.softmax(lse, axis=2)[..., None]
    out = jnp.sum(out.astype(jnp.float32) * weights, axis=2)[:, :, :length].astype(v.dtype)
    if hf and jnp.ndim(seq_len):  # the sequences that fit one chunk take HF's full attention
        out = jnp.where((seq_len <= chunk_len)[:, None, None, None], full, out)
    return out, buckets


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
    window_rule: str = "reformer",
    hf_length: jax.Array | int | None = None,
) -> jax.Array:
    """Chunked local attention in the original order (docs/algorithm.md §2).

    Each chunk of c queries attends to its own chunk and `n_chunks_before` /
    `n_chunks_after` neighbours, logits q.k / sqrt(d). Unlike LSH attention the
    window does not wrap around: the first chunk has no previous chunk.

    q, k: [b, h, l, d]; v: [b, h, l, e]; mask: optional bool [b, l] (True =
    real token). Returns [b, h, l, e] in v's dtype. Any l works (padded to a
    multiple of c internally). `impl` as in `lsh_attention`.

    window_rule="hf": HF transformers' windows (docs/algorithm.md, "Window
    rules"): they wrap around the hf_length / c chunks of each sequence
    (`hf_length` as in `lsh_attention`), so the first chunk sees the last, and
    hold a chunk as often as HF's rolled copies do.
    """
    hf = _check_window_rule(window_rule) == "hf"
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
    wrap = None  # the first chunk has no previous chunk
    if hf:  # a sequence of one chunk sees only that chunk (its copies): HF's full attention
        seq_len = lsh.hf_default_length(mask, length, chunk_len) if hf_length is None else hf_length
        before, after = n_chunks_before, n_chunks_after
        wrap = lsh.chunk_count(seq_len, chunk_len)

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
        wrap=wrap,
        causal=causal,
        self_penalty=False,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
        impl=impl,
        window_rule=window_rule,
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
    window_rule="reformer",
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
    `lsh.window_sizes(W)` so it never holds a chunk twice. `window_rule`
    "hf" (wrap an int or int32 [b]): HF transformers' windows,
    `lsh.hf_window_table`, which may hold a chunk more than once and are
    never narrowed. Returns out [b, h, u, c, e] and the float32 log-sum-exp
    [b, h, u, c].

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
    hf_table = None if window_rule == "reformer" else lsh.hf_window_table(u, before, after, wrap)
    if impl != "xla":
        if hf_table is None:
            windows, window_ok = window.window_table(u, before, after, wrap)
        else:
            windows, window_ok = hf_table, jnp.ones(hf_table.shape, bool)
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
    per_example = wrap is not None and jnp.ndim(wrap) == 1 and hf_table is None
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

        if hf_table is not None:  # HF's windows: the table's chunks, in window order
            idx = jax.lax.dynamic_slice_in_dim(hf_table, i * size, size, axis=1)

            def windows(x):  # [B, H, u, c, ...] -> [B, H, size, w, ...]
                if idx.shape[0] == 1:
                    out = jnp.take(x, idx.reshape(-1), axis=2)
                else:
                    x = jnp.broadcast_to(x, (b, *x.shape[1:]))
                    flat = idx.reshape(b, 1, -1, *(1,) * (x.ndim - 3))
                    out = jnp.take_along_axis(x, flat, axis=2)
                return out.reshape(*out.shape[:2], size, n_win * c, *x.shape[4:])

            k_valid_i = windows(k_valid)
        else:
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


def _check_window_rule(rule):
    if rule not in lsh.WINDOW_RULES:
        raise ValueError(f"window_rule={rule!r}; use one of {lsh.WINDOW_RULES}.")
    return rule


def _hf_standard(qk, v, mask, causal, chunk_len, seq_len, dropout_rate, dropout_key):
    """HF's LSH attention of the sequences of seq_len <= chunk_len: full shared-QK attention.

    Their real tokens lie in the first min(c, l) positions, so it runs over
    those: out [b, h, l, e] (zeros past them), or None when no sequence fits.
    """
    length = qk.shape[2]
    if jnp.ndim(seq_len) == 0 and seq_len > chunk_len:
        return None
    m = min(chunk_len, length)
    out = full_attention(
        qk[:, :, :m],
        None,
        v[:, :, :m],
        causal=causal,
        mask=None if mask is None else mask[:, :m],
        shared_qk=True,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
    )
    return lsh.pad_length(out, length, axis=2)
