"""The Pallas programs of the fused window attention, one per grid cell.

reformer_jax/kernels/window.py launches them (`pl.pallas_call`) and wires
them into a custom VJP; this module holds what runs inside a program: the
masked logits of a tile, the online softmax (`forward_program`), the
backward pass's two programs (`dq_program`, `dkv_program`) and the
dropout hash. Shapes: a tile is [m queries, n keys] of one (batch x head)
row; c is the chunk length, w = n_win * c the window.

    forward_program, dq_program, dkv_program   the kernels' bodies (see window.py's specs)
    dropout_keep(seed0, seed1, rows, cols, threshold) -> bool: the kernel's dropout mask
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# The jnp path's additive penalties (docs/algorithm.md §1.7), repeated here so
# this package does not import reformer_jax.attention (which dispatches to it).
MASK_PENALTY = 1e9
SELF_PENALTY = 1e5


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


def forward_program(
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


def dq_program(
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


def dkv_program(
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
