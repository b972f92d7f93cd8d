"""Test-wide settings.

The correctness tests compare float32 results against references computed
another way at tolerances of 1e-5 to 1e-4. On GPUs, XLA's default float32
matmul uses TF32 (a 10-bit mantissa, ~1e-3 relative error), which would turn
those comparisons into tests of TF32 rounding; ask for full float32 instead.
CPU results are unchanged (the CPU backend computes float32 matmuls exactly
at every precision setting).

Compilation dominates the trainer tests (a tiny model's train step takes
seconds to compile and milliseconds to run), and many tests compile the same
step. A persistent XLA compilation cache under .pytest_cache/ (set through the
environment, so subprocesses share it) compiles each program once per
machine. Set REFORMER_JAX_TEST_XLA_CACHE= (empty) to turn it off.
"""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_cache = os.environ.get("REFORMER_JAX_TEST_XLA_CACHE", os.path.join(_ROOT, ".pytest_cache", "xla"))
if _cache:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402 - after the cache settings, which jax reads at import

jax.config.update("jax_default_matmul_precision", "highest")
