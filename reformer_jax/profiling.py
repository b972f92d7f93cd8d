"""What the benchmark scripts measure with: lengths, memory and CPU probes, timed
steps, a ready-to-run training step, XLA's compiled memory, the matmul peak.

    parse_length("4K") -> 4096                      ("1M" -> 1048576)
    rss_bytes(), peak_rss_bytes(), process_peak_rss_bytes(), reset_peak_rss()
    cpu_jiffies(), load_average()
    time_steps(fn, n) -> StepTimes(times, others_cpu_share), .median
    train_setup(cfg, batch_size=..., task=...) -> TrainSetup: the trainer's step; call it
    random_batch(task.batch_spec(...), vocab_size, seed) -> arrays
    compile_timed(jitted, *args) -> (compiled, seconds)
    xla_memory(compiled) -> {"argument", "output", "temp", "alias", "generated_code", "total"}
    matmul_peak_tflops(dtype)

Used by scripts/benchmark.py, scripts/compare_peers.py and the memory planner
(reformer_jax/memory.py). The probes read Linux's /proc. jax is imported only
inside the functions that need it, so a process may probe and time without it
(compare_peers' torch cells must not import jax).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

MIB = 2**20
GIB = 2**30
_LENGTH_SCALES = {"k": 2**10, "m": 2**20}
XLA_MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


def parse_length(text: str) -> int:
    """'4096' -> 4096, '4K' or '4k' -> 4096, '1M' or '1m' -> 1048576.

    A whole number >= 0, optionally with a K (x 1024) or M (x 1024**2) suffix;
    anything else raises ValueError (argparse reports it as an invalid value).
    """
    stripped = text.strip()
    scale = _LENGTH_SCALES.get(stripped[-1:].lower(), 1)
    digits = stripped[:-1] if scale != 1 else stripped
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(
            f"length {text!r}: use a whole number, optionally followed by K (x 1024) "
            "or M (x 1024**2), e.g. 4096, 4K, 1M"
        )
    return int(digits) * scale


# ----------------------------------------------------------------------------- probes


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (reported in kB), in bytes; 0 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS)."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """The kernel's high-water mark of this process's resident memory (VmHWM): since
    the process started or since the last reset_peak_rss()."""
    return _status_bytes("VmHWM")


def process_peak_rss_bytes() -> int:
    """getrusage's ru_maxrss (KiB on Linux), in bytes. reset_peak_rss() resets it too."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Returns freed heap to the OS, then resets the kernel's RSS high-water mark.

    False where the mark cannot be reset (no /proc/self/clear_refs).
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_jiffies() -> tuple[int, int, int]:
    """(machine busy, machine total, this process's user + system) in clock ticks."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return sum(fields) - fields[3] - fields[4], sum(fields), int(own[11]) + int(own[12])


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class StepTimes:
    """Seconds of each timed call, and the share of the machine's CPU that other
    processes used during it (the machine may be shared: how loaded it was)."""

    times: list[float]
    others_cpu_share: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def block_until_ready(out: Any) -> Any:
    """jax.block_until_ready(out); None is returned at once (jax is not imported)."""
    if out is None:
        return None
    import jax

    return jax.block_until_ready(out)


def time_steps(
    fn: Callable[[], Any],
    n: int,
    *,
    before_each: Callable[[int], None] | None = None,
) -> StepTimes:
    """Times `n` calls of fn(), each until its result is ready (block_until_ready).

    A fn that returns None must finish its work itself (e.g. synchronise a
    device) before returning. `before_each(i)` runs, untimed, before call i.
    """
    times, others = [], []
    for i in range(n):
        if before_each is not None:
            before_each(i)
        busy0, total0, own0 = cpu_jiffies()
        t0 = time.perf_counter()
        block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        busy1, total1, own1 = cpu_jiffies()
        # The machine's and this process's tick counters are read at slightly
        # different moments: on a short step the difference can dip below 0.
        share = ((busy1 - busy0) - (own1 - own0)) / max(1, total1 - total0)
        others.append(min(1.0, max(0.0, share)))
    return StepTimes(times, others)


def matmul_peak_tflops(dtype: Any = "float32", n: int | None = None, repeats: int = 10) -> float:
    """Measured peak of one square matmul on the default device (a probe, not a spec):
    n x n (default 8192 on an accelerator, 2048 on the CPU), the median of `repeats`
    timed calls after one untimed."""
    import jax
    import jax.numpy as jnp

    n = n or (8192 if jax.devices()[0].platform != "cpu" else 2048)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, b))
    return 2 * n**3 / time_steps(lambda: mm(a, b), repeats).median / 1e12


# ----------------------------------------------------------------------------- compiling


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
    """jitted.lower(*args).compile() (arrays or jax.ShapeDtypeStructs) and its seconds."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def xla_memory(compiled: Any) -> dict[str, int] | None:
    """Bytes of XLA's memory analysis of a compiled computation; None where the
    backend gives none.

    One entry per XLA_MEMORY_FIELDS ("argument", "output", "temp", "alias",
    "generated_code"; a field the backend lacks is 0) and "total": argument +
    output - alias + temp, the live bytes of a call (outputs that alias a
    donated argument are counted once).
    """
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    out = {name: int(getattr(mem, f"{name}_size_in_bytes", 0)) for name in XLA_MEMORY_FIELDS}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


# ----------------------------------------------------------------------------- training


def one_device_mesh() -> Any:
    """A "data" mesh of the first device alone: a step planned or timed on one device."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices()[:1]), ("data",))


def random_batch(spec: dict, vocab_size: int, seed: int) -> dict:
    """Arrays of the shapes and dtypes of `spec` ({name: ShapeDtypeStruct}, a task's
    batch_spec): [b, l] ints uniformly random ids (numpy default_rng(seed), drawn in
    spec order), [b] ints 0 (class 0, the span [0, 0]), bools True, floats 1. A valid
    batch of every task, whatever its values mean."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = {}
    for name, s in spec.items():
        if jnp.issubdtype(s.dtype, jnp.integer):
            ids = rng.integers(0, vocab_size, s.shape) if len(s.shape) == 2 else np.zeros(s.shape)
            batch[name] = jnp.asarray(ids, s.dtype)
        else:
            batch[name] = jnp.ones(s.shape, s.dtype)
    return batch


@dataclasses.dataclass
class TrainSetup:
    """A training step ready to run: `fn(state, batch) -> (state, metrics)` (state
    donated; the trainer's step, trainer.make_step), its state and batch. Calling it
    runs one step on the batch, advances the state and returns the metrics."""

    model: Any
    optimizer: Any
    schedule: Any
    fn: Any
    state: Any
    batch: dict[str, Any]
    task: Any = None
    metrics: Any = None

    def compile(self) -> float:
        """Compiles fn ahead of time for the state and batch; seconds. Afterwards fn is the
        compiled step (for xla_memory(setup.fn))."""
        self.fn, seconds = compile_timed(self.fn, self.state, self.batch)
        return seconds

    def __call__(self) -> Any:
        self.state, self.metrics = self.fn(self.state, self.batch)
        return self.metrics

    def loss(self) -> float:
        """Mean loss per scored item (token, example) of the last step."""
        return float(self.metrics["nll"] / self.metrics["weight"])


def train_setup(
    cfg: Any,
    *,
    batch_size: int,
    seq_len: int | None = None,
    optimizer: str = "adam",
    learning_rate: float = 1e-4,
    grad_accum_steps: int = 1,
    seed: int = 0,
    abstract: bool = False,
    run: Any = None,
    task: Any = None,
) -> TrainSetup:
    """The trainer's training step (trainer.make_step) of `task` (default: a language
    model) on one device, for a batch of [batch_size, seq_len] positions (default
    max_len; task.batch_spec): `optimizer` with a constant `learning_rate`, the state
    initialised from `seed` as train() does, and random_batch(seed).
    abstract=True: state and batch are shapes only, nothing is allocated or run
    (compile it for xla_memory).
    """
    import jax

    from reformer_jax import trainer
    from reformer_jax.config import RunSettings
    from reformer_jax.tasks import LanguageModelTask

    seq_len = cfg.max_len if seq_len is None else seq_len
    task = LanguageModelTask() if task is None else task
    opt, schedule = trainer.make_optimizer(
        optimizer=optimizer, schedule="constant", learning_rate=learning_rate, warmup_steps=0
    )
    step = trainer.make_step(
        task,
        cfg,
        RunSettings() if run is None else run,
        opt,
        schedule,
        seed=seed,
        grad_accum_steps=grad_accum_steps,
        mesh=one_device_mesh(),
    )
    state, batch = step.state, step.batch(batch_size, seq_len)
    if not abstract:
        state = step.fresh_state(None, 0)
        shardings = {k: s.sharding for k, s in batch.items()}
        batch = jax.device_put(random_batch(batch, cfg.vocab_size, seed), shardings)
    return TrainSetup(step.model, opt, schedule, step.fn, state, batch, task)
