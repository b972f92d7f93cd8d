"""A byte corpus that every Python installation ships: its own standard library sources.

The `.py` files of a fixed set of standard-library packages (and the
top-level modules), sorted by path and each followed by a newline, are
concatenated and cut to `max_bytes`. No download, deterministic for a given
Python version (the figures in configs/mlm_cpu.gin are for Python 3.11.7:
266 files, 6.6 MB, of which the default budget keeps the first 4,000,000
bytes). The package list leaves out the test suite and site-packages, so the
corpus is ordinary, current Python source.

Splits are contiguous ranges as for enwik8 (reformer_jax/data/enwik8.py):
the first 90% train, the next 5% validation, the last 5% test. Token ids
are byte + 2 (0 pad, 1 EOS; vocabulary 258: tokenizers.BYTES, which the
factory declares), and the batches are enwik8's:
random windows for training (`TrainWindows`), one ordered pass of
non-overlapping windows for evaluation (`EvalWindows`).
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import numpy as np

from reformer_jax.data import DatasetError, IndexedIterator, tokenizers
from reformer_jax.data.enwik8 import EvalWindows, TrainWindows, split_bounds

# The packages whose modules make the corpus; "" is the standard library's top level.
PACKAGES = (
    "json",
    "email",
    "http",
    "logging",
    "asyncio",
    "unittest",
    "xml",
    "importlib",
    "concurrent",
    "urllib",
    "collections",
    "",
)
DEFAULT_MAX_BYTES = 4_000_000
_SPLITS = {"train": "train", "eval": "validation", "validation": "validation", "test": "test"}


def stdlib_dir() -> Path:
    """The directory of the running Python's standard library sources (sysconfig's "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(lib: Path | None = None) -> list[Path]:
    """The corpus's files: the `.py` files directly in each of PACKAGES, sorted by path."""
    lib = stdlib_dir() if lib is None else Path(lib)
    return sorted(p for d in PACKAGES for p in (lib / d).glob("*.py"))


@functools.lru_cache(maxsize=4)
def stdlib_bytes(max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """The corpus as a read-only uint8 array [<= max_bytes]: the files, each + b"\\n", cut."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"stdlib corpus: max_bytes must be a positive int, got {max_bytes!r}.")
    files = stdlib_files()
    if not files:
        raise DatasetError(
            f"stdlib corpus: no .py files under {stdlib_dir()} (a Python installed without its "
            "library sources); use a Python that ships them, or another dataset."
        )
    parts, size = [], 0
    for path in files:
        if size >= max_bytes:
            break
        parts.append(path.read_bytes() + b"\n")
        size += len(parts[-1])
    data = np.frombuffer(b"".join(parts)[:max_bytes], np.uint8)
    data.flags.writeable = False
    return data


def stdlib_text(split: str = "train", max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """One split of the corpus as text (UTF-8; a character cut at a split's edge is replaced).

    What `python -m reformer_jax.tokenizer --stdlib` trains a vocabulary on:
    the train split, so the vocabulary has not seen the evaluation text.
    """
    if split not in _SPLITS:
        raise ValueError(f"stdlib corpus: split must be one of {sorted(_SPLITS)}, got {split!r}.")
    data = stdlib_bytes(max_bytes)
    start, end = split_bounds(len(data))[_SPLITS[split]]
    return data[start:end].tobytes().decode("utf-8", errors="replace")


@tokenizers.declare(tokenizers.BYTES)
def stdlib_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IndexedIterator | EvalWindows:
    """The standard-library corpus as a dataset factory (train.dataset_fn).

    split: "train" (random windows from seed), "eval"/"validation" or "test"
    (one ordered pass over the split, then StopIteration; seed unused).
    Batches: {"tokens": int32 [batch_size, seq_len], "weights": float32
    [batch_size, seq_len]}, token ids tokenizers.BYTES's (byte + 2).
    """
    if split not in _SPLITS:
        raise ValueError(f"stdlib corpus: split must be one of {sorted(_SPLITS)}, got {split!r}.")
    data = stdlib_bytes(max_bytes)
    start, end = split_bounds(len(data))[_SPLITS[split]]
    part = data[start:end]
    if split == "train":
        if seq_len > len(part):
            raise ValueError(
                f"stdlib corpus: seq_len {seq_len} exceeds the {len(part):,} bytes of the train "
                f"split (max_bytes={max_bytes:,}); raise stdlib_dataset.max_bytes."
            )
        return IndexedIterator(TrainWindows(part, batch_size, seq_len, seed))
    return EvalWindows(part, batch_size, seq_len)
