"""A non-editable install runs the shipped configs from any directory.

`pip install --no-deps --target SITE .` builds and installs the package the
way a user's `pip install .` does (the dependencies are those of this test
environment), then `python -m reformer_jax.train --gin_file=configs/copy.gin`
runs from a directory with no configs/ in it: the gin file and its
`include 'base.gin'` must come from the installed package data.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # installs the package into a fresh virtual environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_package_runs_copy_gin_from_another_directory(tmp_path):
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"--target={site}", ROOT],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    assert (site / "reformer_jax" / "configs" / "base.gin").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import reformer_jax; print(reformer_jax.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "reformer_jax.train",
            "--gin_file=configs/copy.gin",
            "--workdir=run",
            "--gin_param=train.steps=2",
            "--gin_param=train.batch_size=4",
            "--gin_param=train.log_every=1",
            "--gin_param=train.eval_every=0",
            "--gin_param=train.final_eval=()",
            "--gin_param=train.progress=False",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    with open(elsewhere / "run" / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2]
    assert "ReformerConfig.d_model = 128" in (elsewhere / "run" / "config.gin").read_text()


def test_gin_file_falls_back_to_the_package_and_search_paths_resolve_includes(
    tmp_path, monkeypatch
):
    import gin
    import pytest

    from reformer_jax import cli

    # A name under configs/ that is not a path from here resolves to the shipped file.
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_gin_file("configs/copy.gin") == os.path.join(cli.config_dir(), "copy.gin")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "shared.gin").write_text("ReformerConfig.d_ff = 96\n")
    (tmp_path / "mine.gin").write_text("include 'copy.gin'\ninclude 'shared.gin'\n")
    cli.parse_gin(["mine.gin"], [], search_paths=[str(lib)])
    assert cli.model_config().d_ff == 96 and cli.model_config().d_model == 128
    assert gin.query_parameter("train.steps") == 1500
    with pytest.raises(cli.UsageError, match="--gin_search_paths"):
        cli.parse_gin(["mine.gin"], [], search_paths=[str(tmp_path / "nowhere")])
