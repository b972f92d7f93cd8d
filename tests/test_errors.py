"""Walks the table of docs/errors.md: every command fails with its one documented line.

The commands run in-process through the same `main` functions as their
command lines (no interpreter start-up per row); `python -m MODULE` selects
the main.
"""

import os
import re
import shlex

import pytest

from reformer_jax import cli, convert, evaluate, memory, predict, sample, tokenizer
from tests import inprocess
from tests.conftest import copy_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {
    "reformer_jax.train": cli.train_main,
    "reformer_jax.evaluate": evaluate.main,
    "reformer_jax.memory": memory.main,
    "reformer_jax.sample": sample.main,
    "reformer_jax.predict": predict.main,
    "reformer_jax.convert": convert.main,
    "reformer_jax.tokenizer": tokenizer.main,
}
ROW = re.compile(r"^\| `(?P<expect>[^`]+)` \| `(?P<command>[^`]+)` \|$")


def _rows():
    with open(os.path.join(ROOT, "docs", "errors.md")) as f:
        rows = [m.groupdict() for line in f if (m := ROW.match(line.strip()))]
    assert len(rows) >= 20
    return rows


@pytest.fixture(scope="module")
def places(tmp_path_factory, trained_tiny_run):
    """The placeholders' directories: a finished tiny run, a corrupt copy, a file."""
    base = tmp_path_factory.mktemp("errors")
    run = copy_run(trained_tiny_run, str(base / "run"))
    corrupt = copy_run(run, str(base / "corrupt"))
    for root, _, files in os.walk(os.path.join(corrupt, "checkpoints")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    a_file = base / "a_file"
    a_file.write_text("")
    return {"RUN": run, "CORRUPT": corrupt, "A_FILE": str(a_file)}


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["expect"][:40])
def test_documented_error(row, places, tmp_path, monkeypatch):
    subs = {**places, "NEW": str(tmp_path / "new")}
    fill = lambda text: re.sub(r"\b(RUN|CORRUPT|NEW|A_FILE)\b", lambda m: subs[m.group(1)], text)
    argv = shlex.split(fill(row["command"]))
    assert argv[:2] == ["python", "-m"], argv
    monkeypatch.chdir(ROOT)
    result = inprocess.run(MAINS[argv[2]], *argv[3:])
    assert result.returncode == 2, (row, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.last_line.startswith("error: "), result.stderr
    assert fill(row["expect"]) in result.last_line, result.last_line
