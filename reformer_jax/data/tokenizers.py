"""Text <-> token ids for the commands that read or write text (predict, sample).

Tokenizer                      encode(text) -> ids, decode(ids) -> text, vocab_size
BYTES                          UTF-8 bytes, ids 0..255 (enwik8, the stdlib corpus)
LISTOPS                        reformer_jax/data/listops.py's 16-token vocabulary
for_dataset(name) -> Tokenizer | None
                               the tokenizer of a dataset factory's gin name;
                               None where the data has no text (ids only)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from reformer_jax.data import listops


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A named pair of functions between text and int32 token ids."""

    name: str
    vocab_size: int
    encode: Callable[[str], np.ndarray]
    decode: Callable[[Sequence[int]], str]


def _encode_bytes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def _decode_bytes(ids: Sequence[int]) -> str:
    return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")


BYTES = Tokenizer("bytes", 256, _encode_bytes, _decode_bytes)
LISTOPS = Tokenizer("listops", listops.VOCAB_SIZE, listops.encode, listops.decode)

# Dataset factories (by their gin names) whose examples are text.
_BY_DATASET = {
    "enwik8_dataset": BYTES,
    "stdlib_dataset": BYTES,
    "listops_dataset": LISTOPS,
    # A run's own SentencePiece model (spiece.model), not a fixed vocabulary.
    "wmt14_dataset": None,
}


def for_dataset(name: str) -> Tokenizer | None:
    """The tokenizer of the dataset factory called `name` in gin, or None (ids only)."""
    return _BY_DATASET.get(name)
