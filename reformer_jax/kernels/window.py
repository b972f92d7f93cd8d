"""Fused chunk attention: a Pallas kernel for the window attention of LSH and local layers.

One program per (batch x head, query chunk, block of its queries) computes
their attention over the chunk's window of key chunks in one pass: logits,
the masks (built inside the kernel from int32 original positions), an
online float32 softmax, the dropout of the probabilities and the weighted
sum of values. Nothing of size [chunk, window] reaches HBM; the output and
the float32 log-sum-exp come back, so LSH's hash rounds combine outside the
kernel as in the jnp path (paper eq. 14). The backward pass is two kernels,
as FlashAttention-2's: both recompute each window's probabilities
(normalised by the saved row maximum and sum rather than the log-sum-exp,
see `programs._gradients`); one writes dq, the other, per window slot, the
dk and dv a query chunk sends to that key chunk, which an XLA scatter-add
sums into dk and dv. No program adds into memory another program (or
itself) writes.

Shapes use the package's einsum legend: b batch, h heads, u chunks, c chunk
length, d key dim, e value dim, w window length (n_win * c); `B` is b * h.

    chunk_attention(q, k, v, q_pos, k_pos, k_valid, windows, window_ok, *,
                    causal, self_penalty, bias=None, dropout_rate=0.0,
                    dropout_key=None, interpret=False)
        -> out [b, h, u, c, e], lse float32 [b, h, u, c]
    supports(c, d, e) -> None or the reason the GPU kernel cannot take these sizes
    resolve_impl(impl, c, d, e) -> "xla" | "pallas" | "interpret": what attention_impl runs
    window_table(u, before, after, wrap) -> windows, window_ok: the windows `_attend` gathers
    block_sizes(c, d) -> the query and key blocks a program walks a chunk in

It computes exactly what reformer_jax.attention._attend_block does on each
window (same additive masks, same softmax), so the jnp path is its reference;
only the dropout bits differ (the kernel hashes positions, see
`programs.dropout_keep`). What runs inside a program is in
reformer_jax/kernels/programs.py. On the GPU the kernel lowers through
Pallas's Triton backend; `interpret=True` runs it anywhere (the CPU tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from reformer_jax.kernels import programs


def supports(c: int, d: int, e: int) -> str | None:
    """None when the GPU kernel takes chunk length c and head dims d, e; else why not.

    Triton's blocks are powers of two, and its matrix units need 16 rows.
    """
    for name, n in (("chunk length", c), ("key dim", d), ("value dim", e)):
        if n < 16 or n & (n - 1):
            return f"its {name} is {n}; the kernel needs a power of two >= 16"
    return None


# ----------------------------------------------------------------------------- pallas_call


IMPLS = ("xla", "pallas", "auto", "interpret")


def resolve_impl(impl: str, chunk_len: int, d: int, e: int) -> str:
    """The implementation `_attend` runs for a requested `impl`: "xla", "pallas" or "interpret".

    "auto" is the fused kernel on a GPU when it takes chunk length c and head
    dims d, e (`supports`), the jnp path otherwise; "pallas" insists
    on the kernel and names the size it cannot take.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown attention_impl {impl!r}; use one of {IMPLS}.")
    reason = supports(chunk_len, d, e)
    if impl == "auto":
        return "pallas" if jax.default_backend() == "gpu" and reason is None else "xla"
    if impl == "pallas" and reason is not None:
        raise ValueError(
            f"attention_impl='pallas' cannot run this attention: {reason}. Change the chunk "
            "length or head size, or use attention_impl='auto' (the jnp path for these sizes)."
        )
    return impl


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


def _sizes(args, n_win):
    """(B, L, d, e, u, c) of the flattened arguments: rows, row length, head dims, chunks."""
    q, v, windows = args[0], args[2], args[6]
    u = windows.shape[1] // n_win
    return (*q.shape, v.shape[-1], u, q.shape[1] // u)


def _forward(args, static):
    q, k, v, q_pos, k_pos, k_valid, windows, ok, bias, seed = args
    n_win, causal, self_penalty, threshold, interpret = static
    B, L, d, e, u, c = _sizes(args, n_win)
    block_q, block_k, _ = block_sizes(c, d)
    nq = c // block_q
    kernel = functools.partial(
        programs.forward_program,
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
    B, L, d, e, u, c = _sizes(args, n_win)
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
        functools.partial(programs.dq_program, block_k=block_k, **static_kw),
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
        functools.partial(programs.dkv_program, block_q=block_q, **static_kw),
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
