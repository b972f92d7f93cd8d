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
from collections.abc import Callable, Iterator, Sequence
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


def open_tfds_split(
    name: str,
    split: str,
    data_dir: str | None,
    *,
    label: str,
    preparation_steps: Callable[[str, str], str],
) -> Sequence[Any]:
    """`tfds.data_source(name, split=split, data_dir=data_dir)` of array_record files, or a
    DatasetError that says why and, with preparation_steps(name, data_dir), how to fix it.

    label starts the message ("imagenet64", "wmt14"). tfds is imported here, not
    at the top: every CLI start registers the dataset modules with gin, and only
    a run that reads a tfds dataset should pay for importing it.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import constants as tfds_constants

    shown_dir = data_dir if data_dir is not None else tfds_constants.get_default_data_dir()
    try:
        # download=False: a missing dataset stops the run with the preparation
        # steps, instead of starting a download from inside the trainer.
        source = tfds.data_source(
            name,
            split=split,
            data_dir=data_dir,
            download=False,
            builder_kwargs={"file_format": "array_record"},
        )
    except Exception as err:  # tfds signals "not here" with several exception types
        first_line = next(iter(str(err).strip().splitlines()), "")
        if isinstance(err, tfds.core.DatasetNotFoundError):
            problem = "is not a dataset tfds knows"
        else:
            problem = f"is not prepared as array_record files under data_dir {shown_dir!r}"
        # from None: the reason is in the message; tfds's traceback adds only noise.
        raise DatasetError(
            f"{label}: dataset {name!r} (split {split!r}) {problem} "
            f"(tfds: {type(err).__name__}: {first_line[:300]}).\n"
            f"{preparation_steps(name, shown_dir)}"
        ) from None
    if len(source) == 0:
        raise DatasetError(f"{label}: split {split!r} of {name!r} under {shown_dir!r} is empty.")
    return source


def host_shard(batch: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    """This host's rows of a global batch: every array sliced along axis 0."""
    return {name: value[rows] for name, value in batch.items()}
