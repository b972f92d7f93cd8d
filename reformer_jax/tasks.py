"""Tasks: what a model is trained and evaluated for, apart from the network.

A task is (the batch it expects, its loss, its metrics). The trainer
(reformer_jax/trainer.py) and the evaluator (reformer_jax/evaluation.py)
take one and know nothing of next-token prediction; gin selects it
(`train.task = @LanguageModelTask()`, the default).

    Task.arrays / batch_keys            the arrays of a batch: name -> (dtype, rank)
    Task.batch_spec(cfg, batch_size, seq_len) -> {name: jax.ShapeDtypeStruct}
                                        the batch's shapes and dtypes (the memory planner's)
    Task.check(cfg)                     refuses a model config the task cannot train
    Task.model(cfg, run) -> nn.Module   the network with the task's head
    Task.init_params(model, key, cfg)   its fresh parameters
    Task.loss_sums(model, params, batch, key, *, deterministic)
        -> float32 sums {"nll", "correct", "weight", ...} inside the jitted step
    Task.summarize(sums) -> metrics     on the host, from sums over batches
    Task.predict(model, params, tokens, mask, key) -> {name: [b, ...]}
                                        predictions for inputs, inside jit (encoders)
    Task.describe(row, ids, tokenizer) -> dict
                                        one input's prediction, JSON-ready
                                        (python -m reformer_jax.predict)

Every task's sums hold "nll" (the summed loss, nats), "correct" and "weight"
(what they are summed over: scored tokens, examples): the trainer
minimises nll / weight over the whole batch, so gradient accumulation and
data parallelism weigh every scored item alike. Every task's metrics hold
"loss" (nll / weight) and "accuracy" (correct / weight), the two the
trainer's own log shows for any task.

The tasks, with the batches they read (b batch, l length):

    LanguageModelTask()    {"tokens" int [b, l], "weights" float [b, l]}: next token
    MaskedLMTask(...)      {"tokens", "weights"} (weights > 0: real tokens): masked LM
    ClassificationTask(n_classes, pooling)
                           {"tokens", "mask" bool [b, l], "label" int [b], "weight" float [b]}
    SpanTask()             {"tokens", "mask", "start" int [b], "end" int [b], "weight" float [b]}
    Seq2SeqTask(label_smoothing)
                           {"source" int [b, s], "source_mask" bool [b, s],
                            "target" int [b, t], "target_weights" float [b, t]}

MaskedLMTask, ClassificationTask and SpanTask train encoders
(reformer_jax/encoders.py): ReformerConfig.causal must be False. Seq2SeqTask
trains an encoder-decoder (reformer_jax/encdec.py). A "weight" of 0 marks a
filler row (the last batch of a single-pass evaluation), which counts nowhere.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax.config import ReformerConfig, RunSettings
from reformer_jax.encdec import ReformerEncDec, check_encdec_config
from reformer_jax.encoders import ReformerClassifier, ReformerMLM, ReformerSpanModel
from reformer_jax.heads import POOLINGS
from reformer_jax.metrics import summarize
from reformer_jax.model import ReformerLM

Array = jax.Array


class TaskError(ValueError):
    """A model config or a batch the task cannot use; one line saying what to change."""


class Task(abc.ABC):
    """The interface; see the module docstring."""

    # What a batch holds, in the order the task's datasets give it: name ->
    # (dtype, rank), rank 2 an array [b, l] of positions, rank 1 one value a row [b].
    arrays: dict[str, tuple[Any, int]] = {}

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The names of a batch's arrays, each [b, ...] (from `arrays`)."""
        return tuple(self.arrays)

    def check(self, cfg: ReformerConfig) -> None:
        """Raises TaskError when the task cannot train a model of `cfg` (any, by default)."""
        del cfg

    @abc.abstractmethod
    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        """The network with the task's head; `run` says how its steps run (default: plainly)."""

    def init_params(self, model: nn.Module, key: Array, cfg: ReformerConfig) -> Any:
        """Fresh parameters of `model` (the trainer initialises through the task)."""
        return model.init(key, jnp.zeros((1, cfg.max_len), jnp.int32))["params"]

    def batch_spec(
        self, cfg: ReformerConfig, batch_size: int, seq_len: int
    ) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes and dtypes of a batch of `batch_size` rows of `seq_len` positions, in
        batch_keys order: what the task's datasets give (the memory planner's inputs)."""
        del cfg
        shapes = {1: (batch_size,), 2: (batch_size, seq_len)}
        return {
            name: jax.ShapeDtypeStruct(shapes[rank], dtype)
            for name, (dtype, rank) in self.arrays.items()
        }

    @abc.abstractmethod
    def loss_sums(
        self, model: nn.Module, params: Any, batch: dict, key: Array, *, deterministic: bool
    ) -> dict[str, Array]:
        """The task's float32 sums on `batch`, at least {"nll", "correct", "weight"}."""

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Host-side metrics from sums: loss (nats per scored item), accuracy, bits."""
        return summarize(sums)

    def predict(
        self, model: nn.Module, params: Any, tokens: Array, mask: Array, key: Array
    ) -> dict[str, Array]:
        """Predictions for tokens [b, l] with padding mask bool [b, l]: arrays [b, ...]."""
        raise TaskError(
            f"{type(self).__name__} makes no predictions here: use python -m "
            "reformer_jax.sample for a language model."
        )

    def describe(self, row: dict[str, np.ndarray], ids: np.ndarray, tokenizer=None) -> dict:
        """One input's prediction (its row of `predict`) as a JSON-ready dict.

        ids: the input's token ids (no padding); tokenizer: the run's
        (reformer_jax/data/tokenizers.py), or None when the data has no text.
        By default, the row's arrays as lists.
        """
        return {name: np.asarray(value).tolist() for name, value in row.items()}

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

    arrays = {"tokens": (jnp.int32, 2), "weights": (jnp.float32, 2)}

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


# ----------------------------------------------------------------------------- encoders


def _refuse_causal(task: Task, cfg: ReformerConfig) -> None:
    if cfg.causal:
        raise TaskError(
            f"{type(task).__name__} trains an encoder, which attends both ways: set "
            "ReformerConfig.causal=False (and ReformerConfig.n_chunks_after=1)."
        )


def _check_rows(task: Task, batch: dict):
    """One clear error for arrays whose shapes do not fit tokens [b, l] (task.arrays:
    rank 2 per position, rank 1 per row)."""
    Task.check_batch(task, batch)
    per_position = [n for n, (_, rank) in task.arrays.items() if rank == 2 and n != "tokens"]
    per_row = [n for n, (_, rank) in task.arrays.items() if rank == 1]
    shape = np.shape(batch["tokens"])
    if len(shape) != 2:
        raise TaskError(
            f"{type(task).__name__}: batch['tokens'] must be [batch, length], got shape {shape}."
        )
    for name, want in [(n, shape) for n in per_position] + [(n, shape[:1]) for n in per_row]:
        got = np.shape(batch[name])
        if got != want:
            raise TaskError(
                f"{type(task).__name__}: batch[{name!r}] has shape {got}; it must be "
                f"{list(want)} for tokens of shape {list(shape)}."
            )


def mask_tokens(
    tokens: Array,
    real: Array,
    key: Array,
    *,
    rate: float,
    replace_mask: float,
    replace_random: float,
    mask_id: int,
    vocab_size: int,
) -> tuple[Array, Array]:
    """BERT's corruption (Devlin et al. 2019, §3.1): tokens [b, l] -> (inputs, selected) [b, l].

    Each real token (real: bool [b, l]) is selected with probability `rate`,
    independently; a selected token becomes `mask_id` with probability
    replace_mask, a random token with probability replace_random, and stays
    itself otherwise (BERT: 0.15, 0.8, 0.1). Random tokens are uniform over
    the vocabulary without the mask id. Padding is never selected.
    """
    select_key, action_key, random_key = jax.random.split(key, 3)
    selected = real & (jax.random.uniform(select_key, tokens.shape) < rate)
    action = jax.random.uniform(action_key, tokens.shape)
    to_mask = selected & (action < replace_mask)
    to_random = selected & (action >= replace_mask) & (action < replace_mask + replace_random)
    random = jax.random.randint(random_key, tokens.shape, 0, vocab_size - 1, dtype=tokens.dtype)
    random = random + (random >= mask_id).astype(tokens.dtype)  # skip the mask id
    inputs = jnp.where(to_mask, jnp.asarray(mask_id, tokens.dtype), tokens)
    return jnp.where(to_random, random, inputs), selected


@dataclasses.dataclass(frozen=True)
class MaskedLMTask(Task):
    """Masked language modelling (BERT; HF ReformerForMaskedLM) on {"tokens", "weights"} batches.

    Any token dataset serves (enwik8_dataset, stdlib_dataset): weights > 0
    mark the real tokens, which attention sees and which may be masked; the
    rest is padding. Inside the jitted loss, `mask_tokens` corrupts the
    batch from the step's key (a fresh choice every step; in evaluation the
    batch index's key, so each evaluation scores the same positions), and
    only the selected positions are scored.

    mask_rate, replace_mask, replace_random: see `mask_tokens`.
    mask_id: the id of the mask token; None means ReformerConfig.vocab_size - 1,
    which must then be an id the data never uses (the shipped byte configs
    set vocab_size to 259: byte + 2 ids and the mask id 258).

    Sums: "nll", "correct" and "weight" over the selected tokens ("weight":
    how many were selected). Metrics: loss (nats per masked token),
    accuracy (of the masked tokens) and bits_per_token (per masked token).
    """

    mask_rate: float = 0.15
    replace_mask: float = 0.8
    replace_random: float = 0.1
    mask_id: int | None = None

    arrays = {"tokens": (jnp.int32, 2), "weights": (jnp.float32, 2)}

    def __post_init__(self):
        if not 0.0 < self.mask_rate <= 1.0:
            raise TaskError(f"MaskedLMTask: mask_rate must be in (0, 1], got {self.mask_rate!r}.")
        for name in ("replace_mask", "replace_random"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TaskError(
                    f"MaskedLMTask: {name} must be in [0, 1], got {getattr(self, name)!r}."
                )
        if self.replace_mask + self.replace_random > 1.0 + 1e-9:
            raise TaskError(
                f"MaskedLMTask: replace_mask + replace_random = "
                f"{self.replace_mask + self.replace_random:g} exceeds 1 (the rest is kept as is)."
            )

    def resolved_mask_id(self, cfg: ReformerConfig) -> int:
        return cfg.vocab_size - 1 if self.mask_id is None else self.mask_id

    def check(self, cfg: ReformerConfig) -> None:
        _refuse_causal(self, cfg)
        mask_id = self.resolved_mask_id(cfg)
        if not 0 <= mask_id < cfg.vocab_size or cfg.vocab_size < 3:
            raise TaskError(
                f"MaskedLMTask: mask_id={mask_id} must be an id of the vocabulary "
                f"(0..{cfg.vocab_size - 1}) that the data never uses, with at least 2 other ids."
            )

    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        return ReformerMLM(cfg, run or RunSettings())

    def loss_sums(self, model, params, batch, key, *, deterministic):
        cfg = model.cfg
        tokens, weights = batch["tokens"], batch["weights"].astype(jnp.float32)
        real = weights > 0
        mask_key, model_key = jax.random.split(key)
        inputs, selected = mask_tokens(
            tokens,
            real,
            mask_key,
            rate=self.mask_rate,
            replace_mask=self.replace_mask,
            replace_random=self.replace_random,
            mask_id=self.resolved_mask_id(cfg),
            vocab_size=cfg.vocab_size,
        )
        return model.apply(
            {"params": params},
            inputs,
            mask=real,
            key=model_key,
            deterministic=deterministic,
            output="loss",
            targets=tokens,
            weights=jnp.where(selected, weights, 0.0),
        )

    def check_batch(self, batch: dict) -> None:
        _check_rows(self, batch)

    def predict(self, model, params, tokens, mask, key):
        """Fills every position holding the mask id with its most likely other token."""
        mask_id = self.resolved_mask_id(model.cfg)
        log_probs = model.apply({"params": params}, tokens, mask=mask, key=key)  # [b, l, v]
        log_probs = log_probs.at[..., mask_id].set(-jnp.inf)
        best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        prob = jnp.exp(jnp.max(log_probs, axis=-1))
        masked = (tokens == mask_id) & mask
        return {"ids": jnp.where(masked, best, tokens), "prob": prob, "masked": masked}

    def describe(self, row, ids, tokenizer=None):
        n = len(ids)
        filled = row["ids"][:n]
        out = {"ids": [int(i) for i in filled]}
        if tokenizer is not None:
            out["text"] = tokenizer.decode(filled)
        out["filled"] = [
            {"position": int(p), "id": int(filled[p]), "prob": round(float(row["prob"][p]), 6)}
            for p in np.flatnonzero(row["masked"][:n])
        ]
        return out


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
    """One label per sequence, cross-entropy (HF ReformerForSequenceClassification).

    Batches: {"tokens" int [b, l], "mask" bool [b, l] (True = real),
    "label" int [b] in 0..n_classes-1, "weight" float [b] (1 an example, 0 a
    filler row)}. pooling: "first" or "mean" (reformer_jax/heads.py,
    ClassifierHead).

    Metrics: loss (nats per example), accuracy, and loss_over_chance: the
    loss divided by log(n_classes), the loss of a uniform guess, so 1.0 is
    chance level and 0 a perfect classifier whatever the number of classes.
    """

    n_classes: int
    pooling: str = "first"

    arrays = {
        "tokens": (jnp.int32, 2),
        "mask": (jnp.bool_, 2),
        "label": (jnp.int32, 1),
        "weight": (jnp.float32, 1),
    }

    def __post_init__(self):
        if (
            isinstance(self.n_classes, bool)
            or not isinstance(self.n_classes, int)
            or self.n_classes < 2
        ):
            raise TaskError(
                f"ClassificationTask: n_classes must be an int >= 2, got {self.n_classes!r}."
            )
        if self.pooling not in POOLINGS:
            raise TaskError(f"ClassificationTask: pooling={self.pooling!r}; use one of {POOLINGS}.")

    def check(self, cfg: ReformerConfig) -> None:
        _refuse_causal(self, cfg)

    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        return ReformerClassifier(cfg, self.n_classes, self.pooling, run or RunSettings())

    def loss_sums(self, model, params, batch, key, *, deterministic):
        logits = model.apply(
            {"params": params},
            batch["tokens"],
            mask=batch["mask"].astype(bool),
            key=key,
            deterministic=deterministic,
        )
        label, weight = batch["label"], batch["weight"].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, label[:, None], axis=-1)[:, 0]
        correct = (jnp.argmax(logits, axis=-1) == label).astype(jnp.float32)
        return {
            "nll": jnp.sum(jnp.where(weight > 0, nll * weight, 0.0)),
            "correct": jnp.sum(correct * weight),
            "weight": jnp.sum(weight),
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1e-9)
        loss = float(sums["nll"]) / weight
        return {
            "loss": loss,
            "accuracy": float(sums["correct"]) / weight,
            "loss_over_chance": loss / math.log(self.n_classes),
        }

    def predict(self, model, params, tokens, mask, key):
        logits = model.apply({"params": params}, tokens, mask=mask, key=key)
        return {"label": jnp.argmax(logits, axis=-1), "probs": jax.nn.softmax(logits, axis=-1)}

    def describe(self, row, ids, tokenizer=None):
        return {
            "label": int(row["label"]),
            "probs": [round(float(p), 6) for p in row["probs"]],
        }

    def check_batch(self, batch: dict) -> None:
        _check_rows(self, batch)
        label, weight = np.asarray(batch["label"]), np.asarray(batch["weight"])
        bad = (weight > 0) & ((label < 0) | (label >= self.n_classes))
        if bad.any():
            raise TaskError(
                f"ClassificationTask: labels must be in 0..{self.n_classes - 1} "
                f"(n_classes={self.n_classes}), got {int(label[bad][0])}; set "
                "ClassificationTask.n_classes to the dataset's number of classes."
            )


@dataclasses.dataclass(frozen=True)
class SpanTask(Task):
    """Span extraction: the first and last position of a span (HF ReformerForQuestionAnswering).

    Batches: {"tokens" int [b, l], "mask" bool [b, l] (True = real),
    "start" int [b], "end" int [b] (positions, inclusive), "weight" float [b]
    (0: a filler row)}. The loss is HF's: the mean of the start and end
    cross-entropies over the real positions. Metrics: loss, accuracy (the
    exact match of (start, end), both right), start_accuracy, end_accuracy.
    """

    arrays = {
        "tokens": (jnp.int32, 2),
        "mask": (jnp.bool_, 2),
        "start": (jnp.int32, 1),
        "end": (jnp.int32, 1),
        "weight": (jnp.float32, 1),
    }

    def check(self, cfg: ReformerConfig) -> None:
        _refuse_causal(self, cfg)

    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        return ReformerSpanModel(cfg, run or RunSettings())

    def loss_sums(self, model, params, batch, key, *, deterministic):
        start_logits, end_logits = model.apply(
            {"params": params},
            batch["tokens"],
            mask=batch["mask"].astype(bool),
            key=key,
            deterministic=deterministic,
        )
        weight = batch["weight"].astype(jnp.float32)

        def nll_and_hit(logits, target):
            logp = jax.nn.log_softmax(logits, axis=-1)
            nll = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
            return nll, jnp.argmax(logits, axis=-1) == target

        start_nll, start_hit = nll_and_hit(start_logits, batch["start"])
        end_nll, end_hit = nll_and_hit(end_logits, batch["end"])
        nll = (start_nll + end_nll) / 2
        return {
            "nll": jnp.sum(jnp.where(weight > 0, nll * weight, 0.0)),
            "correct": jnp.sum((start_hit & end_hit) * weight),
            "start_correct": jnp.sum(start_hit * weight),
            "end_correct": jnp.sum(end_hit * weight),
            "weight": jnp.sum(weight),
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        weight = max(float(sums["weight"]), 1e-9)
        return {
            "loss": float(sums["nll"]) / weight,
            "accuracy": float(sums["correct"]) / weight,
            "start_accuracy": float(sums.get("start_correct", 0.0)) / weight,
            "end_accuracy": float(sums.get("end_correct", 0.0)) / weight,
        }

    def predict(self, model, params, tokens, mask, key):
        """The most likely start, then the most likely end at or after it (pads never)."""
        start_logits, end_logits = model.apply({"params": params}, tokens, mask=mask, key=key)
        start = jnp.argmax(start_logits, axis=-1)
        after = jnp.arange(tokens.shape[1])[None, :] >= start[:, None]
        end = jnp.argmax(jnp.where(after, end_logits, -jnp.inf), axis=-1)
        return {"start": start, "end": end}

    def describe(self, row, ids, tokenizer=None):
        start, end = int(row["start"]), int(row["end"])
        span = ids[start : end + 1]
        out = {"start": start, "end": end, "ids": [int(i) for i in span]}
        if tokenizer is not None:
            out["text"] = tokenizer.decode(span)
        return out

    def check_batch(self, batch: dict) -> None:
        _check_rows(self, batch)
        mask = np.asarray(batch["mask"]).astype(bool)
        weight = np.asarray(batch["weight"])
        rows = np.arange(mask.shape[0])
        for name in ("start", "end"):
            pos = np.asarray(batch[name])
            inside = (pos >= 0) & (pos < mask.shape[1])
            ok = inside & mask[rows, np.clip(pos, 0, mask.shape[1] - 1)]
            bad = (weight > 0) & ~ok
            if bad.any():
                row = int(np.argmax(bad))
                raise TaskError(
                    f"SpanTask: batch[{name!r}][{row}] = {int(pos[row])} is not a real position "
                    f"of its row (mask False or outside 0..{mask.shape[1] - 1}): a span must lie "
                    "inside the sequence."
                )


# ----------------------------------------------------------------------------- encoder-decoder


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask(Task):
    """Sequence to sequence (paper §5, translation) with a ReformerEncDec.

    Batches: {"source" int [b, s], "source_mask" bool [b, s] (True = real),
    "target" int [b, t], "target_weights" float [b, t] (1 = a real target
    token, the final EOS included; 0 = padding)}. The loss is the
    teacher-forced cross-entropy of the target tokens only, label-smoothed
    by `label_smoothing` for training (the paper's setting: 0.1).

    Metrics: loss (nats per target token, without smoothing), accuracy (of
    target tokens), bits_per_token, and exact_match: the share of examples
    whose every target token is predicted right, which is the share greedy
    decoding reproduces exactly (up to argmax ties).
    """

    label_smoothing: float = 0.0

    # Source and target both seq_len positions, as the shipped datasets pad them.
    arrays = {
        "source": (jnp.int32, 2),
        "source_mask": (jnp.bool_, 2),
        "target": (jnp.int32, 2),
        "target_weights": (jnp.float32, 2),
    }

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TaskError(
                f"Seq2SeqTask: label_smoothing must be in [0, 1), got {self.label_smoothing!r}."
            )

    def check(self, cfg: ReformerConfig) -> None:
        try:
            check_encdec_config(cfg)
        except ValueError as e:
            raise TaskError(f"Seq2SeqTask: {e}") from None

    def model(self, cfg: ReformerConfig, run: RunSettings | None = None) -> nn.Module:
        return ReformerEncDec(cfg, run or RunSettings())

    def init_params(self, model: nn.Module, key: Array, cfg: ReformerConfig) -> Any:
        ids = jnp.zeros((1, cfg.max_len), jnp.int32)
        return model.init(key, ids, ids)["params"]

    def loss_sums(self, model, params, batch, key, *, deterministic):
        return model.apply(
            {"params": params},
            batch["source"],
            batch["target"],
            source_mask=batch["source_mask"].astype(bool),
            target_weights=batch["target_weights"].astype(jnp.float32),
            key=key,
            deterministic=deterministic,
            output="loss",
            label_smoothing=0.0 if deterministic else self.label_smoothing,
            exact_match=True,
        )

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = summarize(sums)
        if "rows" in sums:
            metrics["exact_match"] = float(sums["exact"]) / max(float(sums["rows"]), 1e-9)
        return metrics

    def check_batch(self, batch: dict) -> None:
        Task.check_batch(self, batch)
        for side, extra in (("source", "source_mask"), ("target", "target_weights")):
            shape, got = np.shape(batch[side]), np.shape(batch[extra])
            if len(shape) != 2 or got != shape:
                raise TaskError(
                    f"Seq2SeqTask: batch[{side!r}] must be [batch, length] and batch[{extra!r}] "
                    f"the same shape, got {shape} and {got}."
                )
        if np.shape(batch["source"])[0] != np.shape(batch["target"])[0]:
            raise TaskError(
                f"Seq2SeqTask: source and target hold different numbers of rows "
                f"({np.shape(batch['source'])[0]} and {np.shape(batch['target'])[0]})."
            )
