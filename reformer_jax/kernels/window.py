"""Fused chunk attention: a Pallas kernel for the window attention of LSH and local layers.

One program per (batch x head, query chunk) computes the chunk's attention
over its window of key chunks in one pass: logits, the masks (built inside
the kernel from int32 original positions), an online float32 softmax, the
dropout of the probabilities and the weighted sum of values. Nothing of
size [chunk, window] reaches HBM; the output and the float32 log-sum-exp
come back, so LSH's hash rounds combine outside the kernel as in the jnp
path (paper eq. 14). The backward pass is two kernels, as FlashAttention-2's:
both recompute each window's probabilities (normalised by the saved row
maximum and sum rather than the log-sum-exp, see `_gradients`); one writes
dq, the other, per window slot, the dk and dv a query chunk sends to that
key chunk, which an XLA scatter-add sums into dk and dv. No program adds
into memory another program (or itself) writes.

Shapes use the package's einsum legend: b batch, h heads, u chunks, c chunk
length, d key dim, e value dim, w window length (n_win * c); `B` is b * h.

    chunk_attention(q, k, v, q_pos, k_pos, k_valid, windows, window_ok, *,
                    causal, self_penalty, bias=None, dropout_rate=0.0,
                    dropout_key=None, interpret=False)
        -> out [b, h, u, c, e], lse float32 [b, h, u, c]
    supports(c, d, e) -> None or the reason the GPU kernel cannot take these sizes
    window_table(u, before, after, wrap) -> windows, window_ok: the windows `_attend` gathers
    block_sizes(c, d) -> the query and key blocks a program walks a chunk in
    dropout_keep(seed0, seed1, rows, cols, threshold) -> bool: the kernel's dropout mask

It computes exactly what reformer_jax.attention._attend_block does on each
window (same additive masks, same softmax), so the jnp path is its reference;
only the dropout bits differ (the kernel hashes positions, see
`dropout_keep`). On the GPU the kernel lowers through Pallas's Triton
backend; `interpret=True` runs it anywhere (the CPU tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

# The jnp path's additive penalties (docs/algorithm.md §1.7), repeated here so
# this module does not import reformer_jax.attention (which dispatches to it).
MASK_PENALTY = 1e9
SELF_PENALTY = 1e5


def supports(c: int, d: int, e: int) -> str | None:
    """None when the GPU kernel takes chunk length c and head dims d, e; else why not.

    Triton's blocks are powers of two, and its matrix units need 16 rows.
    """
    for name, n in (("chunk length", c), ("key dim", d), ("value dim", e)):
        if n < 16 or n & (n - 1):
            return f"its {name} is {n}; the kernel needs a power of two >= 16"
    return None


# ----------------------------------------------------------------------------- dropout bits


def _mix(x):
    """murmur3's 32-bit finaliser: a bijection of uint32 whose output bits all depend on x."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout_keep(seed0, seed1, rows, cols, threshold: int):
    """True where the kernel keeps a probability: a pure function of (seed, row, column).

    seed0, seed1: uint32 scalars (the seed); rows: uint32 global query slot
    ids (B * u * c of them); cols: uint32 window slots (0..w-1),
    broadcastable against rows. An element
    is kept when the top 16 bits of its hash are >= threshold, so the rate is
    threshold / 2^16 as in `attention.apply_dropout`. A hash of positions,
    not a stored mask: the backward kernel (and the reversible stack's replay
    of a layer) draws the same bits again.
    """
    h = _mix(_mix(rows ^ seed0) ^ (cols + seed1))
    return (h >> 16) >= jnp.uint32(threshold)


def _dropout_scale(threshold: int) -> float:
    return 2.0**16 / (2.0**16 - threshold)


# ----------------------------------------------------------------------------- the kernels


def _dot(a, b):
    """a @ b with float32 accumulation (Triton's tensor-core dot)."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _logits(q, k, q_pos, k_pos, k_ok, *, causal, self_penalty):
    """[m, d] x [n, d] -> float32 [m, n] masked logits, as `attention._attend_block`."""
    s = _dot(q, k.T)
    admissible = k_ok[None, :]
    if causal:
        admissible = admissible & (k_pos[None, :] <= q_pos[:, None])
    s = s + jnp.where(admissible, 0.0, -MASK_PENALTY)
    if self_penalty:
        s = s - jnp.where(k_pos[None, :] == q_pos[:, None], SELF_PENALTY, 0.0)
    return s


def _keep(seed_ref, rows, cols, threshold):
    """The dropout mask of query slots `rows` [m] against window slots `cols` [n]: [m, n]."""
    seed0, seed1 = seed_ref[0].astype(jnp.uint32), seed_ref[1].astype(jnp.uint32)
    rows, cols = rows.astype(jnp.uint32)[:, None], cols.astype(jnp.uint32)[None, :]
    return dropout_keep(seed0, seed1, rows, cols, threshold)


class _Window:
    """Key block kb of window slot j of query chunk t: where its keys are and how they mask.

    A chunk's window is n_win key chunks of c keys; the kernels walk it in
    blocks of `block_k` keys (step = j * (c // block_k) + kb).
    """

    def __init__(self, refs, t, step, *, n_win, c, block_k):
        windows_ref, ok_ref, k_pos_ref, k_valid_ref = refs
        per_chunk = c // block_k
        # lax's truncating div/rem (step >= 0): the Triton lowering of jnp's
        # floor-mod mistypes its sign fix-up.
        n = jnp.int32(per_chunk)
        j, kb = jax.lax.div(step, n), jax.lax.rem(step, n)
        chunk = windows_ref[t * n_win + j]
        self.rows = pl.ds(pl.multiple_of(chunk * c + kb * block_k, block_k), block_k)
        self.cols = pl.ds(pl.multiple_of(j * c + kb * block_k, block_k), block_k)  # in [0, w)
        self.pos = k_pos_ref[self.rows]
        self.ok = (k_valid_ref[self.rows] != 0) & (ok_ref[t * n_win + j] != 0)
        self.col_ids = j * c + kb * block_k + jnp.arange(block_k, dtype=jnp.int32)


def _forward_kernel(
    q_ref,
    k_ref,
    v_ref,
    q_pos_ref,
    k_pos_ref,
    k_valid_ref,
    windows_ref,
    ok_ref,
    bias_ref,
    seed_ref,
    out_ref,
    peak_ref,
    total_ref,
    *,
    n_win,
    c,
    block_k,
    causal,
    self_penalty,
    threshold,
):
    """Grid (B, u, c // block_q): block_q queries of chunk t against its whole window."""
    bh, t, qb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_q = q_ref.shape[0]
    u = windows_ref.shape[0] // n_win
    q = q_ref[...]
    q_pos = q_pos_ref[...]
    row_ids = (bh * u + t) * c + qb * block_q + jnp.arange(block_q, dtype=jnp.int32)
    refs = (windows_ref, ok_ref, k_pos_ref, k_valid_ref)

    def step(i, carry):  # one block of keys: FlashAttention's online softmax
        peak, total, acc = carry
        win = _Window(refs, t, i, n_win=n_win, c=c, block_k=block_k)
        s = _logits(
            q, k_ref[win.rows, :], q_pos, win.pos, win.ok, causal=causal, self_penalty=self_penalty
        )
        if bias_ref is not None:
            s = s + bias_ref[:, win.cols]
        new_peak = jnp.maximum(peak, jnp.max(s, axis=1))
        rescale = jnp.exp(peak - new_peak)
        p = jnp.exp(s - new_peak[:, None])
        total = total * rescale + jnp.sum(p, axis=1)
        if threshold:
            keep = _keep(seed_ref, row_ids, win.col_ids, threshold)
            p = jnp.where(keep, p * _dropout_scale(threshold), 0.0)
        v = v_ref[win.rows, :]
        acc = acc * rescale[:, None] + _dot(p.astype(v.dtype), v)
        return new_peak, total, acc

    init = (
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
        jnp.zeros((block_q, v_ref.shape[-1]), jnp.float32),
    )
    peak, total, acc = jax.lax.fori_loop(0, n_win * (c // block_k), step, init)
    out_ref[...] = (acc / total[:, None]).astype(out_ref.dtype)
    peak_ref[...] = peak
    total_ref[...] = total


def _gradients(q, dout, q_pos, peak, total, delta, k, v, win, bias, keep, *, causal, self_penalty):
    """One [m queries, n keys] tile of the backward pass: (dropped probabilities, d logits).

    The forward's probabilities are recomputed and normalised by the saved row
    maximum and sum, as the jnp path normalises: exp(s - lse) would be off
    where only self-penalised or masked keys are admissible (logits near -1e5
    or -1e9, where a float32 lse has lost its last digits). `keep`: None, or
    (mask, scale) of the tile's dropout.
    """
    s = _logits(q, k, q_pos, win.pos, win.ok, causal=causal, self_penalty=self_penalty)
    if bias is not None:
        s = s + bias
    p = jnp.exp(s - peak[:, None]) / total[:, None]
    dp = _dot(dout, v.T)  # d(dropped probabilities)
    p_drop = p
    if keep is not None:
        mask, scale = keep
        p_drop = jnp.where(mask, p * scale, 0.0)
        dp = jnp.where(mask, dp * scale, 0.0)
    # Softmax's Jacobian, with delta = rowsum(dout * out) - d(lse).
    return p_drop, p * (dp - delta[:, None])


def _dq_kernel(
    q_ref,
    k_ref,
    v_ref,
    q_pos_ref,
    k_pos_ref,
    k_valid_ref,
    windows_ref,
    ok_ref,
    bias_ref,
    seed_ref,
    peak_ref,
    total_ref,
    delta_ref,
    dout_ref,
    dq_ref,
    *,
    n_win,
    c,
    block_k,
    causal,
    self_penalty,
    threshold,
):
    """Grid (B, u, c // block_q): dq of block_q queries of chunk t, over its window."""
    bh, t, qb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_q = q_ref.shape[0]
    u = windows_ref.shape[0] // n_win
    q, dout, q_pos = q_ref[...], dout_ref[...], q_pos_ref[...]
    peak, total, delta = peak_ref[...], total_ref[...], delta_ref[...]
    row_ids = (bh * u + t) * c + qb * block_q + jnp.arange(block_q, dtype=jnp.int32)
    refs = (windows_ref, ok_ref, k_pos_ref, k_valid_ref)

    def step(i, dq):
        win = _Window(refs, t, i, n_win=n_win, c=c, block_k=block_k)
        k = k_ref[win.rows, :]
        keep = None
        if threshold:
            keep = (_keep(seed_ref, row_ids, win.col_ids, threshold), _dropout_scale(threshold))
        bias = None if bias_ref is None else bias_ref[:, win.cols]
        _, ds = _gradients(
            q,
            dout,
            q_pos,
            peak,
            total,
            delta,
            k,
            v_ref[win.rows, :],
            win,
            bias,
            keep,
            causal=causal,
            self_penalty=self_penalty,
        )
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, n_win * (c // block_k), step, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(
    q_ref,
    k_ref,
    v_ref,
    q_pos_ref,
    k_pos_ref,
    k_valid_ref,
    windows_ref,
    ok_ref,
    bias_ref,
    seed_ref,
    peak_ref,
    total_ref,
    delta_ref,
    dout_ref,
    dk_ref,
    dv_ref,
    *,
    n_win,
    c,
    block_q,
    causal,
    self_penalty,
    threshold,
):
    """Grid (B, u, n_win * c // block_k): what chunk t's queries send to one block of
    its window's keys (dk and dv of that block, summed over the chunk's query blocks).
    q, dout and the row statistics are whole rows of bh; bias is chunk t's [c, w]."""
    bh, t, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_k = dk_ref.shape[0]
    u = windows_ref.shape[0] // n_win
    refs = (windows_ref, ok_ref, k_pos_ref, k_valid_ref)
    win = _Window(refs, t, i, n_win=n_win, c=c, block_k=block_k)
    k, v = k_ref[win.rows, :], v_ref[win.rows, :]

    def query_block(qb, carry):
        dk, dv = carry
        local = pl.ds(pl.multiple_of(qb * block_q, block_q), block_q)  # rows of the chunk
        rows = pl.ds(pl.multiple_of(t * c + qb * block_q, block_q), block_q)  # rows of bh
        q, dout = q_ref[rows, :], dout_ref[rows, :]
        keep = None
        if threshold:
            row_ids = (bh * u + t) * c + qb * block_q + jnp.arange(block_q, dtype=jnp.int32)
            keep = (_keep(seed_ref, row_ids, win.col_ids, threshold), _dropout_scale(threshold))
        bias = None if bias_ref is None else bias_ref[local, win.cols]
        p_drop, ds = _gradients(
            q,
            dout,
            q_pos_ref[rows],
            peak_ref[rows],
            total_ref[rows],
            delta_ref[rows],
            k,
            v,
            win,
            bias,
            keep,
            causal=causal,
            self_penalty=self_penalty,
        )
        dk = dk + _dot(ds.T.astype(q.dtype), q)
        dv = dv + _dot(p_drop.T.astype(dout.dtype), dout)
        return dk, dv

    init = (
        jnp.zeros((block_k, k_ref.shape[-1]), jnp.float32),
        jnp.zeros((block_k, v_ref.shape[-1]), jnp.float32),
    )
    dk, dv = jax.lax.fori_loop(0, c // block_q, query_block, init)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------- pallas_call


def block_sizes(c: int, d: int) -> tuple[int, int, int]:
    """(forward query block, key block, backward query block) for chunk c and head dim d.

    A whole 256-long chunk of 128-dim queries and its float32 accumulator would
    not fit one GPU program's registers; blocks of 64 (32 in the backward pass
    at d > 64, as JAX's own Pallas flash attention) do. Each divides c.
    """
    fwd = min(c, 128 if d <= 64 else 64)
    return fwd, min(c, 64), min(c, 64 if d <= 64 else 32)


def _shared_specs(B, u, c, d, e, n_win):
    """BlockSpecs of k, v, positions, validity and the window tables: whole rows of bh."""
    row2 = lambda *g: (g[0], 0)
    row3 = lambda *g: (g[0], 0, 0)
    return [
        pl.BlockSpec((None, u * c, d), row3),  # k
        pl.BlockSpec((None, u * c, e), row3),  # v
    ], [
        pl.BlockSpec((None, u * c), row2),  # k_pos
        pl.BlockSpec((None, u * c), row2),  # k_valid
        pl.BlockSpec((None, u * n_win), row2),  # windows
        pl.BlockSpec((None, u * n_win), row2),  # window_ok
    ]


def _compiler_params(d):
    return pltriton.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _forward(args, static):
    q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed = args
    n_win, causal, self_penalty, threshold, interpret = static
    B, L, d = q.shape
    e = v.shape[-1]
    u = windows.shape[1] // n_win
    c = L // u
    block_q, block_k, _ = block_sizes(c, d)
    nq = c // block_q
    kernel = functools.partial(
        _forward_kernel,
        n_win=n_win,
        c=c,
        block_k=block_k,
        causal=causal,
        self_penalty=self_penalty,
        threshold=threshold,
    )
    kv, rest = _shared_specs(B, u, c, d, e, n_win)
    rows = lambda i, t, qb: (i, t * nq + qb)  # query block qb of chunk t
    rows3 = lambda i, t, qb: (i, t * nq + qb, 0)
    bias_spec = pl.BlockSpec((None, block_q, n_win * c), rows3) if bias is not None else None
    return pl.pallas_call(
        kernel,
        grid=(B, u, nq),
        in_specs=[pl.BlockSpec((None, block_q, d), rows3), *kv, pl.BlockSpec((None, block_q), rows)]
        + rest
        + [bias_spec, pl.BlockSpec((2,), lambda *g: (0,))],
        out_specs=[
            pl.BlockSpec((None, block_q, e), rows3),
            pl.BlockSpec((None, block_q), rows),
            pl.BlockSpec((None, block_q), rows),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((B, L, e), v.dtype),
            jax.ShapeDtypeStruct((B, L), jnp.float32),  # the row's peak logit
            jax.ShapeDtypeStruct((B, L), jnp.float32),  # sum of exp(logit - peak)
        ],
        compiler_params=_compiler_params(d),
        interpret=interpret,
        name="chunk_attention_fwd",
    )(q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed)


@functools.partial(jax.custom_vjp, nondiff_argnums=(10,))
def _fused(q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed, static):
    out, peak, total = _forward((q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed), static)
    return out, peak + jnp.log(total)


def _fused_fwd(q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed, static):
    args = (q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed)
    out, peak, total = _forward(args, static)
    return (out, peak + jnp.log(total)), (args, out, peak, total)


def _fused_bwd(static, residuals, cotangents):
    args, out, peak, total = residuals
    g_out, g_lse = cotangents
    q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed = args
    n_win, causal, self_penalty, threshold, interpret = static
    B, L, d = q.shape
    e = v.shape[-1]
    u = windows.shape[1] // n_win
    c = L // u
    _, block_k, block_q = block_sizes(c, d)
    # delta_i = sum_e dout * out - d(lse)_i: the softmax Jacobian's row term,
    # with the log-sum-exp's own cotangent (LSH weights rounds by it).
    delta = jnp.sum(g_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1) - g_lse
    static_kw = dict(
        n_win=n_win, c=c, causal=causal, self_penalty=self_penalty, threshold=threshold
    )
    kv, rest = _shared_specs(B, u, c, d, e, n_win)
    inputs = (q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed, peak, total, delta)
    inputs += (g_out.astype(v.dtype),)
    seed_spec = pl.BlockSpec((2,), lambda *g: (0,))

    # dq: programs of block_q queries, as the forward.
    nq = c // block_q
    rows = lambda i, t, qb: (i, t * nq + qb)
    rows3 = lambda i, t, qb: (i, t * nq + qb, 0)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, block_k=block_k, **static_kw),
        grid=(B, u, nq),
        in_specs=[pl.BlockSpec((None, block_q, d), rows3), *kv, pl.BlockSpec((None, block_q), rows)]
        + rest
        + [
            pl.BlockSpec((None, block_q, n_win * c), rows3) if bias is not None else None,
            seed_spec,
            pl.BlockSpec((None, block_q), rows),  # peak
            pl.BlockSpec((None, block_q), rows),  # total
            pl.BlockSpec((None, block_q), rows),  # delta
            pl.BlockSpec((None, block_q, e), rows3),  # dout
        ],
        out_specs=pl.BlockSpec((None, block_q, d), rows3),
        out_shape=jax.ShapeDtypeStruct((B, L, d), q.dtype),
        compiler_params=_compiler_params(d),
        interpret=interpret,
        name="chunk_attention_bwd_dq",
    )(*inputs)

    # dk, dv: a program per (chunk, block of its window's keys), over the chunk's
    # queries; what it writes is summed into each key chunk below.
    row2 = lambda i, t, j: (i, 0)
    row3 = lambda i, t, j: (i, 0, 0)
    part = lambda i, t, j: (i, t, j, 0)
    dk_parts, dv_parts = pl.pallas_call(
        functools.partial(_dkv_kernel, block_q=block_q, **static_kw),
        grid=(B, u, n_win * c // block_k),
        in_specs=[pl.BlockSpec((None, L, d), row3), *kv, pl.BlockSpec((None, L), row2)]
        + rest
        + [
            pl.BlockSpec((None, c, n_win * c), lambda i, t, j: (i, t, 0))
            if bias is not None
            else None,
            seed_spec,
            pl.BlockSpec((None, L), row2),  # peak
            pl.BlockSpec((None, L), row2),  # total
            pl.BlockSpec((None, L), row2),  # delta
            pl.BlockSpec((None, L, e), row3),  # dout
        ],
        out_specs=[
            pl.BlockSpec((None, None, block_k, d), part),
            pl.BlockSpec((None, None, block_k, e), part),
        ],
        out_shape=[
            # What chunk t's queries send to each key of its window, [B, u, w, .].
            jax.ShapeDtypeStruct((B, u, n_win * c, d), k.dtype),
            jax.ShapeDtypeStruct((B, u, n_win * c, e), v.dtype),
        ],
        compiler_params=_compiler_params(d),
        interpret=interpret,
        name="chunk_attention_bwd_dkv",
    )(*inputs)

    def gather_back(parts):  # [B, u, w, x] -> [B, u * c, x], summed per key chunk
        target = windows.reshape(B, u * n_win)  # the key chunk of each [c, x] slice
        summed = jax.vmap(
            lambda p, idx: (
                jnp.zeros((u, c, p.shape[-1]), jnp.float32)
                .at[idx]
                .add(p.reshape(u * n_win, c, p.shape[-1]).astype(jnp.float32))
            )
        )(parts, target)
        return summed.reshape(B, L, -1)

    dk = gather_back(dk_parts).astype(k.dtype)
    dv = gather_back(dv_parts).astype(v.dtype)
    none = (None,) * 7  # positions, masks, windows, bias (a constant) and the seed
    return (dq, dk, dv) + none


_fused.defvjp(_fused_fwd, _fused_bwd)


def chunk_attention(
    q,
    k,
    v,
    q_pos,
    k_pos,
    k_valid,
    windows,
    window_ok,
    *,
    causal: bool,
    self_penalty: bool,
    bias=None,
    dropout_rate: float = 0.0,
    dropout_key=None,
    interpret: bool = False,
):
    """Each chunk of queries against its window of key chunks, fused.

    q, k: [b, h, u, c, d] (k: the keys themselves, the normalised queries for
    shared-QK attention); v: [b, h, u, c, e]; q_pos, k_pos: int32 and
    k_valid: bool [.., u, c], broadcastable over b, h; windows: int32
    [b or 1, u, n_win], the key chunks of chunk t's window in order (any
    index in [0, u)); window_ok: bool, same shape, False for a slot whose keys
    are all masked (outside the sequence, or narrowed away); bias: optional
    float32 [b, h, u, c, n_win * c] added to the logits (the App. A dedup
    term; no gradient). Returns out [b, h, u, c, e] in v's dtype and the
    float32 log-sum-exp [b, h, u, c]; both are differentiable in q, k, v.
    """
    b, h, u, c, d = q.shape
    e = v.shape[-1]
    n_win = windows.shape[-1]
    B, L = b * h, u * c
    rows = lambda x, dtype: jnp.broadcast_to(x, (b, h, u, c)).reshape(B, L).astype(dtype)
    table = lambda x: jnp.broadcast_to(x[:, None], (b, h, u, n_win)).reshape(B, u * n_win)
    threshold = 0
    if dropout_rate > 0.0:
        if dropout_key is None:
            raise ValueError("dropout_rate > 0 needs a dropout_key.")
        threshold = min(round(dropout_rate * 2**16), 2**16 - 1)
        seed = jax.random.bits(dropout_key, (2,), jnp.uint32).astype(jnp.int32)
    else:
        seed = jnp.zeros((2,), jnp.int32)
    if bias is not None:
        bias = jax.lax.stop_gradient(jnp.broadcast_to(bias, (b, h, u, c, n_win * c)))
        bias = bias.reshape(B, L, n_win * c).astype(jnp.float32)
    static = (n_win, bool(causal), bool(self_penalty), threshold, bool(interpret))
    out, lse = _fused(
        q.reshape(B, L, d),
        k.reshape(B, L, d),
        v.reshape(B, L, e),
        rows(q_pos, jnp.int32),
        rows(k_pos, jnp.int32),
        rows(k_valid, jnp.int32),
        table(windows.astype(jnp.int32)),
        table(window_ok.astype(jnp.int32)),
        bias,
        seed,
        static,
    )
    return out.reshape(b, h, u, c, e), lse.reshape(b, h, u, c)


def window_table(u: int, before: int, after: int, wrap):
    """The key chunks of each query chunk's window, as `attention._attend` gathers them.

    wrap None: chunk t + j for j in -before..after, False outside [0, u) (local
    attention). wrap an int W: (t + j) mod W (LSH's sorted order, real tokens
    in the first W chunks). wrap an int32 [b]: per example, and slots beyond
    the narrowed window min(before, W - 1), min(after, W - 1 - before') are
    False, so no chunk is seen twice. Returns int32 windows and bool ok, both
    [b or 1, u, before + 1 + after].
    """
    offsets = jnp.arange(-before, after + 1, dtype=jnp.int32)
    raw = jnp.arange(u, dtype=jnp.int32)[:, None] + offsets[None, :]  # [u, n_win]
    if wrap is None:
        return (raw % u)[None], ((raw >= 0) & (raw < u))[None]
    if np.ndim(wrap) == 0:
        return (raw % wrap)[None], jnp.ones((1,) + raw.shape, bool)
    wrap = jnp.asarray(wrap, jnp.int32)[:, None, None]  # [b, 1, 1]
    narrow_before = jnp.minimum(before, wrap - 1)
    narrow_after = jnp.minimum(after, wrap - 1 - narrow_before)
    ok = (offsets >= -narrow_before) & (offsets <= narrow_after)  # [b, 1, n_win]
    return raw[None] % wrap, jnp.broadcast_to(ok, (wrap.shape[0],) + raw.shape)
