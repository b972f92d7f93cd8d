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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
# F(params, x, layer_key, buckets | None) -> (y, buckets | None); G(params, x, layer_key) -> y
FFn = Callable[[PyTree, Array, Array, Array | None], tuple[Array, Array | None]]
GFn = Callable[[PyTree, Array, Array], Array]


def layer_key(key: PyTree, layer: Array | int) -> PyTree:
    """The key of layer `layer`: fold_in(step_key, layer) (docs/algorithm.md, "Keys and
    randomness").

    `key` may be a pytree of keys (e.g. a step key and a fixed hashing key);
    each is folded with the layer index.
    """
    return jax.tree_util.tree_map(lambda k: jax.random.fold_in(k, layer), key)


def n_groups(params: Sequence[PyTree]) -> int:
    return jax.tree_util.tree_leaves(params)[0].shape[0]


def _group(fs, gs, group_params, x1, x2, key, group, buckets=None):
    """Runs the len(fs) layers of one group; returns (y1, y2, buckets per layer)."""
    cycle = len(fs)
    new_buckets = []
    for j in range(cycle):
        k = layer_key(key, group * cycle + j)
        pf, pg = group_params[j]
        fy, b = fs[j](pf, x2, k, None if buckets is None else buckets[j])
        x1 = x1 + fy
        x2 = x2 + gs[j](pg, x1, k)
        new_buckets.append(b)
    return x1, x2, tuple(new_buckets)


def _forward(fs, gs, params, x1, x2, key, buckets=None, remat=False):
    """Scans the groups; `buckets[j]` (None or [n_groups, ...]) replaces F_j's hashing."""
    if buckets is None:
        buckets = (None,) * len(fs)

    def body(carry, xs):
        group_params, group, group_buckets = xs
        y1, y2, new_buckets = _group(fs, gs, group_params, *carry, key, group, group_buckets)
        return (y1, y2), new_buckets

    if remat:
        body = jax.checkpoint(body)
    groups = jnp.arange(n_groups(params))
    (y1, y2), new_buckets = jax.lax.scan(body, (x1, x2), (params, groups, tuple(buckets)))
    return y1, y2, new_buckets


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _reversible(fs, gs, params, x1, x2, key, buckets):
    return _forward(fs, gs, params, x1, x2, key, buckets)


def _reversible_fwd(fs, gs, params, x1, x2, key, buckets):
    y1, y2, new_buckets = _forward(fs, gs, params, x1, x2, key, buckets)
    return (y1, y2, new_buckets), (params, y1, y2, key, new_buckets)


def _reversible_bwd(fs, gs, residuals, cotangents):
    params, y1, y2, key, buckets = residuals
    cotangents = cotangents[:2]  # the buckets' (integer) cotangents are empty
    cycle = len(fs)

    def body(carry, xs):
        y1, y2, dy1, dy2 = carry
        group_params, group_buckets, group = xs
        grads = [None] * cycle
        for j in reversed(range(cycle)):
            k = layer_key(key, group * cycle + j)
            pf, pg = group_params[j]
            # G: x2 = y2 - G(y1); dz = dy1 + (dG/dy1)^T dy2.
            gy, g_vjp = jax.vjp(lambda p, y, j=j, k=k: gs[j](p, y, k), pg, y1)
            x2 = y2 - gy
            dpg, dy1_from_g = g_vjp(dy2)
            dz = dy1 + dy1_from_g
            # F on the rebuilt x2 with the forward's buckets.
            b = group_buckets[j]
            fy, f_vjp, _ = jax.vjp(
                lambda p, x, j=j, k=k, b=b: fs[j](p, x, k, b), pf, x2, has_aux=True
            )
            x1 = y1 - fy
            dpf, dx2_from_f = f_vjp(dz)
            grads[j] = (dpf, dpg)
            y1, y2, dy1, dy2 = x1, x2, dz, dy2 + dx2_from_f
        return (y1, y2, dy1, dy2), tuple(grads)

    groups = jnp.arange(n_groups(params))
    (_, _, dx1, dx2), dparams = jax.lax.scan(
        body, (y1, y2, *cotangents), (params, buckets, groups), reverse=True
    )
    return dparams, dx1, dx2, None, None


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
):
    """Applies n_groups * len(fs) reversible layers to (x1, x2).

    Args:
      fs, gs: per cycle position j, the pure halves F_j and G_j.
      params: per cycle position j, (params of F_j, params of G_j), every leaf
        stacked along a leading axis of size n_groups.
      x1, x2: [b, l, m] the two streams.
      key: the step key; layer i uses fold_in(key, i) for hashing and dropout.
      reversible: True = the memory-saving custom backward pass; False = the
        same layers under ordinary autodiff (the reference network).
      remat: with reversible=False, rematerialise each group in the backward
        pass (a cheaper-to-write middle ground).
      buckets: optional, per cycle position j, None (F_j hashes as usual) or
        the LSH buckets F_j must use, stacked along a leading n_groups axis.
      return_buckets: also return the buckets every F used.

    Returns:
      (y1, y2), each [b, l, m]; with return_buckets, (y1, y2, buckets) where
      buckets[j] is None or F_j's buckets stacked along n_groups.
    """
    fs, gs = tuple(fs), tuple(gs)
    if len(fs) != len(gs) or len(fs) != len(params):
        raise ValueError("fs, gs and params must all have one entry per cycle position.")
    buckets = (None,) * len(fs) if buckets is None else tuple(buckets)
    if len(buckets) != len(fs):
        raise ValueError("buckets must have one entry (None or an array) per cycle position.")
    if reversible:
        y1, y2, used = _reversible(fs, gs, tuple(params), x1, x2, key, buckets)
    else:
        y1, y2, used = _forward(fs, gs, tuple(params), x1, x2, key, buckets, remat=remat)
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
