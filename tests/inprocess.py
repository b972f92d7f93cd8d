"""Run a command-line `main` inside the test process, as its subprocess would run."""

from __future__ import annotations

import contextlib
import dataclasses
import io

from reformer_jax import cli, convert, evaluate, memory, predict, sample, tokenizer


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stderr.strip().splitlines() if ln]
        return lines[-1] if lines else ""


def run(main, *argv: str) -> Result:
    """cli.run_main(main, argv) with stdout/stderr captured and the exit status returned.

    Exceptions other than SystemExit propagate (a traceback is a test failure).
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.run_main(main, list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def train(*argv: str) -> Result:
    """`python -m reformer_jax.train ARGV`, in-process."""
    return run(cli.train_main, *argv)


# `python -m MODULE` -> the main it runs: what the docs' command tables name.
MAINS = {
    "reformer_jax.train": cli.train_main,
    "reformer_jax.evaluate": evaluate.main,
    "reformer_jax.memory": memory.main,
    "reformer_jax.sample": sample.main,
    "reformer_jax.predict": predict.main,
    "reformer_jax.convert": convert.main,
    "reformer_jax.tokenizer": tokenizer.main,
}
