"""Choosing how a step runs from a memory budget: the fastest setting that fits.

    parse_budget("40GiB") -> 42949672960     ("512MiB", "8GB", "1073741824", an int)
    budget_bytes(value) -> bytes             (also "device": the device's memory less a margin)
    ladders(cfg, run, grad_accum_steps, seq_len=, batch_size=) -> {knob: values, fastest first}
    search(ladders, budget, plan_total) -> Choice(settings, total_bytes, plans)

The knobs are the "auto" fields of RunSettings (ff_chunk_size,
loss_chunk_size, attention_head_chunk, remat) and the trainer's
grad_accum_steps (micro-batches); a value the user set is held fixed. None
of them changes what a step computes beyond float rounding (with dropout, a
chunk draws its own mask: reformer_jax/layers.py).

Each knob's ladder runs from fastest to leanest: chunk sizes None (the whole
sequence), then powers of two dividing the length, down to `min_chunk`;
head chunks None (all heads), then divisors of n_heads; remat off, then on
(only for a non-reversible stack, where it does anything); 1 micro-batch,
then each divisor of the batch. `search` compiles the fastest setting and
the leanest (every knob at its last rung), then, knob by knob in PRIORITY
order, bisects the knob's ladder for its fastest rung that still fits with
the knobs after it at their leanest. Bisection takes O(log n) plans per
knob, assuming memory does not grow down a ladder; whatever it assumes, only
a setting whose compiled total fits is ever chosen.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from reformer_jax.config import AUTO, ReformerConfig, RunSettings

GIB = 2**30
# The knobs, in the order the search relaxes them: the costliest in speed first, so it
# keeps them fast before the others. remat runs each layer's forward twice (a third more
# compute); micro-batches run the same work as smaller, serial matmuls; head chunks
# serialise the attention; feed-forward and loss chunks of >= 512 positions cost least
# (docs/benchmarks.md, "What do the chunk loops cost in speed?").
PRIORITY = ("remat", "grad_accum_steps", "attention_head_chunk", "ff_chunk_size", "loss_chunk_size")
RUN_KNOBS = ("ff_chunk_size", "loss_chunk_size", "attention_head_chunk", "remat")
MIN_CHUNK = 512
# "device": the memory the device's allocator reports (bytes_limit) less this share, for
# what the compiled step does not count: batches in flight, evaluation, fragmentation.
DEVICE_MARGIN = 0.10
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
FORMS = '"40GiB", "512MiB", "8GB" (10**9 bytes), a plain number of bytes, or "device"'


class BudgetError(ValueError):
    """A budget that cannot be read, or that no setting fits; one line for the user."""


def parse_budget(value: int | str) -> int:
    """Bytes of a budget: an int, or a string "40GiB", "1.5 GiB", "512MiB", "8GB", "100MB",
    "4096" (KiB/MiB/GiB/TiB are powers of 2, KB/MB/GB/TB powers of 10, any case)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    else:
        match = _BUDGET.match(value) if isinstance(value, str) else None
        if match is None or match.group(2).lower() not in _UNITS:
            raise BudgetError(f"memory budget {value!r}: use {FORMS}.")
        number, unit = float(match.group(1)), match.group(2).lower()
    total = int(number * _UNITS[unit])
    if total <= 0:
        raise BudgetError(f"memory budget {value!r} must be more than 0 bytes; use {FORMS}.")
    return total


def device_budget(margin: float = DEVICE_MARGIN) -> int:
    """The first device's memory limit (memory_stats()["bytes_limit"]) less `margin` of it."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        raise BudgetError(
            f'memory budget "device": the {device.platform} backend reports no memory limit '
            '(memory_stats()["bytes_limit"]); give the budget in bytes, e.g. "40GiB".'
        )
    return int(stats["bytes_limit"] * (1.0 - margin))


def budget_bytes(value: int | str) -> int:
    """parse_budget(value), or device_budget() for "device"."""
    return device_budget() if value == "device" else parse_budget(value)


def compiled_bytes(compiled: Any) -> int | None:
    """Live bytes of a call of a compiled step, from XLA's memory analysis: arguments +
    outputs not aliased to a donated argument + temporaries (profiling.xla_memory's
    "total"; the trainer's search uses this, as the trainer may not import profiling).
    None where the backend gives no analysis."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    size = lambda name: int(getattr(mem, f"{name}_size_in_bytes", 0))
    return size("argument") + size("output") - size("alias") + size("temp")


def _chunks(length: int, min_chunk: int) -> tuple[int, ...]:
    """Powers of two that divide `length`, below it and >= min_chunk, largest first."""
    top = length & -length  # the largest power of two dividing length
    sizes = [top >> i for i in range(top.bit_length())]
    return tuple(c for c in sizes if min_chunk <= c < length)


def ladders(
    cfg: ReformerConfig,
    run: RunSettings,
    grad_accum_steps: int | str,
    *,
    seq_len: int,
    batch_size: int,
    min_chunk: int = MIN_CHUNK,
) -> dict[str, tuple]:
    """Each knob's values, fastest first: one value for a knob set explicitly (not "auto").

    batch_size: sequences per device and step (micro-batches divide it).
    """
    chunks = (None, *_chunks(seq_len, min_chunk))
    auto = {
        "ff_chunk_size": chunks,
        "loss_chunk_size": chunks,
        "attention_head_chunk": (
            None,
            *(h for h in range(cfg.n_heads - 1, 0, -1) if cfg.n_heads % h == 0),
        ),
        # Remat changes nothing in a reversible stack, which recomputes its activations anyway.
        "remat": (False,) if cfg.reversible else (False, True),
        "grad_accum_steps": tuple(k for k in range(1, batch_size + 1) if batch_size % k == 0),
    }
    given = {**{k: getattr(run, k) for k in RUN_KNOBS}, "grad_accum_steps": grad_accum_steps}
    return {k: auto[k] if given[k] == AUTO else (given[k],) for k in PRIORITY}


@dataclasses.dataclass(frozen=True)
class Choice:
    """The setting chosen (`settings`: every knob), its compiled total and the plans compiled.

    searched: the knobs that were "auto" (more than one value to choose from).
    """

    settings: dict[str, Any]
    total_bytes: int
    budget_bytes: int
    plans: int
    searched: tuple[str, ...]

    def run_settings(self, run: RunSettings) -> RunSettings:
        """`run` with the chosen values of its knobs."""
        return dataclasses.replace(run, **{k: self.settings[k] for k in RUN_KNOBS})

    def bindings(self) -> list[str]:
        """Gin lines of the searched knobs, to paste into a config."""
        return [
            f"{'train' if k == 'grad_accum_steps' else 'RunSettings'}.{k} = {self.settings[k]!r}"
            for k in RUN_KNOBS + ("grad_accum_steps",)
            if k in self.searched
        ]

    def summary(self) -> str:
        """One line: the bindings, the planned total against the budget, the plans compiled."""
        chosen = "; ".join(self.bindings()) or "nothing to choose (every knob set explicitly)"
        return (
            f"{chosen}; planned total {size(self.total_bytes)} of {size(self.budget_bytes)}, "
            f"{self.plans} plans compiled"
        )


def size(n: int) -> str:
    """Bytes for people: '40.000 GiB (42949672960 bytes)', '0.954 MiB (1000000 bytes)'."""
    unit, scale = ("GiB", GIB) if n >= GIB else ("MiB", 2**20)
    return f"{n / scale:.3f} {unit} ({n} bytes)"


def search(
    ladders: dict[str, tuple],
    budget: int,
    plan_total: Callable[[dict[str, Any]], int],
) -> Choice:
    """The fastest setting (in PRIORITY order) whose plan_total(setting) <= budget.

    plan_total compiles a step with a setting ({knob: value}) and returns its bytes;
    each distinct setting is compiled once. Raises BudgetError when even the leanest
    setting does not fit.
    """
    totals: dict[tuple, int] = {}

    def total(setting: dict[str, Any]) -> int:
        key = tuple(setting[k] for k in PRIORITY)
        if key not in totals:
            totals[key] = plan_total(dict(setting))
        return totals[key]

    def choice(setting):
        searched = tuple(k for k in PRIORITY if len(ladders[k]) > 1)
        return Choice(dict(setting), total(setting), budget, len(totals), searched)

    fastest = {k: ladders[k][0] for k in PRIORITY}
    if total(fastest) <= budget:
        return choice(fastest)
    pick = {k: ladders[k][-1] for k in PRIORITY}
    if total(pick) > budget:
        leanest = ", ".join(f"{k}={pick[k]!r}" for k in PRIORITY if len(ladders[k]) > 1)
        raise BudgetError(
            f"no setting fits the memory budget of {size(budget)}: the leanest "
            f"({leanest or 'the settings as given'}) plans {size(total(pick))}; try fewer layers, "
            "a smaller batch or a shorter seq_len."
        )
    for knob in PRIORITY:
        rungs = ladders[knob]
        lo, hi = 0, len(rungs) - 1  # rungs[hi] fits (the leanest, or found below)
        while lo < hi:
            mid = (lo + hi) // 2
            if total({**pick, knob: rungs[mid]}) <= budget:
                hi = mid
            else:
                lo = mid + 1
        pick[knob] = rungs[hi]
    return choice(pick)


def max_plans(ladders: dict[str, tuple]) -> int:
    """The most plans `search` compiles: the fastest, the leanest and each knob's bisection."""
    return 2 + sum(math.ceil(math.log2(len(r))) for r in ladders.values() if len(r) > 1)
