"""Walks the table of docs/errors.md: every command fails with its one documented line.

The commands run in-process through the same `main` functions as their
command lines (no interpreter start-up per row); `python -m MODULE` selects
the main.
"""

import os
import re
import shlex
import shutil
import socket
import tempfile

import pytest

from tests import inprocess
from tests.conftest import copy_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\| `(?P<expect>[^`]+)` \| `(?P<command>[^`]+)` \|$")


def _rows():
    with open(os.path.join(ROOT, "docs", "errors.md")) as f:
        rows = [m.groupdict() for line in f if (m := ROW.match(line.strip()))]
    assert len(rows) >= 20
    return rows


# The bad files every command that reads a user's file is tried on (docs/errors.md).
BAD_FILES = {
    "NOT_UTF8": b'{"text": "ok"}\n{"text": "caf\xe9"}\n',  # Latin-1 on line 2
    "UTF16": '{"text": "ok"}\n'.encode("utf-16"),  # starts with the byte-order mark FF FE
    "EMPTY": b"",
    "BLANK": b"\n \n\n",
}


def _unreadable(path: str) -> str:
    """A file that open() refuses. Permission bits do not stop root (the CI runs tests as
    root), so there it is a Unix socket, which open() refuses for every user (ENXIO)."""
    if os.geteuid() != 0:
        with open(path, "w") as f:
            f.write("text\n")
        os.chmod(path, 0)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)  # leaves the socket file; the socket itself is closed
        server.close()
    with pytest.raises(OSError):
        open(path).close()
    return path


@pytest.fixture(scope="module")
def places(tmp_path_factory, trained_tiny_run):
    """The placeholders' paths: a finished tiny run, a corrupt copy, a file, bad files and
    HF checkpoint directories whose config.json or weights are bad (HF_BAD/<case>)."""
    base = tmp_path_factory.mktemp("errors")
    run = copy_run(trained_tiny_run, str(base / "run"))
    corrupt = copy_run(run, str(base / "corrupt"))
    for root, _, files in os.walk(os.path.join(corrupt, "checkpoints")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    a_file = base / "a_file"
    a_file.write_text("")
    out = {"RUN": run, "CORRUPT": corrupt, "A_FILE": str(a_file)}
    for name, data in BAD_FILES.items():
        (base / name.lower()).write_bytes(data)
        out[name] = str(base / name.lower())
    (base / "a_dir").mkdir()
    out["A_DIR"] = str(base / "a_dir")
    # A short path: a Unix socket's name has at most 107 bytes.
    out["UNREADABLE"] = _unreadable(os.path.join(tempfile.mkdtemp(), "unreadable"))
    hf = base / "hf_bad"
    for case in ("not_utf8", "utf16", "empty", "dir", "unreadable", "empty_weights"):
        shutil.copytree(os.path.join(ROOT, "tests", "data", "hf", "short"), hf / case)
    (hf / "not_utf8" / "config.json").write_bytes(b'{"name": "caf\xe9"}')
    (hf / "utf16" / "config.json").write_bytes('{"a": 1}'.encode("utf-16"))
    (hf / "empty" / "config.json").write_bytes(b"")
    os.remove(hf / "dir" / "config.json")
    (hf / "dir" / "config.json").mkdir()
    os.remove(hf / "unreadable" / "config.json")
    _unreadable(str(hf / "unreadable" / "config.json"))
    (hf / "empty_weights" / "model.safetensors").write_bytes(b"")
    out["HF_BAD"] = str(hf)
    return out


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["expect"][:40])
def test_documented_error(row, places, tmp_path, monkeypatch):
    subs = {**places, "NEW": str(tmp_path / "new")}
    fill = lambda text: re.sub(rf"\b({'|'.join(subs)})\b", lambda m: subs[m.group(1)], text)
    argv = shlex.split(fill(row["command"]))
    assert argv[:2] == ["python", "-m"], argv
    monkeypatch.chdir(ROOT)
    result = inprocess.run(inprocess.MAINS[argv[2]], *argv[3:])
    assert result.returncode == 2, (row, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.last_line.startswith("error: "), result.stderr
    assert fill(row["expect"]) in result.last_line, result.last_line
