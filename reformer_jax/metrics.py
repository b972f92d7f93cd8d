"""Training metrics: metrics.jsonl, TensorBoard, and a progress bar of finished steps.

    MetricWriter(workdir, *, enabled, truncate_to)   .write(step, split, record), .offset()
    StepMeter(tokens_per_step, *, steps_ahead, bar, summarize)  .dispatched(step, metrics), .flush()
    progress_bar(start, total, enabled)

JAX dispatches steps asynchronously: the host can run far ahead of the device
and a bar that counts dispatched steps races ahead, then stalls at each log
step. StepMeter keeps at most `steps_ahead` steps in flight by waiting for the
(small) metrics of step n - steps_ahead before returning from step n, and
advances the bar when a step has finished, so the bar and its rate are those
of finished steps.

A step's metrics are sums (nll, correct, weight) and norms, computed inside
the jitted step; `summarize` normalises the sums on the host.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Host-side: sums -> loss (nats per weighted token), accuracy, bits per token."""
    weight = max(float(sums["weight"]), 1e-9)
    loss = float(sums["nll"]) / weight
    return {
        "loss": loss,
        "accuracy": float(sums["correct"]) / weight,
        "bits_per_token": loss / math.log(2.0),
    }


class MetricWriter:
    """metrics.jsonl (one object per logged step and split) and TensorBoard event files.

    enabled=False (every process but the first of a multi-host run) writes
    nothing. truncate_to: a byte length of metrics.jsonl saved with a
    checkpoint; on resume the file is cut back to it, so the records of steps
    after that checkpoint, which the resumed run logs again, appear once
    (0 when a run starts without a train-state checkpoint).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, truncate_to: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        path = os.path.join(workdir, "metrics.jsonl")
        self.jsonl = open(path, "a")  # noqa: SIM115 - closed in close()
        if truncate_to is not None and self.jsonl.tell() > truncate_to:
            self.jsonl.truncate(truncate_to)
            self.jsonl.seek(truncate_to)
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, record: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "split": split, **record}) + "\n")
        self.jsonl.flush()
        for name, value in record.items():
            self.tb.add_scalar(f"{split}/{name}", value, step)
        self.tb.flush()

    def offset(self) -> int:
        """Bytes of metrics.jsonl written so far (0 when disabled)."""
        return self.jsonl.tell() if self.enabled else 0

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


class StepMeter:
    """Bounds dispatch run-ahead, counts finished steps, and sums them for the log.

    dispatched(step, metrics): registers step `step` (1-based, finished count
    after it) and waits for the oldest steps until at most `steps_ahead` are
    in flight. flush(): waits for all, returns (record, bad) where record is
    the summary since the last flush and bad is None or (step, [names]) for
    the first step with a non-finite loss or parameter norm.
    """

    def __init__(
        self,
        tokens_per_step: int,
        *,
        steps_ahead: int,
        bar: Any,
        summarize: Callable[[dict[str, float]], dict[str, float]] = summarize,
    ):
        self.summarize = summarize  # the task's (reformer_jax/tasks.py): its own metrics
        self.tokens_per_step = tokens_per_step
        self.steps_ahead = steps_ahead
        self.bar = bar
        self.in_flight: collections.deque = collections.deque()
        self.finished: list[tuple[int, dict]] = []
        self.since = time.perf_counter()

    def dispatched(self, step: int, metrics: dict) -> None:
        self.in_flight.append((step, metrics))
        while len(self.in_flight) > self.steps_ahead:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        step, metrics = self.in_flight.popleft()
        self.finished.append((step, jax.device_get(metrics)))
        self.bar.update(1)

    def flush(self) -> tuple[dict[str, float], tuple[int, list[str]] | None]:
        while self.in_flight:
            self._finish_oldest()
        if not self.finished:
            return {}, None
        bad = None
        for step, m in self.finished:
            # The loss of a step uses the parameters before its update; the
            # parameter norm checks the update itself, so no NaN is saved.
            names = [n for n, k in (("loss", "nll"), ("parameters", "param_norm"))
                     if not np.isfinite(m[k])]  # fmt: skip
            if names:
                bad = (step, names)
                break
        fetched = [m for _, m in self.finished]
        now = time.perf_counter()
        last = fetched[-1]
        sums = [k for k in last if k not in ("grad_norm", "param_norm", "learning_rate")]
        record = self.summarize({k: sum(float(m[k]) for m in fetched) for k in sums})
        record.update(
            grad_norm=float(last["grad_norm"]),
            param_norm=float(last["param_norm"]),
            learning_rate=float(last["learning_rate"]),
            tokens_per_second=len(fetched) * self.tokens_per_step / max(now - self.since, 1e-9),
        )
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
        self.finished.clear()
        self.since = now
        return record, bad


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def progress_bar(start: int, total: int, enabled: bool):
    """A tqdm bar on stderr from `start` to `total` finished steps (or one that shows nothing)."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)
