"""Test-wide settings.

The correctness tests compare float32 results against references computed
another way at tolerances of 1e-5 to 1e-4. On GPUs, XLA's default float32
matmul uses TF32 (a 10-bit mantissa, ~1e-3 relative error), which would turn
those comparisons into tests of TF32 rounding; ask for full float32 instead.
CPU results are unchanged (the CPU backend computes float32 matmuls exactly
at every precision setting).
"""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
