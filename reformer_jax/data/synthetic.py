"""The paper's duplication task (Reformer §5, Table 2).

Each sequence is `0 w 0 w` with the symbols of w drawn uniformly from
{1, ..., N}; with length L, |w| = L/2 - 1 (L = 1024 gives the paper's 511).
Loss and accuracy count only the second copy of w: a model can predict it
exactly only by attending L/2 positions back, which LSH attention must find
by hashing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reformer_jax.data import IndexedIterator


@dataclasses.dataclass(frozen=True)
class DuplicationTask:
    """Batches of the duplication task, a pure function of (seed, index).

    seq_len: L (even, >= 4). vocab_size: N + 1 (symbol 0 is the separator).
    """

    seq_len: int
    vocab_size: int
    batch_size: int
    seed: int = 0

    def __post_init__(self):
        if self.seq_len < 4 or self.seq_len % 2:
            raise ValueError(
                f"duplication task: seq_len must be even and >= 4, got {self.seq_len}."
            )
        if self.vocab_size < 2:
            raise ValueError(f"duplication task: vocab_size must be >= 2, got {self.vocab_size}.")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index`: {"tokens": int32 [b, L], "weights": float32 [b, L]}."""
        half = self.seq_len // 2
        rng = np.random.default_rng([self.seed, index])
        w = rng.integers(1, self.vocab_size, size=(self.batch_size, half - 1), dtype=np.int32)
        zero = np.zeros((self.batch_size, 1), np.int32)
        tokens = np.concatenate([zero, w, zero, w], axis=1)
        weights = np.zeros(tokens.shape, np.float32)
        weights[:, half + 1 :] = 1.0
        return {"tokens": tokens, "weights": weights}


def duplication_dataset(
    *, split: str, batch_size: int, seq_len: int, seed: int, vocab_size: int = 128
) -> IndexedIterator:
    """The duplication task as a dataset factory (train.dataset_fn).

    The eval split draws from a different seed stream than train, so the
    model is evaluated on sequences it has not seen.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"duplication task: split must be 'train' or 'eval', got {split!r}.")
    stream = seed if split == "train" else seed + 1_000_003
    return IndexedIterator(DuplicationTask(seq_len, vocab_size, batch_size, stream))
