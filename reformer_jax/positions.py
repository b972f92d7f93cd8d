"""Positional encodings (docs/algorithm.md §5): axial embeddings and fixed sinusoids.

Both take int positions [..., n] (any positions below the model's length, so
decoding encodes one new position at a time) and return float32 [..., n, m].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def check_axial(shape: Sequence[int], dims: Sequence[int], length: int, d_model: int) -> None:
    """Clear errors for axial shapes that cannot encode `length` positions in d_model."""
    if len(shape) != len(dims) or not shape:
        raise ValueError(
            f"axial_shape {tuple(shape)} and axial_dims {tuple(dims)} must be non-empty and "
            "of the same length (one embedding width per axis)."
        )
    if math.prod(shape) != length:
        raise ValueError(
            f"axial_shape {tuple(shape)} multiplies to {math.prod(shape)}, but the sequence "
            f"length is {length}: choose axes whose product is {length}, e.g. "
            f"({_near_sqrt_factor(length)}, {length // _near_sqrt_factor(length)})."
        )
    if sum(dims) != d_model:
        raise ValueError(
            f"axial_dims {tuple(dims)} sum to {sum(dims)}, but d_model is {d_model}: the "
            "per-axis embeddings are concatenated, so their widths must add up to d_model."
        )


def _near_sqrt_factor(n: int) -> int:
    for f in range(math.isqrt(n), 0, -1):
        if n % f == 0:
            return f
    return 1


class AxialPositionalEmbedding(nn.Module):
    """Axial positions (docs/algorithm.md §5): one N(0, 1) table per axis, concatenated.

    Position p of a shape (s_1, ..., s_k) has coordinates (p_1, ..., p_k) in
    row-major order and encoding concat(E_1[p_1], ..., E_k[p_k]). Any
    positions below prod(shape) may be asked for, so a model trained at length
    prod(shape) evaluates and decodes at any length up to it.
    """

    shape: tuple[int, ...]
    dims: tuple[int, ...]

    @nn.compact
    def __call__(self, positions: Array, anchor: Array | None = None) -> Array:
        """int positions [..., n] -> [..., n, sum(dims)] float32.

        `anchor`: any array the caller computes per step (e.g. the token
        embeddings). The tables pass through an optimization barrier with it,
        so the [n, m] encoding is built where it is used: without it, XLA
        hoists this step-invariant array out of a gradient-accumulation loop
        and keeps it alive for the whole step (256 MiB at enwik8's 64K x 1024).
        """
        total = math.prod(self.shape)
        # Position p's coordinate on axis i is (p // stride_i) % s_i. Gathering
        # each table at those coordinates builds only the rows asked for and
        # lets XLA fuse the lookups into the consumer (the sum with the token
        # embeddings), instead of broadcasting every table to the full grid of
        # prod(shape) positions first.
        parts = []
        stride = total
        for i, (s, e) in enumerate(zip(self.shape, self.dims, strict=True)):
            table = self.param(f"axis_{i}", nn.initializers.normal(1.0), (s, e), jnp.float32)
            if anchor is not None:
                table, _ = jax.lax.optimization_barrier((table, anchor))
            stride //= s
            parts.append(jnp.take(table, (positions // stride) % s, axis=0, mode="clip"))
        return jnp.concatenate(parts, axis=-1)


def sinusoidal_positions(positions: Array, d_model: int) -> Array:
    """The Transformer's fixed sin/cos encoding of int positions [..., n] -> [..., n, m] float32."""
    pos = jnp.asarray(positions).astype(jnp.float32)[..., None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    enc = jnp.zeros((*pos.shape[:-1], d_model), jnp.float32)
    enc = enc.at[..., 0::2].set(jnp.sin(pos * freq))
    return enc.at[..., 1::2].set(jnp.cos(pos * freq[: d_model // 2]))
