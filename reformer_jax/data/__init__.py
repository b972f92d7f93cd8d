"""Datasets: the duplication task (synthetic.py), enwik8, Imagenet64, Python's
standard library sources (stdlib.py), a generated span task (spans.py), ListOps
and WMT 2014 English-German translation pairs (wmt14.py).

Every dataset factory has the signature

    dataset_fn(*, split, batch_size, seq_len, seed, **options) -> iterator

and yields the dicts its task reads (reformer_jax/tasks.py), for language
models {"tokens": int32 [b, l], "weights": float32 [b, l]}, from an
iterator with a saveable position (`get_state` / `set_state`), so a killed run
resumes on exactly the batch it would have seen next. Batches are global: on a
multi-host run every host draws the same batch and keeps its own rows
(`host_shard`), so the examples a step sees do not depend on the number of
hosts.

A dataset that is missing, unprepared or corrupt raises `DatasetError` with a
one-line message saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np


def one_line(e: BaseException) -> str:
    """An exception as one line for an error message: its type and its text."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def write_then_rename(dest: str) -> Iterator[BinaryIO]:
    """A new binary file beside `dest`, renamed to `dest` only once written whole.

    An interrupted download, extraction or cache write thus never leaves a
    file that looks complete, and concurrent writers each rename a whole file.
    """
    tmp = f"{dest}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        with open(tmp, "xb") as f:  # unlike mkstemp, keeps the umask's permissions
            yield f
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class DatasetError(Exception):
    """A dataset missing, unprepared, corrupt or of the wrong size; the message says what to do."""


class IndexedIterator(Iterator[dict[str, np.ndarray]]):
    """Iterates `source.batch(0), source.batch(1), ...`; its state is the next index.

    `source` is anything with `batch(index) -> {"tokens", "weights"}` that is a
    pure function of the index, so the position alone restores the stream.
    """

    def __init__(self, source: Any, position: int = 0):
        self.source = source
        self.position = position

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.source.batch(self.position)
        self.position += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class SinglePassIterator(IndexedIterator):
    """`IndexedIterator` over `source.batch(i)` for i < source.num_batches, then StopIteration.

    A finite evaluation split: the last batch is filled with rows of weight 0,
    so every batch has the same shape and each example counts once.
    """

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.source.num_batches:
            raise StopIteration
        return super().__next__()


def host_shard(batch: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    """This host's rows of a global batch: every array sliced along axis 0."""
    return {name: value[rows] for name, value in batch.items()}
