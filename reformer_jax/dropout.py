"""Dropout whose mask is a pure function of (key, shape), redrawn in the backward pass.

    apply_dropout(x, rate, key) -> x with ~rate of its elements zeroed, the rest scaled

Attention probabilities (reformer_jax/attention.py) and the residual
branches (reformer_jax/layers.py) drop out with it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


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
