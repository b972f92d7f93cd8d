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

On a fresh clone that cache is empty and most of the suite's time is XLA:CPU
compiling, mostly LLVM optimising the generated code. The tests compile at
LLVM's level 0 (`--xla_backend_optimization_level=0`, through the
environment, so subprocesses and notebook kernels do too). That takes a
third off compile-heavy files (test_reversible, test_kernels and
test_padding: 252 s -> 160 s cold on the 2-core CI machine) and slows only
long-running cells (the image-completion notebook's training, about 20%).
It changes which instructions run, not what XLA computes; results agree
with the default to float rounding (~5e-7). Set REFORMER_JAX_TEST_XLA_OPT=
(empty) to compile as users do.
"""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_cache = os.environ.get("REFORMER_JAX_TEST_XLA_CACHE", os.path.join(_ROOT, ".pytest_cache", "xla"))
if _cache:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

_opt = os.environ.get("REFORMER_JAX_TEST_XLA_OPT", "--xla_backend_optimization_level=0")
if _opt and _opt not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_opt}".strip()

import jax  # noqa: E402 - after the cache and XLA settings, which jax reads at start-up

jax.config.update("jax_default_matmul_precision", "highest")


import shutil  # noqa: E402

import pytest  # noqa: E402

from reformer_jax.config import ReformerConfig  # noqa: E402
from tests import inprocess  # noqa: E402

TINY_GIN = os.path.join(_ROOT, "tests", "data", "tiny.gin")


def _gin_model(path: str) -> dict:
    """The ReformerConfig fields the gin file at `path` binds, with their values (through
    its includes and macros); fields it leaves unbound keep their defaults."""
    import dataclasses

    import gin

    from reformer_jax import cli

    cli.parse_gin([path], [])
    try:
        cfg = cli.model_config()
        unbound = object()
        bound = {
            f.name
            for f in dataclasses.fields(cfg)
            if cli.query(f"ReformerConfig.{f.name}", unbound) is not unbound
        }
    finally:
        gin.clear_config()
    return {name: getattr(cfg, name) for name in sorted(bound)}


# The shared tiny models. Each is small enough to compile in seconds on a CPU
# and big enough to be honest: several chunks per sequence, several buckets,
# more than one head and (where the test needs it) more than one layer group.
TINY = {
    # The model of tests/data/tiny.gin (read from it: one owner), the trainer tests' run
    # (`trained_tiny_run`): a local and an LSH layer with dropout. Train-step and settings
    # tests use it, so their programs are the trained run's.
    "step": _gin_model(TINY_GIN),
    # One LSH layer cycle: attention, hashing and loss tests.
    "lm": dict(
        vocab_size=40,
        max_len=64,
        d_model=32,
        d_ff=64,
        n_heads=2,
        d_head=16,
        n_layers=2,
        attention_kinds=("lsh",),
        chunk_len=8,
        local_chunk_len=16,
        n_hashes=2,
        n_buckets=4,
    ),
    # Local and LSH layers with dropout, two groups: reversible-vs-autodiff tests.
    "reversible": dict(
        vocab_size=40,
        max_len=96,
        d_model=32,
        d_ff=64,
        n_heads=2,
        d_head=16,
        n_layers=4,
        attention_kinds=("local", "lsh"),
        chunk_len=8,
        local_chunk_len=16,
        n_hashes=3,
        n_buckets=6,
        dropout=0.1,
        attention_dropout=0.1,
    ),
    # Every exact-decoding kind, two groups, axial positions: cached decoding tests.
    "decoding": dict(
        vocab_size=40,
        max_len=48,
        d_model=32,
        d_ff=64,
        n_heads=2,
        d_head=16,
        n_layers=6,
        attention_kinds=("local", "full_shared", "full"),
        chunk_len=8,
        local_chunk_len=8,
        n_hashes=2,
        n_buckets=4,
        axial_shape=(6, 8),
        axial_dims=(16, 16),
    ),
    # A decoder stack with cross-attention to a context, two groups.
    "cross": dict(
        vocab_size=32,
        max_len=64,
        d_model=32,
        d_ff=48,
        n_heads=2,
        d_head=16,
        n_layers=4,
        attention_kinds=("lsh", "local"),
        chunk_len=16,
        local_chunk_len=16,
        n_buckets=4,
        dropout=0.1,
        cross_attention=True,
    ),
}


def tiny_config(name: str, **overrides) -> ReformerConfig:
    """The shared tiny model `name` (see TINY), with `overrides`."""
    return ReformerConfig(**{**TINY[name], **overrides})


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: an end-to-end test (`make test-e2e`; `make test` leaves these out)"
    )
    # With `-n 2` (make test), xdist's load scheduler hands each worker a first
    # chunk of an eighth of the suite; with the slow tests first (below), one
    # worker would get them all. One test at a time keeps the two busy until the end.
    if getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
    """Runs the tests marked slow first (a stable sort: the order is otherwise kept).

    The suite's wall time on two workers is decided by its end: a minute-long
    test that starts last keeps one worker busy while the other idles. Started
    first, the long tests overlap and the many short ones fill in behind them.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory):
    """A finished 3-step run of tests/data/tiny.gin (checkpoints at steps 2 and 3),
    trained once per test process; copy it (`copy_run`) before changing it."""
    wd = str(tmp_path_factory.mktemp("trained") / "run")
    result = inprocess.train(f"--gin_file={TINY_GIN}", f"--workdir={wd}")
    assert result.returncode == 0, result.stderr
    return wd


def copy_run(workdir: str, dest: str) -> str:
    shutil.copytree(workdir, dest)
    return dest
