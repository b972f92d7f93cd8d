"""The trainer and its CLI: end to end, resume, bad input, one compilation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import optim, train
from reformer_jax.data import synthetic
from reformer_jax.model import ReformerConfig, ReformerLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "data", "tiny.gin")


def _cli(*args, env=None, timeout=300):
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 3-step tiny run (checkpoints at steps 2 and 3), trained once."""
    wd = str(tmp_path_factory.mktemp("trained") / "run")
    result = _cli(f"--gin_file={TINY}", f"--workdir={wd}")
    assert result.returncode == 0, result.stderr
    return wd


def _copy_of(trained, tmp_path):
    wd = str(tmp_path / "run")
    shutil.copytree(trained, wd)
    return wd


def test_end_to_end_then_resume(tmp_path):
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
    second = _cli(f"--gin_file={TINY}", f"--workdir={wd}", "--gin_param=train.steps=5")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stderr
    assert sorted(_losses(wd)) == [1, 2, 3, 4, 5]
    assert _checkpoint_steps(wd) == [3, 4, 5]


def test_killed_run_resumes_with_identical_losses(tmp_path):
    common = [
        f"--gin_file={TINY}",
        "--gin_param=train.steps=12",
        "--gin_param=train.checkpoint_every=3",
    ]
    ref = str(tmp_path / "ref")
    assert _cli(*common, f"--workdir={ref}").returncode == 0
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reformer_jax.train",
            *common,
            f"--workdir={killed}",
            "--gin_param=train.steps=1000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not [s for s in _checkpoint_steps(killed) if s >= 6]:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [s for s in _checkpoint_steps(killed) if s >= 6], "no checkpoint before the kill"
    assert _cli(*common, f"--workdir={killed}").returncode == 0
    want, got = _losses(ref), _losses(killed)
    assert sorted(want) == list(range(1, 13))
    for step in range(1, 13):
        assert got[step] == want[step], (step, got[step], want[step])


def _bad(tmp_path, *args):
    wd = str(tmp_path / "bad")
    result = _cli(f"--gin_file={TINY}", f"--workdir={wd}", *args)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.strip().splitlines() if ln]
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1]


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
    result = _cli(f"--gin_file={TINY}", f"--workdir={target}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "workdir" in result.stderr.strip().splitlines()[-1]


def test_bad_config_leaves_checkpoints_alone(trained, tmp_path):
    wd = _copy_of(trained, tmp_path)
    before = _checkpoint_steps(wd)
    bad = _cli(f"--gin_file={TINY}", f"--workdir={wd}", "--gin_param=ReformerConfig.n_heads=0")
    assert bad.returncode != 0 and "n_heads" in bad.stderr
    assert _checkpoint_steps(wd) == before == [2, 3]


def test_length_not_a_multiple_of_the_chunk_trains(tmp_path):
    wd = str(tmp_path / "odd")
    result = _cli(
        f"--gin_file={TINY}",
        f"--workdir={wd}",
        "--gin_param=SEQ_LEN = 30",
        "--gin_param=train.steps = 2",
    )
    assert result.returncode == 0, result.stderr
    assert all(np.isfinite(v) for v in _losses(wd).values())


def test_corrupt_latest_checkpoint_falls_back(trained, tmp_path):
    wd = _copy_of(trained, tmp_path)
    latest = os.path.join(wd, "checkpoints", "3")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    result = _cli(f"--gin_file={TINY}", f"--workdir={wd}", "--gin_param=train.steps=4")
    assert result.returncode == 0, result.stderr
    assert "unreadable" in result.stderr
    assert 4 in _losses(wd) and 3 in _checkpoint_steps(wd)


def _tiny_setup(schedule, learning_rate, warmup_steps, **cfg_changes):
    """A one-layer model, its optimizer and a fresh TrainState."""
    cfg = ReformerConfig(
        vocab_size=8,
        max_len=32,
        d_model=16,
        d_ff=32,
        n_heads=2,
        d_head=8,
        n_layers=1,
        chunk_len=8,
        local_chunk_len=8,
        **cfg_changes,
    )
    model = ReformerLM(cfg)
    lr = optim.make_schedule(schedule, learning_rate=learning_rate, warmup_steps=warmup_steps)
    opt = optim.make_optimizer("adam", schedule=lr)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    state = train.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
    return model, opt, lr, state


def test_train_step_compiles_once():
    model, opt, lr, state = _tiny_setup("rsqrt", 0.05, 2, dropout=0.1)
    data = synthetic.duplication_dataset(
        split="train", batch_size=4, seq_len=32, seed=0, vocab_size=8
    )

    @chex.assert_max_traces(n=1)
    def step(state, batch, key):
        return train.train_step(state, batch, key, model=model, optimizer=opt, schedule=lr)

    step = jax.jit(step, donate_argnums=0)
    losses = []
    for _ in range(3):
        state, metrics = step(state, next(data), jax.random.key(1))
        losses.append(float(metrics["nll"] / metrics["weight"]))
    assert int(state.step) == 3 and all(np.isfinite(losses))


def test_gradient_accumulation_equals_one_big_batch():
    # Local attention and no dropout: micro-batch i draws its keys from
    # fold_in(step_key, i), so LSH rotations would differ from the whole batch's.
    model, opt, lr, state = _tiny_setup("constant", 1e-2, 0, attention_kinds=("local",))
    batch = synthetic.DuplicationTask(32, 8, 8, seed=3).batch(0)
    run = lambda k: train.train_step(
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


@pytest.mark.parametrize("devices", [8])
def test_eight_devices_match_one_and_checkpoint_restores_on_one(tmp_path, devices):
    def run(workdir, n, steps):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        result = _cli(
            f"--gin_file={TINY}",
            f"--workdir={workdir}",
            f"--gin_param=train.steps={steps}",
            env=env,
        )
        assert result.returncode == 0, result.stderr
        return _losses(workdir)

    one = run(str(tmp_path / "one"), 1, 4)
    many_dir = str(tmp_path / "many")
    many = run(many_dir, devices, 3)
    for step in (1, 2, 3):
        np.testing.assert_allclose(many[step], one[step], rtol=1e-5)
    # The 8-device checkpoint restores on one device and continues identically.
    resumed = run(many_dir, 1, 4)
    np.testing.assert_allclose(resumed[4], one[4], rtol=1e-5)


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints(trained, tmp_path):
    wd = _copy_of(trained, tmp_path)
    # An absurd learning rate from step 4 on drives the parameters to inf.
    result = _cli(
        f"--gin_file={TINY}",
        f"--workdir={wd}",
        "--gin_param=train.steps=8",
        "--gin_param=train.learning_rate=1e35",
        "--gin_param=train.schedule='constant'",
        "--gin_param=train.warmup_steps=0",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "non-finite" in last and "at step" in last, last
    assert _checkpoint_steps(wd) == [2, 3]
