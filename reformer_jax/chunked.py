"""The chunk and head-chunk loops: custom VJPs that keep one piece's activations alive.

Shapes use the package's einsum legend (reformer_jax/__init__.py): b batch,
l length, c chunk length, h heads.

    positionwise(fn, chunk, params, xs, key)   a position-wise fn over chunks of the
                                               sequence (padding l to a multiple of c)
    scan_chunks(fn, chunk, params, xs, key)    the same loop over l = u * c positions
    sum_chunks(fn, chunk, params, xs, key)     the sum of fn over chunks (the chunked loss)
    scan_head_chunks(fn, shared, params, x, extras)
                                               fn over chunks of attention heads

Every loop's backward pass recomputes one piece's forward inside `jax.vjp`
(paper §3: chunking the feed-forward and the loss), writes the inputs'
cotangents into one buffer in place and sums the parameter cotangents, so
only one piece's intermediates are alive, forward or backward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from reformer_jax import lsh

Array = jax.Array


def _slice(x, i, chunk):
    # Passing x through a barrier with the loop index keeps the slice inside the
    # loop: XLA:CPU computes bfloat16 arithmetic in float32, and would otherwise
    # convert the whole loop-invariant x to float32 before the loop and carry
    # that copy through it (2 GiB per [2^20, 512] input).
    x, _ = jax.lax.optimization_barrier((x, i))
    return jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)


def positionwise(fn, chunk: int | None, params, xs: tuple, key: Array | None) -> tuple:
    """fn(params, xs, key) for a position-wise fn, in chunks of `chunk` positions.

    xs: a tuple of [b, l, ...] arrays; fn maps their [b, c, ...] slices to a
    [b, c, ...] array or a tuple of them (None entries pass through). Without a chunk
    (or chunk >= l) fn runs once on the whole sequence; otherwise the inputs are
    padded to a multiple of `chunk`, `scan_chunks` runs the chunks (chunk i with
    fold_in(key, i)), and the outputs are cut back to l.
    """
    length = xs[0].shape[1]
    if not chunk or chunk >= length:
        return fn(params, xs[0] if len(xs) == 1 else xs, key)
    padded = lsh.round_up(length, chunk)
    xs = tuple(lsh.pad_length(a, padded, axis=1) for a in xs)
    unpack = (lambda p, a, k: fn(p, a[0], k)) if len(xs) == 1 else fn
    key = jax.random.key(0) if key is None else key
    ys = scan_chunks(unpack, chunk, params, xs, key)
    return jax.tree_util.tree_map(lambda y: y[:, :length], ys)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def scan_chunks(fn, chunk: int, params, xs: tuple, key: Array) -> tuple:
    """ys[j][:, i*c:(i+1)*c] = fn(params, xs[:, i*c:(i+1)*c], fold_in(key, i))[j].

    fn returns one [b, c, ...] array or a tuple of them. Both passes loop
    over the chunks, writing each output (and, backward, each input's
    cotangent) into one [b, l, ...] buffer in place, and the backward pass
    recomputes a chunk's forward inside `jax.vjp`. No stacked per-chunk copies
    are made, and a chunk's intermediates (and, on XLA:CPU, the float32 copies
    of its bfloat16 matmul operands) are the only ones alive.
    """
    return _scan_chunks_fwd(fn, chunk, params, xs, key)[0]


def _grow(part: Array, size: int, axis: int) -> Array:
    """part zero-padded at the end of `axis` to `size`: the loops' output buffer.

    Made from the first chunk's (or head chunk's) result rather than as a zeros
    array: XLA would make a zeros buffer (and the copy a loop state takes) at
    the start of the enclosing loop body, alive for all of it, while a buffer
    computed from data is made where the data is.
    """
    widths = [(0, 0)] * part.ndim
    widths[axis] = (0, size - part.shape[axis])
    return jnp.pad(part, widths)


def _write(bufs, parts, i, chunk):
    return jax.tree_util.tree_map(
        lambda buf, part: jax.lax.dynamic_update_slice_in_dim(buf, part, i * chunk, axis=1),
        bufs,
        parts,
    )


def _backward_loop(step, chunk: int, length: int):
    """The chunk loops' backward pass: step(i) -> (parameter cotangents, input
    cotangents of chunk i); writes the latter into [b, length, ...] buffers grown
    from chunk 0's and sums the former."""

    def body(i, carry):
        dxs, dparams = carry
        dp_i, dxs_i = step(i)
        return _write(dxs, dxs_i, i, chunk), jax.tree_util.tree_map(jnp.add, dparams, dp_i)

    dp_0, dxs_0 = step(0)
    init = (tuple(_grow(d, length, 1) for d in dxs_0), dp_0)
    return jax.lax.fori_loop(1, length // chunk, body, init)


def _is_map(xs, dys) -> bool:
    """One input and one output cotangent of its shape and dtype: the feed-forward's case."""
    return (
        len(xs) == 1
        and isinstance(dys, jax.Array)
        and (dys.shape, dys.dtype) == (xs[0].shape, xs[0].dtype)
    )


def _scan_chunks_fwd(fn, chunk, params, xs, key):
    length = xs[0].shape[1]
    call = lambda i: fn(params, tuple(_slice(a, i, chunk) for a in xs), jax.random.fold_in(key, i))
    ys = jax.tree_util.tree_map(lambda y: _grow(y, length, 1), call(0))
    ys = jax.lax.fori_loop(1, length // chunk, lambda i, bufs: _write(bufs, call(i), i, chunk), ys)
    return ys, (params, xs, key)


def _scan_chunks_bwd(fn, chunk, residuals, dys):
    params, xs, key = residuals
    length = xs[0].shape[1]
    if _is_map(xs, dys):
        return _map_chunks_bwd(fn, chunk, params, xs[0], key, dys)

    def step(i):  # -> (parameter cotangents, input cotangents) of chunk i
        f = lambda p, *parts: fn(p, parts, jax.random.fold_in(key, i))
        ys_i, vjp = jax.vjp(f, params, *(_slice(a, i, chunk) for a in xs))
        dys_i = jax.tree_util.tree_map(
            lambda dy, y: _slice(dy, i, chunk).astype(y.dtype), dys, ys_i
        )
        dp_i, *dxs_i = vjp(dys_i)
        return dp_i, tuple(d.astype(a.dtype) for d, a in zip(dxs_i, xs, strict=True))

    dxs, dparams = _backward_loop(step, chunk, length)
    return dparams, dxs, None


def _map_chunks_bwd(fn, chunk, params, x, key, dy):
    """The backward pass of the one-input, same-shape case: dy's buffer becomes dx's
    (chunk i's dy is read before its dx is written), so no second [b, l, m]
    buffer is alive beside dy (128 MiB at enwik8's [65536, 1024] in bfloat16).
    Chunk 0 runs inside the loop too: written outside it, as `_backward_loop`
    writes its first chunk, XLA copies dy first and the saving is gone (the
    enwik8 step plans 227 MiB more)."""

    def body(i, carry):
        buf, dparams = carry
        y_i, vjp = jax.vjp(
            lambda p, x_i: fn(p, (x_i,), jax.random.fold_in(key, i)), params, _slice(x, i, chunk)
        )
        dp_i, dx_i = vjp(_slice(buf, i, chunk).astype(y_i.dtype))
        buf = jax.lax.dynamic_update_slice_in_dim(buf, dx_i.astype(buf.dtype), i * chunk, axis=1)
        return buf, jax.tree_util.tree_map(jnp.add, dparams, dp_i)

    init = (dy.astype(x.dtype), jax.tree_util.tree_map(jnp.zeros_like, params))
    dx, dparams = jax.lax.fori_loop(0, x.shape[1] // chunk, body, init)
    return dparams, (dx,), None


scan_chunks.defvjp(_scan_chunks_fwd, _scan_chunks_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def sum_chunks(fn, chunk: int, params, xs: tuple, key: Array) -> Array:
    """sum_i fn(params, xs[:, i*c:(i+1)*c], fold_in(key, i)) for a fn returning an array.

    The chunked loss: both passes loop over the chunks, and the backward pass
    recomputes each chunk inside `jax.vjp`, writing the inputs' cotangents into
    [b, l, ...] buffers in place, so no chunk's logits outlive it and no
    stacked copy of the inputs is made.
    """
    return _sum_chunks_fwd(fn, chunk, params, xs, key)[0]


def _sum_chunks_fwd(fn, chunk, params, xs, key):
    n = xs[0].shape[1] // chunk
    call = lambda i: fn(params, tuple(_slice(a, i, chunk) for a in xs), jax.random.fold_in(key, i))
    total = jax.lax.fori_loop(1, n, lambda i, acc: acc + call(i), call(0))
    return total, (params, xs, key)


def _sum_chunks_bwd(fn, chunk, residuals, dtotal):
    params, xs, key = residuals
    length = xs[0].shape[1]
    # Cotangents flow to the floating inputs; integer ones (targets) get None.
    floating = [jnp.issubdtype(a.dtype, jnp.floating) for a in xs]
    diff = tuple(a for a, f in zip(xs, floating, strict=True) if f)

    def step(i):
        parts = [_slice(a, i, chunk) for a in xs]

        def f(p, *diff_parts):
            it = iter(diff_parts)
            merged = tuple(next(it) if fl else a for a, fl in zip(parts, floating, strict=True))
            return fn(p, merged, jax.random.fold_in(key, i))

        _, vjp = jax.vjp(f, params, *(a for a, fl in zip(parts, floating, strict=True) if fl))
        dp_i, *dxs_i = vjp(dtotal)
        return dp_i, tuple(d.astype(a.dtype) for d, a in zip(dxs_i, diff, strict=True))

    dxs, dparams = _backward_loop(step, chunk, length)
    it = iter(dxs)
    return dparams, tuple(next(it) if fl else None for fl in floating), None


sum_chunks.defvjp(_sum_chunks_fwd, _sum_chunks_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan_head_chunks(fn, shared, params, x: Array, extras):
    """Runs fn over n chunks of attention heads (attention_head_chunk): for i in range(n),

        out_i, buckets_i = fn(shared, params[i], x, extras[i])

    and returns (out [b, l, n, ...], the buckets_i stacked along a leading axis,
    or None). params and extras have a leading axis of size n; shared (params
    used by every head chunk, plus non-differentiable arrays such as a mask) does
    not. extras must be a dict with a "buckets" entry (None, or buckets fn must
    use); its other entries (keys) are not differentiated.

    A custom VJP: the backward pass recomputes each head chunk's forward inside
    `jax.vjp`, with the buckets the forward used, and sums the head chunks' input
    cotangents in one buffer. Only one head chunk's internals are alive at a time,
    and XLA cannot carry float32 copies of the bfloat16 x across the loop
    (see `_slice`), which it does with `jax.checkpoint` in a `lax.scan`.
    """
    return _scan_head_chunks_fwd(fn, shared, params, x, extras)[0]


def _n_pieces(extras) -> int:
    return jax.tree_util.tree_leaves(extras)[0].shape[0]


def _first_and_rest(tree):
    return (
        jax.tree_util.tree_map(lambda a: a[0], tree),
        jax.tree_util.tree_map(lambda a: a[1:], tree),
    )


def _prepend(first, rest):
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)


def _scan_head_chunks_fwd(fn, shared, params, x, extras):
    n = _n_pieces(extras)
    (p_0, e_0), rest = _first_and_rest((params, extras))
    out_0, buckets_0 = fn(shared, p_0, x, e_0)

    def body(out, args):
        i, p_i, e_i = args
        x_i, _ = jax.lax.optimization_barrier((x, i))
        out_i, buckets_i = fn(shared, p_i, x_i, e_i)
        return jax.lax.dynamic_update_index_in_dim(out, out_i, i, axis=2), buckets_i

    out = _grow(out_0[:, :, None], n, 2)
    out, buckets = jax.lax.scan(body, out, (jnp.arange(1, n), *rest))
    buckets = None if buckets_0 is None else _prepend(buckets_0, buckets)
    return (out, buckets), (shared, params, x, extras, buckets)


def _scan_head_chunks_bwd(fn, residuals, cotangents):
    shared, params, x, extras, buckets = residuals
    dout = cotangents[0]
    if buckets is not None:  # replay the forward's buckets
        extras = {**extras, "buckets": buckets}
    diff_shared = {k: v for k, v in shared.items() if k != "mask"}

    def step(i, p_i, e_i):
        x_i, _ = jax.lax.optimization_barrier((x, i))

        def f(s, p, xx):
            return fn({**shared, **s}, p, xx, e_i)[0]

        _, vjp = jax.vjp(f, diff_shared, p_i, x_i)
        return vjp(jax.lax.dynamic_index_in_dim(dout, i, axis=2, keepdims=False))

    def body(carry, args):
        dx, dshared = carry
        ds_i, dp_i, dx_i = step(*args)
        dshared = jax.tree_util.tree_map(jnp.add, dshared, ds_i)
        return (dx + dx_i.astype(dx.dtype), dshared), dp_i

    (p_0, e_0), rest = _first_and_rest((params, extras))
    ds_0, dp_0, dx_0 = step(0, p_0, e_0)  # head chunk 0 starts the sums: no zeros buffers
    carry = (dx_0.astype(x.dtype), ds_0)
    (dx, dshared), dparams = jax.lax.scan(body, carry, (jnp.arange(1, _n_pieces(extras)), *rest))
    dshared = {**{k: None for k in shared}, **dshared}
    return dshared, _prepend(dp_0, dparams), dx, jax.tree_util.tree_map(lambda _: None, extras)


scan_head_chunks.defvjp(_scan_head_chunks_fwd, _scan_head_chunks_bwd)
