"""Pallas kernels for the accelerator (docs/algorithm.md, "The fused kernel").

chunk_attention      the chunked window attention of LSH and local layers, fused
"""

from reformer_jax.kernels.window import chunk_attention, supports, window_table

__all__ = ["chunk_attention", "supports", "window_table"]
