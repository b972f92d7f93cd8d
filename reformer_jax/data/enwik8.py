"""enwik8: the first 10^8 bytes of an English Wikipedia dump (Hutter Prize).

The data is `enwik8.zip` from http://mattmahoney.net/dc/enwik8.zip, one member
`enwik8` of exactly 100,000,000 bytes. It is looked up in `data_dir`
($REFORMER_JAX_DATA, else ~/.cache/reformer_jax) as the raw file `enwik8`,
else as `enwik8.zip` (CRC-checked and extracted once), else downloaded. A
corrupt zip or a file of the wrong size is a DatasetError, never trained on.

Splits follow tensor2tensor: the first 90M bytes train, the next 5M
validation, the last 5M test. Token ids are byte + 2 (0 pad, 1 EOS), so the
vocabulary has 258 symbols: the text is encoded with
reformer_jax/data/tokenizers.py's BYTES, which the factory declares. The bytes
are memory-mapped, never copied whole.

Train batches are windows at random offsets, a pure function of
(seed, batch index). Eval batches are consecutive non-overlapping windows that
cover the split exactly once: every byte is a weighted target once, so the
mean weighted NLL over the whole split is its bits per character (in nats).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

from reformer_jax.data import (
    DatasetError,
    IndexedIterator,
    one_line,
    tokenizers,
    write_then_rename,
)

DATA_URL = "http://mattmahoney.net/dc/enwik8.zip"
RAW_NAME = "enwik8"  # the zip's one member, and the extracted file's name
ZIP_NAME = "enwik8.zip"
TOTAL_BYTES = 100_000_000
VOCAB_SIZE = tokenizers.BYTES.vocab_size  # 258: ids = byte + 2 (tokenizers.byte_ids)
PAD_ID = tokenizers.BYTES.pad_id
EOS_ID = tokenizers.BYTES.eos_id
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "eval": "validation",
    "validation": "validation",
    "test": "test",
}
_CHUNK = 1 << 20


def default_data_dir() -> str:
    """$REFORMER_JAX_DATA if set, else ~/.cache/reformer_jax (absolute)."""
    path = os.environ.get("REFORMER_JAX_DATA") or os.path.join("~", ".cache", "reformer_jax")
    return os.path.abspath(os.path.expanduser(path))


def split_bounds(total_bytes: int = TOTAL_BYTES) -> dict[str, tuple[int, int]]:
    """{"train", "validation", "test"} -> (start, end) byte offsets: 90% / 5% / 5%.

    For the real 100,000,000 bytes: [0, 90M), [90M, 95M), [95M, 100M).
    """
    if total_bytes <= 0:
        raise ValueError(f"enwik8: total_bytes must be positive, got {total_bytes}.")
    train_end = total_bytes * 9 // 10
    valid_end = train_end + total_bytes // 20
    return {
        "train": (0, train_end),
        "validation": (train_end, valid_end),
        "test": (valid_end, total_bytes),
    }


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: str) -> None:
    """Fetches `url` to `dest`."""
    with write_then_rename(dest) as out, urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out, _CHUNK)


def _check_zip(zip_path: str, expected_size: int | None, url: str) -> None:
    """Raises DatasetError unless `zip_path` passes its CRCs and holds `enwik8` of expected_size."""
    redo = f"delete {zip_path} and download it again from {url}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            # testzip decompresses every member: a flipped byte fails its CRC here.
            bad = zf.testzip()
            names = zf.namelist()
            size = zf.getinfo(RAW_NAME).file_size if RAW_NAME in names else None
    # zipfile raises NotImplementedError for a compression method it cannot
    # read: that zip is unusable too, not an unfinished code path.
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise DatasetError(
            f"enwik8: {zip_path} is not a readable zip ({one_line(e)}); {redo}."
        ) from e
    if bad is not None:
        raise DatasetError(f"enwik8: {zip_path} is corrupt (CRC mismatch in {bad!r}); {redo}.")
    if size is None:
        raise DatasetError(
            f"enwik8: {zip_path} has no member {RAW_NAME!r} (members: {names[:5]}); {redo}."
        )
    if expected_size is not None and size != expected_size:
        raise DatasetError(
            f"enwik8: {zip_path} member {RAW_NAME!r} has {size:,} bytes, expected "
            f"{expected_size:,}; {redo}."
        )


def _extract(zip_path: str, raw_path: str) -> None:
    """Writes the zip's `enwik8` member to `raw_path`."""
    with (
        zipfile.ZipFile(zip_path) as zf,
        zf.open(RAW_NAME) as src,
        write_then_rename(raw_path) as out,
    ):
        shutil.copyfileobj(src, out, _CHUNK)


def ensure_enwik8(
    data_dir: str | None = None,
    *,
    download: bool = True,
    expected_size: int | None = TOTAL_BYTES,
    sha256: str | None = None,
    url: str = DATA_URL,
) -> str:
    """The path of the verified raw `enwik8` in `data_dir`, fetched and extracted if needed.

    Order: raw `enwik8`; else `enwik8.zip` (CRC-checked, then extracted once);
    else, if `download`, the zip from `url`. expected_size: the raw file's
    size in bytes (None skips the check). sha256: if given, the hex digest the
    raw file's bytes must have. Raises DatasetError with a one-line message
    saying what to fetch and where to put it, or which file to delete.
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    raw_path = os.path.join(data_dir, RAW_NAME)
    zip_path = os.path.join(data_dir, ZIP_NAME)
    fetch = f"download {url} and save it as {zip_path}"

    if not os.path.isfile(raw_path):
        if not os.path.isfile(zip_path):
            if not download:
                raise DatasetError(f"enwik8: neither {raw_path} nor {zip_path} exists; {fetch}.")
            try:
                os.makedirs(data_dir, exist_ok=True)
                _download(url, zip_path)
            except Exception as e:  # noqa: BLE001 - any failure means "fetch it by hand"
                raise DatasetError(
                    f"enwik8: could not download {url} ({one_line(e)}); {fetch}."
                ) from e
        _check_zip(zip_path, expected_size, url)
        try:
            _extract(zip_path, raw_path)
        except OSError as e:
            raise DatasetError(
                f"enwik8: could not extract {zip_path} to {raw_path} ({one_line(e)})."
            ) from e

    redo = f"delete it (and {zip_path} if present) and {fetch}"
    size = os.path.getsize(raw_path)
    if expected_size is not None and size != expected_size:
        raise DatasetError(
            f"enwik8: {raw_path} has {size:,} bytes, expected {expected_size:,}; {redo}."
        )
    if sha256 is not None and (digest := _sha256(raw_path)) != sha256.lower():
        raise DatasetError(
            f"enwik8: {raw_path} has sha256 {digest}, expected {sha256.lower()}; {redo}."
        )
    return raw_path


def load_enwik8(
    data_dir: str | None = None,
    *,
    download: bool = True,
    expected_size: int | None = TOTAL_BYTES,
    sha256: str | None = None,
    url: str = DATA_URL,
) -> np.memmap:
    """All of enwik8 as a read-only uint8 memmap [total_bytes] (see ensure_enwik8)."""
    path = ensure_enwik8(
        data_dir, download=download, expected_size=expected_size, sha256=sha256, url=url
    )
    return np.memmap(path, dtype=np.uint8, mode="r")


def split_bytes(data: np.ndarray, split: str) -> np.ndarray:
    """The bytes of `split` ("train", "eval"/"validation", "test") as a view of `data` [n]."""
    start, end = split_bounds(len(data))[_canonical_split(split)]
    return data[start:end]


def _canonical_split(split: str) -> str:
    if split not in _SPLIT_ALIASES:
        raise ValueError(f"enwik8: split must be one of {sorted(_SPLIT_ALIASES)}, got {split!r}.")
    return _SPLIT_ALIASES[split]


@dataclasses.dataclass(frozen=True)
class TrainWindows:
    """Training batches: windows at random offsets, a pure function of (seed, index).

    data: the split's bytes, uint8 [n] (n >= seq_len). Offsets are uniform in
    [0, n - seq_len]; every position is weighted.
    """

    data: np.ndarray
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self):
        _check_shape(self.batch_size, self.seq_len)
        if self.seq_len > len(self.data):
            raise ValueError(
                f"enwik8: seq_len {self.seq_len} exceeds the split's {len(self.data)} bytes."
            )

    def offsets(self, index: int) -> np.ndarray:
        """Start offsets of batch `index`: int64 [batch_size]."""
        rng = np.random.default_rng([self.seed, index])
        return rng.integers(0, len(self.data) - self.seq_len, size=self.batch_size, endpoint=True)

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index`: {"tokens": int32 [b, L], "weights": float32 [b, L]}."""
        tokens = np.empty((self.batch_size, self.seq_len), np.int32)
        for row, start in enumerate(self.offsets(index)):
            # Reads only these pages.
            tokens[row] = tokenizers.byte_ids(self.data[start : start + self.seq_len])
        return {"tokens": tokens, "weights": np.ones(tokens.shape, np.float32)}


class EvalWindows(Iterator[dict[str, np.ndarray]]):
    """Consecutive non-overlapping windows covering the split once, batch_size per batch.

    data: the split's bytes, uint8 [n]. Window w holds bytes [w*L, (w+1)*L);
    the last one is partial and padded with token 0, weight 0, and the last
    batch is filled with all-zero rows of weight 0, so every batch is
    [batch_size, L] and the weights sum to n over the pass. The state is the
    next window's index.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, position: int = 0):
        _check_shape(batch_size, seq_len)
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.position = position

    @property
    def num_windows(self) -> int:
        return -(-len(self.data) // self.seq_len)

    @property
    def num_batches(self) -> int:
        """Batches in a whole pass (from position 0)."""
        return -(-self.num_windows // self.batch_size)

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.num_windows:
            raise StopIteration
        tokens = np.zeros((self.batch_size, self.seq_len), np.int32)
        weights = np.zeros((self.batch_size, self.seq_len), np.float32)
        for row in range(self.batch_size):
            start = (self.position + row) * self.seq_len
            if start >= len(self.data):
                break
            window = self.data[start : start + self.seq_len]
            tokens[row, : len(window)] = tokenizers.byte_ids(window)
            weights[row, : len(window)] = 1.0
        self.position += self.batch_size
        return {"tokens": tokens, "weights": weights}

    def get_state(self) -> dict[str, int]:
        return {"position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def _check_shape(batch_size: int, seq_len: int) -> None:
    if seq_len <= 0:
        raise ValueError(f"enwik8: seq_len must be positive, got {seq_len}.")
    if batch_size <= 0:
        raise ValueError(f"enwik8: batch_size must be positive, got {batch_size}.")


@tokenizers.declare(tokenizers.BYTES)
def enwik8_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    data_dir: str | None = None,
    download: bool = True,
    expected_size: int | None = TOTAL_BYTES,
    sha256: str | None = None,
) -> IndexedIterator | EvalWindows:
    """enwik8 as a dataset factory (train.dataset_fn).

    split: "train" (random windows from seed), "eval"/"validation" or "test"
    (one ordered pass over the split, then StopIteration; seed unused).
    Batches: {"tokens": int32 [batch_size, seq_len], "weights": float32 [batch_size, seq_len]}.
    """
    name = _canonical_split(split)
    _check_shape(batch_size, seq_len)
    data = split_bytes(
        load_enwik8(data_dir, download=download, expected_size=expected_size, sha256=sha256), name
    )
    if name == "train":
        return IndexedIterator(TrainWindows(data, batch_size, seq_len, seed))
    return EvalWindows(data, batch_size, seq_len)
