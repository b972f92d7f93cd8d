"""Reading a file a user named on the command line: one line when it is bad.

    FileError                      the one-line error (the commands print it, exit status 2)
    check_file(path, what)         exists, not a directory, can be opened, not empty
    read_bytes(path, what) -> bytes
    read_text(path, what) -> str   UTF-8 text
    text_lines(path, what, holding="text") -> Iterator[str]
                                   its lines, each ending "\\n" but perhaps the last, read lazily

`what` is how the user named the file, a flag ("--input") or None (a file
found by name, e.g. an HF checkpoint's config.json): messages start
"--input=PATH" or "PATH". Every command that reads a file the user gave
(predict --input, sample --source_file, tokenizer --text_file, convert's
config.json, weights and spiece.model) reads it through here, so each case
reads the same everywhere (docs/errors.md lists them):

- missing: "PATH: no such file";
- a directory: "PATH is a directory; give a file";
- cannot be opened (permissions, a socket): "PATH: cannot read it (REASON)";
- empty (0 bytes, or a byte-order mark alone): "PATH is empty; give HOLDING";
- text that is not UTF-8: "PATH:LINE: not UTF-8 (byte 0xNN at byte C of the
  line); save the file as UTF-8", or, for UTF-16 text, "PATH starts with a
  UTF-16 byte-order mark: save it as UTF-8".

A UTF-8 byte-order mark (EF BB BF, which some Windows editors write) at the
start of a text file is dropped, not refused: it is no character of the text,
and a JSON-lines file that starts with one is otherwise no JSON. Text lines
end "\\n" ("\\r\\n" is read as "\\n").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class FileError(Exception):
    """A file the user named is missing, unreadable, empty or not UTF-8; one line says which."""


def _label(path: str, what: str | None) -> str:
    return path if what is None else f"{what}={path}"


def _open(path: str, what: str | None, holding: str) -> BinaryIO:
    """The file opened for binary reading, after the checks of `check_file`."""
    label = _label(path, what)
    if not os.path.exists(path):
        raise FileError(f"{label}: no such file")
    if os.path.isdir(path):
        raise FileError(f"{label} is a directory; give a file")
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise FileError(f"{label}: cannot read it ({e.strerror or type(e).__name__})") from None
    # A pipe (e.g. --input=<(command)) has no size and is never called empty here.
    if os.path.isfile(path) and os.fstat(f.fileno()).st_size <= len(UTF8_BOM):
        if f.read() in (b"", UTF8_BOM):
            f.close()
            raise FileError(f"{label} is empty; give {holding}")
        f.seek(0)
    return f


def check_file(path: str, what: str | None = None, holding: str = "a file with content") -> None:
    """FileError unless `path` names an existing, openable, non-empty file (not a directory)."""
    _open(path, what, holding).close()


def read_bytes(path: str, what: str | None = None, holding: str = "a file with content") -> bytes:
    """The whole file, after `check_file`'s checks."""
    with _open(path, what, holding) as f:
        return f.read()


def _decode(raw: bytes, label: str, line: int) -> str:
    if line == 1:
        if raw.startswith(_UTF16_BOMS):
            raise FileError(f"{label} starts with a UTF-16 byte-order mark: save it as UTF-8")
        raw = raw.removeprefix(UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileError(
            f"{label}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
            "line); save the file as UTF-8"
        ) from None
    return text[:-2] + "\n" if text.endswith("\r\n") else text


def read_text(path: str, what: str | None = None, holding: str = "text") -> str:
    """The whole file as UTF-8 text (a leading byte-order mark dropped); FileError if bad."""
    return "".join(text_lines(path, what, holding))


def text_lines(path: str, what: str | None = None, holding: str = "text") -> Iterator[str]:
    """The file's lines as UTF-8 text, decoded as they are read.

    The checks of `check_file` run now, before the first line is asked for; a
    line that is not UTF-8 raises FileError naming PATH:LINE when it is read,
    so the lines before it are used first.
    """
    label = _label(path, what)
    f = _open(path, what, holding)

    def lines() -> Iterator[str]:
        with f:
            for number, raw in enumerate(f, 1):
                yield _decode(raw, label, number)

    return lines()
