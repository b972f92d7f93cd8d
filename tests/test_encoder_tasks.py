"""The encoder tasks (reformer_jax/tasks.py): each trains from gin through the real train(),
refuses what it cannot train with one line saying what to change, and rejects bad batches."""

import dataclasses
import json
import os

import gin
import jax
import numpy as np
import pytest

from reformer_jax import cli, evaluation, tasks
from reformer_jax.data import IndexedIterator, SinglePassIterator, spans
from tests import inprocess
from tests.conftest import TINY_GIN, tiny_config

STEPS = 24
# tests/data/tiny.gin (two layers, local and LSH, dropout 0.1) as an encoder.
ENCODER = [
    "ReformerConfig.causal = False",
    "ReformerConfig.n_chunks_after = 1",
    f"train.steps = {STEPS}",
    f"train.eval_every = {STEPS}",
    f"train.checkpoint_every = {STEPS}",
    "train.eval_batches = 0",
    "train.learning_rate = 0.02",
    "train.warmup_steps = 4",
]


@dataclasses.dataclass(frozen=True)
class _MajoritySource:
    """Label 1 when symbol 3 outnumbers symbol 4 among a row's real tokens (a mean-pooling
    task); ragged lengths; finite passes end with filler rows."""

    batch_size: int
    seq_len: int
    seed: int
    num_examples: int | None = None

    @property
    def num_batches(self):
        return -(-self.num_examples // self.batch_size)

    def batch(self, index):
        rng = np.random.default_rng([self.seed, index])
        b, n = self.batch_size, self.seq_len
        mask = np.arange(n)[None] < rng.integers(n // 2, n, b, endpoint=True)[:, None]
        tokens = np.where(mask, rng.integers(3, 5, (b, n)), 0).astype(np.int32)
        label = ((tokens == 3).sum(1) > (tokens == 4).sum(1)).astype(np.int32)
        weight = np.ones(b, np.float32)
        if self.num_examples is not None:
            weight[max(self.num_examples - index * b, 0) :] = 0.0
        return {"tokens": tokens, "mask": mask, "label": label, "weight": weight}


def majority_dataset(*, split, batch_size, seq_len, seed):
    if split == "train":
        return IndexedIterator(_MajoritySource(batch_size, seq_len, seed))
    return SinglePassIterator(_MajoritySource(batch_size, seq_len, seed + 1, num_examples=12))


gin.external_configurable(majority_dataset, name="majority_dataset")


def _train(tmp_path, params):
    """train() as the CLI calls it: tiny.gin, the encoder settings, `params`."""
    cli.parse_gin([TINY_GIN], ENCODER + params)
    workdir = str(tmp_path / "run")
    cli.prepare_workdir(workdir)
    try:
        cli.call_train(workdir=workdir)
    finally:
        gin.clear_config()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r["loss"] for r in records if r["split"] == "train"]
    (evaluation,) = [
        {k: v for k, v in r.items() if k not in ("step", "split")}
        for r in records
        if r["split"] == "eval"
    ]
    assert len(train) == STEPS and all(np.isfinite(train))
    # The train records hold the task's own metrics, as the eval records do.
    train_keys = {k for r in records if r["split"] == "train" for k in r}
    assert train_keys >= set(evaluation), (train_keys, evaluation)
    assert np.mean(train[-4:]) < np.mean(train[:4]) - 0.1, train
    return evaluation


@pytest.mark.slow  # compiles a train and an eval step (~20 s on 2 cores)
def test_masked_lm_trains_on_the_stdlib_corpus(tmp_path):
    evaluation = _train(
        tmp_path,
        [
            "VOCAB = 259",
            "train.task = @MaskedLMTask()",
            "train.dataset_fn = @stdlib_dataset",
            "stdlib_dataset.max_bytes = 100000",
            "train.eval_batches = 2",
        ],
    )
    assert set(evaluation) >= {"loss", "accuracy", "bits_per_token"}
    assert evaluation["loss"] < np.log(259)  # better than a uniform guess over the bytes


@pytest.mark.slow  # compiles a train and an eval step (~20 s on 2 cores)
def test_classification_trains_with_mean_pooling(tmp_path):
    evaluation = _train(
        tmp_path,
        [
            "VOCAB = 5",
            "train.task = @ClassificationTask()",
            "ClassificationTask.n_classes = 2",
            "ClassificationTask.pooling = 'mean'",
            "train.dataset_fn = @majority_dataset",
        ],
    )
    assert set(evaluation) == {"loss", "accuracy", "loss_over_chance"}
    np.testing.assert_allclose(evaluation["loss_over_chance"], evaluation["loss"] / np.log(2))


@pytest.mark.slow  # compiles a train and an eval step (~20 s on 2 cores)
def test_span_task_trains_on_generated_spans(tmp_path):
    evaluation = _train(
        tmp_path,
        [
            "VOCAB = 8",
            "train.task = @SpanTask()",
            "train.dataset_fn = @span_dataset",
            "span_dataset.vocab_size = %VOCAB",
            "span_dataset.eval_examples = 12",  # the second eval batch has 4 filler rows
        ],
    )
    assert set(evaluation) == {"loss", "accuracy", "start_accuracy", "end_accuracy"}
    assert np.isfinite(evaluation["loss"])


@pytest.mark.parametrize(
    "task", [tasks.MaskedLMTask(), tasks.ClassificationTask(3), tasks.SpanTask()], ids=type
)
def test_encoder_tasks_refuse_a_causal_model(task):
    with pytest.raises(tasks.TaskError, match=r"set ReformerConfig.causal=False"):
        task.check(tiny_config("step"))
    task.check(tiny_config("step", causal=False, n_chunks_after=1))


def test_the_cli_prints_the_refusal_in_one_line(tmp_path):
    result = inprocess.train(
        f"--gin_file={TINY_GIN}",
        f"--workdir={tmp_path / 'run'}",
        "--gin_param=train.task = @SpanTask()",
        "--gin_param=train.dataset_fn = @span_dataset",
    )
    assert result.returncode == 2
    assert "SpanTask trains an encoder" in result.last_line and "causal=False" in result.last_line


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: tasks.MaskedLMTask(mask_rate=0.0), "mask_rate must be in"),
        (lambda: tasks.MaskedLMTask(replace_mask=0.9, replace_random=0.2), "exceeds 1"),
        (lambda: tasks.ClassificationTask(1), "n_classes must be an int >= 2"),
        (lambda: tasks.ClassificationTask(3, pooling="max"), "pooling='max'"),
    ],
)
def test_bad_task_settings(make, match):
    with pytest.raises(tasks.TaskError, match=match):
        make()


def test_the_mask_id_must_be_in_the_vocabulary():
    cfg = tiny_config("step", causal=False)
    tasks.MaskedLMTask().check(cfg)  # vocab_size - 1
    with pytest.raises(tasks.TaskError, match=r"mask_id=8 must be an id of the vocabulary"):
        tasks.MaskedLMTask(mask_id=8).check(cfg)


def _classes_batch(**changes):
    batch = {
        "tokens": np.zeros((4, 16), np.int32),
        "mask": np.ones((4, 16), bool),
        "label": np.array([0, 1, 2, 0], np.int32),
        "weight": np.ones(4, np.float32),
    }
    return batch | changes


def _span_batch(**changes):
    batch = next(spans.span_dataset(split="train", batch_size=4, seq_len=16, seed=0))
    return batch | changes


@pytest.mark.parametrize(
    "task,batch,match",
    [
        (tasks.ClassificationTask(3), {"tokens": np.zeros((2, 8))}, r"missing \['mask'"),
        (tasks.ClassificationTask(3), _classes_batch(label=np.zeros((4, 1))), r"'label'.*\[4\]"),
        (tasks.ClassificationTask(3), _classes_batch(mask=np.ones((4, 8))), r"'mask'.*\[4, 16\]"),
        (tasks.ClassificationTask(2), _classes_batch(), "labels must be in 0..1.*got 2"),
        (tasks.SpanTask(), _span_batch(end=np.array([1, 2, 3, 15])), r"batch\['end'\]\[3\] = 15"),
        (tasks.SpanTask(), _span_batch(start=np.array([-1, 2, 3, 4])), r"\['start'\]\[0\] = -1"),
        (tasks.MaskedLMTask(), {"tokens": np.zeros((2, 8)), "weights": np.ones(2)}, "'weights'"),
    ],
)
def test_bad_batches_are_refused_with_what_is_wrong(task, batch, match):
    with pytest.raises(tasks.TaskError, match=match):
        task.check_batch(batch)


def test_good_batches_pass_and_filler_rows_are_not_checked():
    tasks.ClassificationTask(3).check_batch(_classes_batch())
    tasks.ClassificationTask(2).check_batch(
        _classes_batch(weight=np.array([1, 1, 0, 1], np.float32))
    )
    tasks.SpanTask().check_batch(_span_batch())
    filler = next(
        spans.span_dataset(split="eval", batch_size=4, seq_len=16, seed=0, eval_examples=1)
    )
    tasks.SpanTask().check_batch(filler)


def _cross_entropy(logits, target):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
    return lse - np.take_along_axis(logits, np.asarray(target)[:, None], -1)[:, 0]


@pytest.mark.parametrize("task", [tasks.ClassificationTask(2, "mean"), tasks.SpanTask()], ids=type)
def test_sums_are_the_cross_entropy_of_the_real_rows_only(task):
    """The task's sums equal a numpy cross-entropy of the model's own logits over the rows of
    weight 1; the two filler rows (weight 0, no real token) count nowhere."""
    cfg = tiny_config("step", causal=False, n_chunks_after=1)
    if isinstance(task, tasks.SpanTask):
        batch = next(
            spans.span_dataset(
                split="eval", batch_size=4, seq_len=32, seed=0, vocab_size=8, eval_examples=2
            )
        )
    else:
        batch = majority_dataset(split="eval", batch_size=4, seq_len=32, seed=0).source.batch(0)
        batch["weight"][2:] = 0.0
        batch["mask"][2:] = False
    model = task.model(cfg)
    key = jax.random.key(1)

    @jax.jit
    def sums_and_logits(b):
        params = task.init_params(model, jax.random.key(0), cfg)
        logits = model.apply({"params": params}, b["tokens"], mask=b["mask"], key=key)
        return task.loss_sums(model, params, b, key, deterministic=True), logits

    sums, logits = sums_and_logits(batch)
    real = batch["weight"] > 0
    assert real.tolist() == [True, True, False, False]
    if isinstance(task, tasks.SpanTask):
        start, end = (np.asarray(x) for x in logits)
        nll = (_cross_entropy(start, batch["start"]) + _cross_entropy(end, batch["end"])) / 2
        hit = (start.argmax(-1) == batch["start"]) & (end.argmax(-1) == batch["end"])
    else:
        nll = _cross_entropy(logits, batch["label"])
        hit = np.asarray(logits).argmax(-1) == batch["label"]
    assert np.all(np.isfinite(nll))  # even the filler rows' logits are finite
    np.testing.assert_allclose(sums["nll"], nll[real].sum(), rtol=1e-5)
    assert float(sums["correct"]) == hit[real].sum() and float(sums["weight"]) == 2.0


def test_the_eval_table_shows_every_metric_of_the_task():
    table = evaluation.format_eval_table(
        {
            "Full": {"loss": 0.25, "accuracy": 0.9, "loss_over_chance": 0.125},
            "LSH-2": {"loss": 0.5, "accuracy": 0.8, "loss_over_chance": 0.25},
        }
    ).splitlines()
    assert table[2:] == [
        "| accuracy | 90.0% | 80.0% |",
        "| loss | 0.2500 | 0.5000 |",
        "| loss_over_chance | 0.1250 | 0.2500 |",
    ]
