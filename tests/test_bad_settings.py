"""Settings out of range are refused with one line before anything is built or trained.

Each case runs a command's `main` in-process (tests/inprocess.py) or calls the
library function that first uses the value (optim.make_schedule and
make_optimizer, trainer.train, memory.plan), so a notebook gets the same
error as the command line. None of these compiles or trains: the checks run
first. The last tests make sure every shipped config passes them.
"""

import glob
import math
import os

import gin
import numpy as np
import pytest

from reformer_jax import cli, evaluate, memory, optim, sample, sharding, trainer
from tests import inprocess
from tests.conftest import TINY_GIN, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_GIN
TINY_CFG = tiny_config("step")
# base.gin holds shared defaults for the others to include; it is not a run of its own.
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(ROOT, "configs", "*.gin")) if not p.endswith("base.gin")
)


def _refused(result, expect):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line.startswith("error: "), result.stderr
    assert expect in result.last_line, result.last_line


# ----------------------------------------------------------------------------- train

TRAIN_CASES = [
    # (binding, what the last line says); tiny.gin has steps = 3, batch_size = 8.
    ("train.learning_rate = -1.0", "learning_rate must be a finite number >= 0, got -1.0."),
    ("train.learning_rate = True", "learning_rate must be a finite number >= 0, got True."),
    ("train.learning_rate = 'fast'", "learning_rate must be a finite number >= 0, got 'fast'."),
    ("train.warmup_steps = -1", "warmup_steps must be an int >= 0, got -1."),
    ("train.warmup_steps = 2.5", "warmup_steps must be an int >= 0, got 2.5."),
    ("train.schedule = 'linear'", "unknown schedule 'linear'; use one of"),
    ("train.optimizer = 'sgd'", "unknown optimizer 'sgd'; use one of ('adam', 'adafactor')"),
    ("train.b1 = 1.0", "b1 must be a number in [0, 1), got 1.0."),
    ("train.b1 = -0.1", "b1 must be a number in [0, 1), got -0.1."),
    ("train.b2 = 1.5", "b2 must be a number in [0, 1), got 1.5."),
    ("train.eps = 0.0", "eps must be a finite number > 0, got 0.0."),
    ("train.eps = -1e-9", "eps must be a finite number > 0, got -1e-09."),
    ("train.weight_decay = -0.01", "weight_decay must be a finite number >= 0, got -0.01."),
    ("train.clip_norm = 0.0", "clip_norm must be None (no clipping) or a finite number > 0"),
    ("train.clip_norm = -1.0", "clip_norm must be None (no clipping) or a finite number > 0"),
    ("train.steps = True", "steps must be an int >= 1, got True."),
    ("train.steps = 0", "steps must be an int >= 1, got 0."),
    ("train.batch_size = 0", "batch_size must be an int >= 1, got 0."),
    ("train.grad_accum_steps = 0", "grad_accum_steps must be an int >= 1, got 0."),
    ("train.steps_ahead = -1", "steps_ahead must be an int >= 0, got -1."),
    ("train.log_every = 0", "log_every must be an int >= 1, got 0."),
    ("train.log_every = 2.5", "log_every must be an int >= 1, got 2.5."),
    ("train.eval_every = -1", "eval_every must be an int >= 0 (0: no evaluation"),
    ("train.eval_batches = -1", "eval_batches must be an int >= 0 (0 or None: the whole split)"),
    ("train.checkpoint_every = 0", "checkpoint_every must be an int >= 1"),
    ("train.keep_checkpoints = 0", "keep_checkpoints must be an int >= 1 (or None to keep them"),
    ("train.keep_checkpoints = False", "keep_checkpoints must be an int >= 1"),
    ("train.seed = -1", "seed must be an int in [0, 2**62), got -1."),
    ("train.seed = 4.0", "seed must be an int in [0, 2**62), got 4.0."),
    ("train.final_eval = ('full', 'lsh-x')", "final_eval: unknown evaluation variant 'lsh-x'"),
    ("train.final_eval = ('lsh-0',)", "final_eval: unknown evaluation variant 'lsh-0'"),
    ("train.final_eval = 'full'", "final_eval must be a list of evaluation variants"),
    ("train.final_eval = (2,)", "final_eval: variants are names such as 'lsh-2', got 2."),
]


@pytest.mark.parametrize(("binding", "expect"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses(binding, expect, tmp_path):
    workdir = tmp_path / "run"
    result = inprocess.train(f"--gin_file={TINY}", f"--workdir={workdir}", f"--gin_param={binding}")
    _refused(result, f"error: bad configuration: {expect}")
    assert not os.path.exists(workdir / "checkpoints")  # refused before anything was built


def test_the_cosine_schedule_needs_more_steps_than_warmup(tmp_path):
    result = inprocess.train(
        f"--gin_file={TINY}",
        f"--workdir={tmp_path / 'run'}",
        "--gin_param=train.schedule = 'cosine'",
        "--gin_param=train.warmup_steps = 3",
    )
    _refused(result, "the cosine schedule needs total_steps > warmup_steps")
    assert "got total_steps=3, warmup_steps=3" in result.last_line


def test_copy_gin_with_a_negative_learning_rate(tmp_path):
    """The report: copy.gin trained all 1,500 steps to a loss of 3.9e6 with lr -1."""
    result = inprocess.train(
        "--gin_file=configs/copy.gin",
        f"--workdir={tmp_path / 'run'}",
        "--gin_param=train.learning_rate = -1.0",
    )
    _refused(result, "learning_rate must be a finite number >= 0, got -1.0.")


# ----------------------------------------------------------------------------- the library


def test_schedule_and_optimizer_refuse_what_gin_cannot_write():
    for value in (math.nan, math.inf, -math.inf, None, np.bool_(True)):
        with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
            optim.make_schedule("rsqrt", learning_rate=value)
    schedule = optim.make_schedule("constant", learning_rate=0.1, warmup_steps=0)
    bad = {
        "b1": (math.nan, 1, True),
        "b2": (math.nan, 1.0, -1e-3),
        "eps": (math.nan, math.inf, 0),
        "weight_decay": (math.nan, math.inf, -1),
        "clip_norm": (math.nan, math.inf, 0, False),
    }
    for name, values in bad.items():
        for value in values:
            with pytest.raises(ValueError, match=f"^{name} must be"):
                optim.make_optimizer("adam", schedule=schedule, **{name: value})
    with pytest.raises(ValueError, match="total_steps must be None or an int >= 1, got 0"):
        optim.make_schedule("rsqrt", total_steps=0)
    with pytest.raises(ValueError, match="got total_steps=None, warmup_steps=10"):
        optim.make_schedule("cosine", warmup_steps=10)


def test_schedule_and_optimizer_take_numpy_numbers_and_the_edges():
    # learning_rate 0 freezes the parameters (tests/test_train.py relies on it).
    schedule = optim.make_schedule(
        "rsqrt", learning_rate=np.float32(0.0), warmup_steps=np.int64(0), total_steps=10
    )
    assert float(schedule(5)) == 0.0
    for kw in (
        dict(b1=0.0, b2=np.float64(0.999), eps=np.float32(1e-8)),
        dict(weight_decay=0, clip_norm=np.float32(1.0)),
        dict(weight_decay=1e-4, clip_norm=None),
    ):
        optim.make_optimizer("adam", schedule=schedule, **kw)
        optim.make_optimizer("adafactor", schedule=schedule, **kw)


def test_check_train_args_takes_numpy_ints_and_none():
    trainer._check_train_args(
        TINY_CFG,
        sharding.make_mesh(),
        steps=np.int64(3),
        batch_size=8,
        grad_accum_steps=1,
        steps_ahead=0,
        log_every=1,
        eval_every=0,
        eval_batches=None,
        checkpoint_every=np.int32(1),
        keep_checkpoints=None,
        seed=0,
        final_eval=["full", "lsh-1"],
    )


# ----------------------------------------------------------------------------- memory

MEMORY_CASES = [
    (("--seq_len=0",), "--seq_len must be an int >= 1 (leave it out for max_len=32), got 0."),
    (("--seq_len=-4",), "--seq_len must be an int >= 1"),
    (("--batch_size=0",), "--batch_size must be an int >= 1, got 0."),
    (("--gin_param=train.batch_size = 0",), "bad configuration: batch_size must be an int >= 1"),
    (("--gin_param=train.grad_accum_steps = 0",), "grad_accum_steps must be an int >= 1, got 0."),
    (
        ("--batch_size=3", "--gin_param=train.grad_accum_steps = 2"),
        "batch_size=3 must be divisible by grad_accum_steps (2)",
    ),
    (("--gin_param=train.optimizer = 'sgd'",), "unknown optimizer 'sgd'"),
]


@pytest.mark.parametrize(
    ("flags", "expect"), MEMORY_CASES, ids=[" ".join(c[0]) for c in MEMORY_CASES]
)
def test_memory_refuses(flags, expect, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main appends to it
    _refused(inprocess.run(memory.main, f"--gin_file={TINY}", *flags), expect)


def test_memory_plan_checks_before_compiling():
    for kw, expect in (
        (dict(batch_size=0), "batch_size must be an int >= 1, got 0."),
        (dict(batch_size=True), "batch_size must be an int >= 1, got True."),
        (dict(batch_size=1, seq_len=0), r"seq_len must be an int in \[1, max_len=32\], got 0"),
        (dict(batch_size=1, seq_len=64), r"seq_len must be an int in \[1, max_len=32\], got 64"),
        (dict(batch_size=2, grad_accum_steps=0), "grad_accum_steps must be an int >= 1"),
        (dict(batch_size=1, grad_accum_steps=2), r"batch_size=1 must be divisible"),
        (dict(batch_size=1, optimizer="sgd"), "unknown optimizer 'sgd'"),
    ):
        with pytest.raises(ValueError, match=expect):
            memory.plan(TINY_CFG, **kw)


# ----------------------------------------------------------------------------- sample, evaluate


@pytest.mark.parametrize(
    ("flag", "expect"),
    [
        ("--num_tokens=0", "--num_tokens must be >= 1 (ids to generate), got 0"),
        ("--num_tokens=-5", "--num_tokens must be >= 1 (ids to generate), got -5"),
        ("--seed=-1", "--seed must be in [0, 2**62), got -1"),
        ("--seed=99999999999999999999", "--seed must be in [0, 2**62), got 99999999999999999999"),
    ],
)
def test_sample_refuses_before_loading(flag, expect, tmp_path):
    # The workdir does not exist: the flags are refused before the run is read.
    argv = (f"--workdir={tmp_path / 'none'}", "--prompt_ids=1", "--num_tokens=2", flag)
    _refused(inprocess.run(sample.main, *argv), expect)


def test_evaluate_refuses_negative_eval_batches(tmp_path):
    result = inprocess.run(evaluate.main, f"--workdir={tmp_path / 'none'}", "--eval_batches=-1")
    _refused(result, "--eval_batches must be >= 0 (0: the whole split), got -1")


# ----------------------------------------------------------------------------- shipped configs


class _ReachedTheData(Exception):
    pass


def _stop_at_the_data(**kwargs):
    raise _ReachedTheData


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_passes_the_checks(path, tmp_path):
    """train() with the config's arguments gets past every check to its dataset, untrained."""
    cli.parse_gin([path], [])
    with pytest.raises(_ReachedTheData):
        gin.get_configurable("train")(workdir=str(tmp_path), dataset_fn=_stop_at_the_data)
    assert os.listdir(tmp_path) == []
    cfg = cli.model_config()
    memory.check_plan_args(
        cfg,
        batch_size=cli.query("train.batch_size", 1),
        seq_len=cfg.max_len,
        optimizer=cli.query("train.optimizer", "adam"),
        grad_accum_steps=cli.query("train.grad_accum_steps", 1),
    )


def test_every_shipped_config_is_covered():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"copy.gin", "enwik8.gin", "imagenet64.gin", "long_1m.gin"} <= names
