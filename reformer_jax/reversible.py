"""The reversible residual stack (docs/algorithm.md §3, paper §3) with `jax.custom_vjp`.

Each layer holds two pure functions, F (attention half) and G (feed-forward
half), and maps two streams (x1, x2) to

    y1 = x1 + F(x2)
    y2 = x2 + G(y1).

Layers come in a cycle of kinds (e.g. local, local, lsh, local); the
parameters of cycle position j are stacked along a leading axis of size
n_groups = n_layers / len(cycle), and one `lax.scan` runs the groups.

The custom backward pass scans the groups in reverse and, per layer, rebuilds
the inputs from the outputs (x2 = y2 - G(y1), x1 = y1 - F(x2)) while pulling
the cotangents through `jax.vjp` of F and G. The forward saves only the stack's
outputs, the key, and the LSH buckets of every layer (small integers): F is
recomputed on the rebuilt x2 with the forward's buckets, never re-hashed, since
rounding in the reconstruction can move a vector across a bucket boundary.
Activation memory is therefore that of one layer, whatever the depth.

A block may hold a third half between the two, C (cross-attention to a
`context`, the encoder's memory in an encoder-decoder). The halves then
alternate streams and the block ends with a swap, so that every half reads
the stream the previous one wrote:

    y1 = x1 + F(x2);   y2 = x2 + C(y1, context);   z1 = y1 + G(y2);   out = (y2, z1)

The context is an input of the custom VJP: each C's cotangent with respect to
it is summed over the backward pass and returned with the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
# F(params, x, layer_key, buckets | None) -> (y, buckets | None); G(params, x, layer_key) -> y;
# C(params, x, context, layer_key) -> y
FFn = Callable[[PyTree, Array, Array, Array | None], tuple[Array, Array | None]]
GFn = Callable[[PyTree, Array, Array], Array]
CFn = Callable[[PyTree, Array, PyTree, Array], Array]


def layer_key(key: PyTree, layer: Array | int) -> PyTree:
    """The key of layer `layer`: fold_in(step_key, layer) (docs/algorithm.md, "Keys and
    randomness").

    `key` may be a pytree of keys (e.g. a step key and a fixed hashing key);
    each is folded with the layer index.
    """
    return jax.tree_util.tree_map(lambda k: jax.random.fold_in(k, layer), key)


def n_groups(params: Sequence[PyTree]) -> int:
    return jax.tree_util.tree_leaves(params)[0].shape[0]


def _group(fs, gs, cs, group_params, x1, x2, key, group, buckets=None, context=None):
    """Runs the len(fs) layers of one group; returns (y1, y2, buckets per layer)."""
    cycle = len(fs)
    new_buckets = []
    for j in range(cycle):
        k = layer_key(key, group * cycle + j)
        fy, b = fs[j](group_params[j][0], x2, k, None if buckets is None else buckets[j])
        x1 = x1 + fy
        if cs is None:
            x2 = x2 + gs[j](group_params[j][1], x1, k)
        else:
            _, pc, pg = group_params[j]
            x2 = x2 + cs[j](pc, x1, context, k)
            x1 = x1 + gs[j](pg, x2, k)
            x1, x2 = x2, x1  # the swap that ends a three-half block
        new_buckets.append(b)
    return x1, x2, tuple(new_buckets)


def _forward(fs, gs, cs, params, x1, x2, key, buckets=None, context=None, remat=False):
    """Scans the groups; `buckets[j]` (None or [n_groups, ...]) replaces F_j's hashing."""
    if buckets is None:
        buckets = (None,) * len(fs)

    def body(carry, xs):
        group_params, group, group_buckets = xs
        y1, y2, new_buckets = _group(
            fs, gs, cs, group_params, *carry, key, group, group_buckets, context
        )
        return (y1, y2), new_buckets

    if remat:
        body = jax.checkpoint(body)
    groups = jnp.arange(n_groups(params))
    (y1, y2), new_buckets = jax.lax.scan(body, (x1, x2), (params, groups, tuple(buckets)))
    return y1, y2, new_buckets


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _reversible(fs, gs, cs, params, x1, x2, key, buckets, context):
    return _forward(fs, gs, cs, params, x1, x2, key, buckets, context)


def _reversible_fwd(fs, gs, cs, params, x1, x2, key, buckets, context):
    y1, y2, new_buckets = _forward(fs, gs, cs, params, x1, x2, key, buckets, context)
    return (y1, y2, new_buckets), (params, y1, y2, key, new_buckets, context)


def _undo(half, params, source, target, d_target):
    """Inverts target = x + half(params, source) and pulls d_target through the half.

    Returns (x, the half's parameter cotangents, the cotangents of its other
    inputs). The target's own cotangent passes through unchanged.
    """
    y, vjp = jax.vjp(half, params, *source)
    dparams, *dsource = vjp(d_target)
    return target - y, dparams, dsource


def _reversible_bwd(fs, gs, cs, residuals, cotangents):
    params, y1, y2, key, buckets, context = residuals
    dy1, dy2 = cotangents[:2]  # the buckets' (integer) cotangents are empty
    cycle = len(fs)

    def body(carry, xs):
        y1, y2, dy1, dy2, dcontext = carry
        group_params, group_buckets, group = xs
        grads = [None] * cycle
        for j in reversed(range(cycle)):
            k = layer_key(key, group * cycle + j)
            b = group_buckets[j]
            f = lambda p, x, j=j, k=k, b=b: fs[j](p, x, k, b)[0]
            g = lambda p, x, j=j, k=k: gs[j](p, x, k)
            if cs is None:
                pf, pg = group_params[j]
                # G: x2 = y2 - G(y1); dz = dy1 + (dG/dy1)^T dy2.
                x2, dpg, (dy1_g,) = _undo(g, pg, (y1,), y2, dy2)
                dz = dy1 + dy1_g
                # F on the rebuilt x2 with the forward's buckets.
                x1, dpf, (dx2_f,) = _undo(f, pf, (x2,), y1, dz)
                grads[j] = (dpf, dpg)
                y1, y2, dy1, dy2 = x1, x2, dz, dy2 + dx2_f
            else:
                pf, pc, pg = group_params[j]
                c = lambda p, x, ctx, j=j, k=k: cs[j](p, x, ctx, k)
                # Undo the swap: s1 was written by F and G, s2 by C.
                s1, s2, ds1, ds2 = y2, y1, dy2, dy1
                s1, dpg, (ds2_g,) = _undo(g, pg, (s2,), s1, ds1)
                ds2 = ds2 + ds2_g
                s2, dpc, (ds1_c, dctx_c) = _undo(c, pc, (s1, context), s2, ds2)
                ds1 = ds1 + ds1_c
                dcontext = jax.tree_util.tree_map(jnp.add, dcontext, dctx_c)
                s1, dpf, (ds2_f,) = _undo(f, pf, (s2,), s1, ds1)
                grads[j] = (dpf, dpc, dpg)
                y1, y2, dy1, dy2 = s1, s2, ds1, ds2 + ds2_f
        return (y1, y2, dy1, dy2, dcontext), tuple(grads)

    groups = jnp.arange(n_groups(params))
    dcontext = jax.tree_util.tree_map(jnp.zeros_like, context)
    (_, _, dx1, dx2, dcontext), dparams = jax.lax.scan(
        body, (y1, y2, dy1, dy2, dcontext), (params, buckets, groups), reverse=True
    )
    return dparams, dx1, dx2, None, None, dcontext


_reversible.defvjp(_reversible_fwd, _reversible_bwd)


def reversible_stack(
    fs: Sequence[FFn],
    gs: Sequence[GFn],
    params: Sequence[tuple[PyTree, PyTree]],
    x1: Array,
    x2: Array,
    key: Array,
    *,
    reversible: bool = True,
    remat: bool = False,
    buckets: Sequence[Array | None] | None = None,
    return_buckets: bool = False,
    cs: Sequence[CFn] | None = None,
    context: PyTree = None,
):
    """Applies n_groups * len(fs) reversible layers to (x1, x2).

    Args:
      fs, gs: per cycle position j, the pure halves F_j and G_j.
      params: per cycle position j, (params of F_j, params of G_j), or with
        `cs` (params of F_j, of C_j, of G_j); every leaf stacked along a
        leading axis of size n_groups.
      x1, x2: [b, l, m] the two streams.
      key: the step key; layer i uses fold_in(key, i) for hashing and dropout.
      reversible: True = the memory-saving custom backward pass; False = the
        same layers under ordinary autodiff (the reference network).
      remat: with reversible=False, rematerialise each group in the backward
        pass (a cheaper-to-write middle ground).
      buckets: optional, per cycle position j, None (F_j hashes as usual) or
        the LSH buckets F_j must use, stacked along a leading n_groups axis.
      return_buckets: also return the buckets every F used.
      cs, context: optional cross-attention halves C_j (one per cycle
        position) and the pytree of floating arrays they read (the memory
        and its additive mask); the gradient with respect to `context` is
        summed over every C (see the module docstring).

    Returns:
      (y1, y2), each [b, l, m]; with return_buckets, (y1, y2, buckets) where
      buckets[j] is None or F_j's buckets stacked along n_groups.
    """
    fs, gs = tuple(fs), tuple(gs)
    cs = None if cs is None else tuple(cs)
    if len(fs) != len(gs) or len(fs) != len(params) or (cs is not None and len(cs) != len(fs)):
        raise ValueError("fs, gs, cs and params must all have one entry per cycle position.")
    if (cs is None) != (context is None):
        raise ValueError("cross-attention halves `cs` and their `context` go together.")
    buckets = (None,) * len(fs) if buckets is None else tuple(buckets)
    if len(buckets) != len(fs):
        raise ValueError("buckets must have one entry (None or an array) per cycle position.")
    if reversible:
        y1, y2, used = _reversible(fs, gs, cs, tuple(params), x1, x2, key, buckets, context)
    else:
        y1, y2, used = _forward(
            fs, gs, cs, tuple(params), x1, x2, key, buckets, context, remat=remat
        )
    return (y1, y2, used) if return_buckets else (y1, y2)


def invert_layer(
    f: FFn,
    g: GFn,
    params: tuple[PyTree, PyTree],
    y1: Array,
    y2: Array,
    key: Array,
    buckets: Array | None,
) -> tuple[Array, Array]:
    """Rebuilds one layer's inputs from its outputs: x2 = y2 - G(y1), x1 = y1 - F(x2)."""
    pf, pg = params
    x2 = y2 - g(pg, y1, key)
    return y1 - f(pf, x2, key, buckets)[0], x2
