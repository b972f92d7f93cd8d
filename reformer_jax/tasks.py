"""Tasks: what a model is trained and evaluated for, apart from the network.

A task is (the batch it expects, its loss, its metrics). The trainer
(reformer_jax/trainer.py) and the evaluator (reformer_jax/evaluation.py)
take one and know nothing of next-token prediction; gin selects it
(`train.task = @LanguageModelTask()`, the default).

    Task.batch_keys                     the arrays of a batch, each [b, ...]
    Task.check(cfg)                     refuses a model config the task cannot train
    Task.model(cfg, run) -> nn.Module   the network with the task's head
    Task.init_params(model, key, cfg)   its fresh parameters
    Task.loss_sums(model, params, batch, key, *, deterministic)
        -> float32 sums {"nll", "correct", "weight", ...} inside the jitted step
    Task.summarize(sums) -> metrics     on the host, from sums over batches

Every task's sums hold "nll" (the summed loss, nats), "correct" and "weight"
(what they are summed over: scored tokens, examples): the trainer
minimises nll / weight over the whole batch, so gradient accumulation and
data parallelism weigh every scored item alike.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.metrics import summarize
from reformer_jax.model import ReformerLM

Array = jax.Array


class TaskError(ValueError):
    """A model config or a batch the task cannot use; one line saying what to change."""


class Task(abc.ABC):
    """The interface; see the module docstring."""

    batch_keys: tuple[str, ...] = ()

    def check(self, cfg: ReformerConfig) -> None:
        """Raises TaskError when the task cannot train a model of `cfg` (any, by default)."""
        del cfg

    @abc.abstractmethod
    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        """The network with the task's head; `run` says how its steps run (default: plainly)."""

    def init_params(self, model: nn.Module, key: Array, cfg: ReformerConfig) -> Any:
        """Fresh parameters of `model` (the trainer initialises through the task)."""
        return model.init(key, jnp.zeros((1, cfg.max_len), jnp.int32))["params"]

    @abc.abstractmethod
    def loss_sums(
        self, model: nn.Module, params: Any, batch: dict, key: Array, *, deterministic: bool
    ) -> dict[str, Array]:
        """The task's float32 sums on `batch`, at least {"nll", "correct", "weight"}."""

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Host-side metrics from sums: loss (nats per scored item), accuracy, bits."""
        return summarize(sums)

    def check_batch(self, batch: dict) -> None:
        """One clear error for a batch without the arrays the task reads."""
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise TaskError(
                f"{type(self).__name__} reads batches with {list(self.batch_keys)}, but the "
                f"dataset gives {sorted(batch)} (missing {missing}): pair the task with a "
                "dataset that makes its batches."
            )


@dataclasses.dataclass(frozen=True)
class LanguageModelTask(Task):
    """Next-token prediction: batches {"tokens": int [b, l], "weights": float [b, l]}.

    The loss is the weighted next-token cross-entropy (the LM head owns the
    shift, reformer_jax/heads.py); metrics are loss, accuracy and bits per
    token over the weighted tokens.
    """

    batch_keys = ("tokens", "weights")

    def check(self, cfg: ReformerConfig) -> None:
        if not cfg.causal:
            # Next-token targets with bidirectional attention let each position see its answer.
            raise TaskError(
                "ReformerConfig.causal=False cannot be trained as a language model: next-token "
                "prediction with bidirectional attention is solved by copying; set causal=True."
            )

    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        return ReformerLM(cfg, run or RunSettings())

    def loss_sums(self, model, params, batch, key, *, deterministic):
        return model.apply(
            {"params": params},
            batch["tokens"],
            key=key,
            deterministic=deterministic,
            weights=batch["weights"],
            output="loss",
        )
