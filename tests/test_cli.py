"""The command-line tools: memory planner, evaluate, sweep."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_GIN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_GIN


def _run(*cmd, timeout=300):
    return subprocess.run(
        [sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_memory_planner_json_and_errors():
    result = _run("-m", "reformer_jax.memory", f"--gin_file={TINY}", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert set(plan) >= {"params_bytes", "optimizer_bytes", "temp_bytes", "total_bytes"}
    # Adam keeps two float32 moments per parameter.
    assert plan["optimizer_bytes"] >= 2 * plan["params_bytes"]
    assert plan["total_bytes"] >= plan["params_bytes"] + plan["optimizer_bytes"]
    bad = _run(
        "-m", "reformer_jax.memory", f"--gin_file={TINY}", "--gin_param=ReformerConfig.n_layers = 3"
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "multiple of the attention cycle" in bad.stderr


@pytest.mark.slow
def test_sweep_then_evaluate(tmp_path):
    root = str(tmp_path / "sweep")
    result = _run(
        "scripts/sweep.py",
        f"--gin_file={TINY}",
        "--sweep",
        "N_HASHES=[1,2]",
        "--gin_param=train.steps=2",
        "--gin_param=train.final_eval=('lsh-1',)",
        f"--root={root}",
        "--parallel=2",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.strip().splitlines()
    assert table[0].startswith("| N_HASHES | exit | step")
    assert len(table) == 4 and table[2].startswith("| 1 | 0 | 2 |")
    assert table[3].startswith("| 2 | 0 | 2 |")
    workdir = os.path.join(root, "N_HASHES=2")
    assert "N_HASHES = 2" in open(os.path.join(workdir, "config.gin")).read()

    ev = _run(
        "-m",
        "reformer_jax.evaluate",
        f"--workdir={workdir}",
        "--variants",
        "full",
        "lsh-4",
        "--json",
    )
    assert ev.returncode == 0, ev.stderr
    out = json.loads(ev.stdout)
    assert out["step"] == 2 and set(out["results"]) == {"Full", "LSH-4"}
    assert 0.0 <= out["results"]["LSH-4"]["accuracy"] <= 1.0
    missing = _run("-m", "reformer_jax.evaluate", f"--workdir={tmp_path / 'nothing'}")
    assert missing.returncode == 2 and "config.gin not found" in missing.stderr


def _required_task_arguments():
    """(gin name, argument) for every argument a shipped task cannot do without."""
    import dataclasses

    from reformer_jax import tasks

    names = [n for n, v in vars(tasks).items() if isinstance(v, type) and issubclass(v, tasks.Task)]
    out = []
    for name in names:
        cls = getattr(tasks, name)
        if not dataclasses.is_dataclass(cls) or cls is tasks.Task:
            continue
        for f in dataclasses.fields(cls):
            no_default = f.default is dataclasses.MISSING
            if f.init and no_default and f.default_factory is dataclasses.MISSING:
                out.append((name, f.name))
    return out


def test_every_required_task_argument_is_named_as_a_binding(tmp_path):
    """train.task = @X() without X's required argument says which binding to add."""
    from reformer_jax import cli

    from . import inprocess

    required = _required_task_arguments()
    assert ("ClassificationTask", "n_classes") in required
    for name, arg in required:
        result = inprocess.run(
            cli.train_main,
            f"--gin_file={TINY}",
            f"--workdir={tmp_path / name}",
            f"--gin_param=train.task = @{name}()",
        )
        assert result.returncode == 2, result.stderr
        assert f"{name} needs {arg}: bind {name}.{arg} = ..." in result.last_line, result.stderr
        assert "missing" not in result.last_line
