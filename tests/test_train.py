"""The trainer and its CLI: end to end, resume, fine-tuning, bad input, one compilation.

One test runs the real command line in a subprocess; the rest call the same
`main` in-process (tests/inprocess.py), which proves the same things without
a Python start-up and a compilation per run. The kill-and-resume test is
tests/test_kill_soak.py.
"""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import checkpoints, evaluation, metrics, optim, sharding, trainer
from reformer_jax.data import synthetic
from reformer_jax.model import ReformerConfig, ReformerLM
from tests import inprocess
from tests.conftest import TINY_GIN, copy_run, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_GIN


def _cli(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "reformer_jax.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _losses(workdir):
    """step -> train loss, the last record of each step winning."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec["split"] == "train":
                out[rec["step"]] = rec["loss"]
    return out


def _checkpoint_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _train(*args):
    """`python -m reformer_jax.train --gin_file=tiny.gin ARGS`, in-process."""
    return inprocess.train(f"--gin_file={TINY}", *args)


@pytest.fixture
def trained(trained_tiny_run):
    """A finished 3-step tiny run (checkpoints at steps 2 and 3), trained once (conftest)."""
    return trained_tiny_run


def _copy_of(trained, tmp_path):
    return copy_run(trained, str(tmp_path / "run"))


@pytest.mark.slow
def test_cli_end_to_end_then_resume(tmp_path):
    # The one subprocess run: `python -m reformer_jax.train` as a user types it.
    wd = str(tmp_path / "run")
    first = _cli(f"--gin_file={TINY}", f"--workdir={wd}")
    assert first.returncode == 0, first.stderr
    assert os.path.isfile(os.path.join(wd, "config.gin"))
    assert "ReformerConfig.d_model = 16" in open(os.path.join(wd, "config.gin")).read()
    assert sorted(_losses(wd)) == [1, 2, 3]
    assert _checkpoint_steps(wd) == [2, 3]
    assert any(n.startswith("events") for n in os.listdir(os.path.join(wd, "tensorboard")))
    rec = json.loads(open(os.path.join(wd, "metrics.jsonl")).readline())
    for k in (
        "loss",
        "accuracy",
        "bits_per_token",
        "grad_norm",
        "param_norm",
        "learning_rate",
        "tokens_per_second",
    ):
        assert np.isfinite(rec[k]), k
    second = _train(f"--workdir={wd}", "--gin_param=train.steps=5")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stderr
    assert sorted(_losses(wd)) == [1, 2, 3, 4, 5]
    assert _checkpoint_steps(wd) == [3, 4, 5]


def _bad(tmp_path, *args):
    wd = str(tmp_path / "bad")
    result = _train(f"--workdir={wd}", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.last_line


def test_bad_input_is_one_clear_line(tmp_path):
    assert "d_modle" in _bad(tmp_path, "--gin_param=ReformerConfig.d_modle = 8")
    assert "no_such_fn" in _bad(tmp_path, "--gin_param=train.dataset_fn = @no_such_fn")
    assert "gin file not found" in _bad(tmp_path, "--gin_file=missing.gin")
    line = _bad(
        tmp_path,
        "--gin_param=ReformerConfig.axial_shape = (4, 4)",
        "--gin_param=ReformerConfig.axial_dims = (8, 8)",
    )
    assert "axial_shape (4, 4) multiplies to 16" in line
    assert "multiple of the attention cycle" in _bad(
        tmp_path, "--gin_param=ReformerConfig.n_layers = 3"
    )
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file
        target = str(tmp_path / "a_file" / "run")
        (tmp_path / "a_file").write_text("")
    else:
        target = str(ro / "run")
    result = _train(f"--workdir={target}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "workdir" in result.last_line


def test_bad_config_leaves_checkpoints_alone(trained, tmp_path):
    wd = _copy_of(trained, tmp_path)
    before = _checkpoint_steps(wd)
    bad = _train(f"--workdir={wd}", "--gin_param=ReformerConfig.n_heads=0")
    assert bad.returncode != 0 and "n_heads" in bad.stderr
    assert _checkpoint_steps(wd) == before == [2, 3]


@pytest.mark.slow
def test_length_not_a_multiple_of_the_chunk_trains(tmp_path):
    wd = str(tmp_path / "odd")
    result = _train(f"--workdir={wd}", "--gin_param=SEQ_LEN = 30", "--gin_param=train.steps = 2")
    assert result.returncode == 0, result.stderr
    assert all(np.isfinite(v) for v in _losses(wd).values())


def test_corrupt_latest_checkpoint_falls_back(trained, tmp_path):
    wd = _copy_of(trained, tmp_path)
    latest = os.path.join(wd, "checkpoints", "3")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    result = _train(f"--workdir={wd}", "--gin_param=train.steps=4")
    assert result.returncode == 0, result.stderr
    assert "unreadable" in result.stderr
    assert 4 in _losses(wd) and 3 in _checkpoint_steps(wd)


def _tiny_setup(schedule, learning_rate, warmup_steps, **cfg_changes):
    """The tiny step model (tests/conftest.py), its optimizer and a fresh TrainState."""
    cfg = tiny_config("step", **cfg_changes)
    model = ReformerLM(cfg)
    lr = optim.make_schedule(schedule, learning_rate=learning_rate, warmup_steps=warmup_steps)
    opt = optim.make_optimizer("adam", schedule=lr)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    state = trainer.TrainState.create(params, opt)
    return model, opt, lr, state


def test_train_step_compiles_once():
    model, opt, lr, state = _tiny_setup("rsqrt", 0.05, 2, dropout=0.1)
    data = synthetic.duplication_dataset(
        split="train", batch_size=4, seq_len=32, seed=0, vocab_size=8
    )

    @chex.assert_max_traces(n=1)
    def step(state, batch, key):
        return trainer.train_step(state, batch, key, model=model, optimizer=opt, schedule=lr)

    step = jax.jit(step, donate_argnums=0)
    losses = []
    for _ in range(3):
        state, metrics = step(state, next(data), jax.random.key(1))
        losses.append(float(metrics["nll"] / metrics["weight"]))
    assert int(state.step) == 3 and all(np.isfinite(losses))


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    # Local attention and no dropout: micro-batch i draws its keys from
    # fold_in(step_key, i), so LSH rotations would differ from the whole batch's.
    model, opt, lr, state = _tiny_setup(
        "constant", 1e-2, 0, attention_kinds=("local",), dropout=0.0
    )
    batch = synthetic.DuplicationTask(32, 8, 8, seed=3).batch(0)
    run = lambda k: trainer.train_step(
        state, batch, jax.random.key(1), model=model, optimizer=opt, schedule=lr, grad_accum_steps=k
    )
    (s1, m1), (s4, m4) = run(1), run(4)
    np.testing.assert_allclose(m4["nll"], m1["nll"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
    for a, b in zip(
        jax.tree_util.tree_leaves(s4.params), jax.tree_util.tree_leaves(s1.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_rsqrt_schedule_matches_trax_formula():
    lr = optim.make_schedule("rsqrt", learning_rate=0.03125, warmup_steps=2000)
    for s in (1, 500, 2000, 8000, 100000):
        want = 0.03125 * min(1.0, s / 2000) / np.sqrt(max(s, 2000))
        np.testing.assert_allclose(float(lr(s)), want, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [8])
def test_eight_devices_match_one_and_checkpoint_restores_on_one(tmp_path, devices):
    assert jax.device_count() == 1  # the test process; the 8-device run is a subprocess

    def run_one(workdir, steps):
        result = _train(f"--workdir={workdir}", f"--gin_param=train.steps={steps}")
        assert result.returncode == 0, result.stderr
        return _losses(workdir)

    one = run_one(str(tmp_path / "one"), 4)
    many_dir = str(tmp_path / "many")
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = _cli(
        f"--gin_file={TINY}", f"--workdir={many_dir}", "--gin_param=train.steps=3", env=env
    )
    assert result.returncode == 0, result.stderr
    many = _losses(many_dir)
    for step in (1, 2, 3):
        np.testing.assert_allclose(many[step], one[step], rtol=1e-5)
    # The 8-device checkpoint restores on one device and continues identically.
    resumed = run_one(many_dir, 4)
    np.testing.assert_allclose(resumed[4], one[4], rtol=1e-5)


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(trained, tmp_path):
    wd = _copy_of(trained, tmp_path)
    # An absurd learning rate from step 4 on drives the parameters to inf.
    result = _train(
        f"--workdir={wd}",
        "--gin_param=train.steps=8",
        "--gin_param=train.learning_rate=1e35",
        "--gin_param=train.schedule='constant'",
        "--gin_param=train.warmup_steps=0",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.last_line
    assert "non-finite" in last and "at step" in last, last
    assert _checkpoint_steps(wd) == [2, 3]


def _params_of(workdir, step=None):
    return checkpoints.load_run(workdir, step).params


def _assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_evaluator_traces_once_across_evals():
    cfg = ReformerConfig(
        vocab_size=8, max_len=32, d_model=16, d_ff=32, n_heads=2, d_head=8, n_layers=1, chunk_len=8
    )
    params = ReformerLM(cfg).init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    data = lambda **kw: synthetic.duplication_dataset(vocab_size=8, **kw)
    evaluate = evaluation.Evaluator(
        cfg, data, batch_size=4, eval_batches=3, seed=0, mesh=sharding.make_mesh()
    )
    results = [evaluate(params) for _ in range(3)]
    assert evaluate.traces == 1
    assert results[0] == results[1] == results[2]
    # The result is the mean over 3 eval batches, each with its own hashing key.
    data_it = synthetic.duplication_dataset(
        split="eval", batch_size=4, seq_len=32, seed=0, vocab_size=8
    )
    total = {"nll": 0.0, "correct": 0.0, "weight": 0.0}
    for i in range(3):
        s = evaluation.eval_step(
            params, next(data_it), jax.random.fold_in(jax.random.key(0), i), model=ReformerLM(cfg)
        )
        total = {k: total[k] + float(s[k]) for k in total}
    np.testing.assert_allclose(results[0]["loss"], total["nll"] / total["weight"], rtol=1e-6)


@pytest.mark.slow
def test_fine_tune_from_own_checkpoint(trained, tmp_path):
    # With a zero learning rate the first step leaves the parameters as
    # restored, so the new run's checkpoint must equal the source's exactly.
    wd = str(tmp_path / "fine")
    result = _train(
        f"--workdir={wd}",
        f"--gin_param=train.init_checkpoint='{trained}'",
        "--gin_param=train.steps=1",
        "--gin_param=train.learning_rate=0.0",
        "--gin_param=train.schedule='constant'",
        "--gin_param=train.warmup_steps=0",
    )
    assert result.returncode == 0, result.stderr
    assert "initialised parameters from" in result.stderr
    assert _checkpoint_steps(wd) == [1]
    _assert_trees_equal(_params_of(wd), _params_of(trained))
    # Its step-1 loss is the source model's loss, far below a fresh model's.
    fresh = str(tmp_path / "fresh")
    assert _train(f"--workdir={fresh}", "--gin_param=train.steps=1").returncode == 0
    assert _losses(wd)[1] < _losses(fresh)[1]


@pytest.mark.slow
def test_save_params_then_load_run_train_and_resume(trained, tmp_path):
    run = checkpoints.load_run(trained)
    assert (
        run.step == 3
        and run.config.d_model == 16
        and run.config.attention_kinds
        == (
            "local",
            "lsh",
        )
    )
    saved = str(tmp_path / "saved")
    checkpoints.save_params(saved, run.config, run.params, step=0)
    again = checkpoints.load_run(saved)
    assert again.config == run.config and again.step == 0
    _assert_trees_equal(again.params, run.params)
    # A params-only checkpoint as the workdir: a fresh optimizer from its step.
    result = _train(
        f"--workdir={saved}",
        "--gin_param=train.steps=1",
        "--gin_param=train.learning_rate=0.0",
        "--gin_param=train.schedule='constant'",
        "--gin_param=train.warmup_steps=0",
    )
    assert result.returncode == 0, result.stderr
    assert _checkpoint_steps(saved) == [0, 1]
    _assert_trees_equal(_params_of(saved, 1), run.params)


def test_init_checkpoint_of_another_shape_is_one_line(trained, tmp_path):
    result = _train(
        f"--workdir={tmp_path / 'wide'}",
        f"--gin_param=train.init_checkpoint='{trained}'",
        "--gin_param=ReformerConfig.d_ff = 64",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "feed_forward/b1 is (1, 32) there but (1, 64) in the model" in result.last_line


def test_causal_false_is_refused_in_training(tmp_path):
    line = _bad(tmp_path, "--gin_param=ReformerConfig.causal = False")
    assert "causal=False cannot be trained" in line
    assert not os.path.isdir(os.path.join(tmp_path, "bad", "checkpoints", "1"))


class _CountingBar:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n

    def set_postfix(self, **kw):
        pass


def test_step_meter_counts_finished_steps_and_bounds_run_ahead():
    bar = _CountingBar()
    meter = metrics.StepMeter(10, steps_ahead=2, bar=bar)
    one = {
        k: jnp.float32(1)
        for k in ("nll", "correct", "weight", "grad_norm", "param_norm", "learning_rate")
    }
    for step in range(1, 6):
        meter.dispatched(step, one)
        assert len(meter.in_flight) <= 2
        assert bar.n == step - len(meter.in_flight)  # the bar counts finished steps only
    record, bad = meter.flush()
    assert bar.n == 5 and not meter.in_flight and bad is None
    assert record["loss"] == 1.0 and record["accuracy"] == 1.0
    meter.dispatched(6, {**one, "nll": jnp.float32(np.nan)})
    assert meter.flush()[1] == (6, ["loss"])


def test_eval_variants_swap_shared_qk_kinds_both_ways():
    """Table 2's columns: 'full' and 'lsh-N' swap shared-QK layers, both ways.

    With one chunk covering the sequence and one round, LSH attention is
    shared-QK full attention, so a full-attention model scores the same under
    'full' and under 'lsh-1' while its local layer is left alone.
    """
    cfg = ReformerConfig(
        vocab_size=16,
        max_len=32,
        d_model=32,
        d_ff=64,
        n_heads=2,
        d_head=16,
        n_layers=2,
        attention_kinds=("full_shared", "local"),
        chunk_len=32,
        local_chunk_len=8,
        n_buckets=2,
    )
    lsh4, label = evaluation.eval_variant_config(cfg, "lsh-4")
    assert (lsh4.attention_kinds, lsh4.n_hashes, label) == (("lsh", "local"), 4, "LSH-4")
    full, label = evaluation.eval_variant_config(lsh4, "full")
    assert (full.attention_kinds, label) == (("full_shared", "local"), "Full")
    with pytest.raises(ValueError, match="unknown evaluation variant"):
        evaluation.eval_variant_config(cfg, "lsh-0")

    tokens = jax.random.randint(jax.random.key(7), (2, 32), 0, 16)
    params = ReformerLM(cfg).init(jax.random.key(8), tokens)["params"]
    one_round = evaluation.eval_variant_config(cfg, "lsh-1")[0]
    want = ReformerLM(cfg).apply({"params": params}, tokens)
    got = ReformerLM(one_round).apply({"params": params}, tokens, key=jax.random.key(9))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
