"""Evaluation: loss sums without dropout, the compiled Evaluator, the paper's Table 2 variants.

    eval_step(params, batch, key, *, model, task) -> the task's loss sums
    Evaluator(cfg, dataset_fn, *, batch_size, eval_batches, seed, mesh, split="eval", task, run)
        evaluator(params) -> the task's metrics, e.g. {"loss", "accuracy", "bits_per_token"}
        (compiled once)
    eval_variant_config(cfg, "full" | "lsh-N") -> (config, column label)
    format_eval_table({label: metrics}) -> a markdown table

The command line around these is `python -m reformer_jax.evaluate`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reformer_jax import kinds
from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.sharding import shard_batch
from reformer_jax.tasks import LanguageModelTask, Task

LM_TASK = LanguageModelTask()


def eval_step(
    params: Any, batch: dict, key: jax.Array, *, model: nn.Module, task: Task = LM_TASK
) -> dict:
    """The task's loss sums of a batch without dropout (hashing still uses `key`)."""
    return task.loss_sums(model, params, batch, key, deterministic=True)


def eval_variant_config(cfg: ReformerConfig, variant: str) -> tuple[ReformerConfig, str]:
    """The model config of an evaluation column of the paper's Table 2.

    'full': every shared-QK layer (LSH or full) as shared-QK full attention.
    'lsh-N': every shared-QK layer as LSH attention with N hash rounds, so a
    model trained with shared-QK full attention is evaluated with LSH too.
    The two kinds have the same parameters (docs/algorithm.md §2); local and
    ordinary full-attention layers are left as they are.
    """
    if variant == "full":
        changes, label = {}, "Full"
    elif variant.startswith("lsh-") and variant[4:].isdigit() and int(variant[4:]) > 0:
        changes, label = {"n_hashes": int(variant[4:])}, f"LSH-{variant[4:]}"
    else:
        raise ValueError(f"unknown evaluation variant {variant!r}; use 'full' or 'lsh-N'.")
    cycle = tuple(kinds.get(k).variant(variant) for k in cfg.attention_kinds)
    return cfg.replace(attention_kinds=cycle, **changes), label


class Evaluator:
    """Mean metrics of a model over the first `eval_batches` batches of `split`.

    The eval step is compiled once, when the evaluator is built: every call
    reuses it (`traces` counts how often it was traced). eval_batches=None
    (or 0) runs until the split's iterator ends: the whole validation/test
    split for enwik8 (bits per character over every byte).
    """

    def __init__(
        self,
        cfg: ReformerConfig,
        dataset_fn: Callable,
        *,
        batch_size: int,
        eval_batches: int | None,
        seed: int,
        mesh: Mesh,
        split: str = "eval",
        task: Task = LM_TASK,
        run: RunSettings | None = None,
    ):
        self.cfg, self.dataset_fn, self.split = cfg, dataset_fn, split
        self.batch_size, self.eval_batches, self.seed, self.mesh = (
            batch_size,
            eval_batches,
            seed,
            mesh,
        )
        self.traces = 0
        self.task = task
        model = task.model(cfg, run)
        replicated = NamedSharding(mesh, PartitionSpec())

        def step(params, batch, index):
            self.traces += 1  # runs only while tracing
            return eval_step(
                params,
                batch,
                jax.random.fold_in(jax.random.key(seed), index),
                model=model,
                task=task,
            )

        self._step = jax.jit(step, out_shardings=replicated)

    def __call__(self, params: Any) -> dict[str, float]:
        data = self.dataset_fn(
            split=self.split, batch_size=self.batch_size, seq_len=self.cfg.max_len, seed=self.seed
        )
        batches = itertools.islice(data, self.eval_batches) if self.eval_batches else data
        totals: dict[str, float] = {}
        for i, batch in enumerate(batches):
            sums = jax.device_get(self._step(params, shard_batch(batch, self.mesh), np.int32(i)))
            totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
        if not totals:
            totals = {"nll": 0.0, "correct": 0.0, "weight": 0.0}
        return self.task.summarize(totals)


def format_eval_table(results: dict[str, dict[str, float]]) -> str:
    """Evaluation results by variant as a markdown table, one row per metric of the task.

    Accuracy first (as percentages, like every "*accuracy" and "*exact_match"), then the
    task's other metrics in the order it reports them (loss, bits per token,
    loss_over_chance, ...).
    """
    names: list[str] = []
    for metrics in results.values():
        names += [n for n in metrics if n not in names]
    names.sort(key=lambda n: n != "accuracy")  # stable: the task's order otherwise
    rows = ["| metric | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for name in names:

        def cell(r, name=name):
            if name not in r:
                return ""
            percent = name.endswith(("accuracy", "exact_match"))
            return f"{100 * r[name]:.1f}%" if percent else f"{r[name]:.4f}"

        label = "bits/token" if name == "bits_per_token" else name
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in results.values()) + " |")
    return "\n".join(rows)
