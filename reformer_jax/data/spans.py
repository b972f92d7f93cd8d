"""A generated span-extraction task: find the span between two markers.

Each example is a sequence of random symbols of random length (padded with
0 to seq_len) holding one span delimited by an opening and a closing
marker:

    s s s s [ a b c d ] s s s s s 0 0 0          [ = OPEN (1), ] = CLOSE (2)
              ^     ^                            start, end: the first and last
                                                 symbol inside the markers

The target is the span's first and last token inside the markers (as an
extractive question-answering target is the answer's own tokens, not its
surroundings), both inclusive; a span holds at least one symbol, so
start <= end. Symbols are uniform in 3..vocab_size-1 and never equal a
marker. Predicting the start needs the token before each position and the
end the token after it, and the markers are the only cue: a
position-wise network cannot solve it, attention to a neighbour can.

Batches: {"tokens": int32 [b, l], "mask": bool [b, l] (True = real), "start":
int32 [b], "end": int32 [b], "weight": float32 [b]}. Training batches are
endless, a pure function of (seed, batch index); "eval" and "test" are one
pass over `eval_examples` examples drawn from their own seed streams, the
last batch filled with rows of weight 0 (all padding, mask False).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reformer_jax.data import IndexedIterator, SinglePassIterator

PAD, OPEN, CLOSE = 0, 1, 2
FIRST_SYMBOL = 3
_STREAMS = {"train": 0, "eval": 1_000_003, "validation": 1_000_003, "test": 2_000_006}


@dataclasses.dataclass(frozen=True)
class SpanExamples:
    """Batches of the span task, a pure function of (seed, index).

    seq_len: l, the padded length. vocab_size: symbols 3..vocab_size-1 (>= 4).
    min_len: the shortest example (>= 3: a marker, a symbol, a marker);
    lengths are uniform in [min_len, seq_len]. max_span: the longest span
    (default: min_len - 2, so any length fits); span lengths are uniform in
    [1, max_span] and the span's place is uniform in the example.
    num_examples: None for endless batches, else the number of examples
    (batch `i` then holds examples i*b .. i*b + b - 1, and rows past the
    last are filler of weight 0).
    """

    seq_len: int
    vocab_size: int
    batch_size: int
    seed: int = 0
    min_len: int | None = None
    max_span: int | None = None
    num_examples: int | None = None

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"span task: batch_size must be positive, got {self.batch_size}.")
        if self.vocab_size < 4:
            raise ValueError(
                f"span task: vocab_size must be >= 4 (pad, two markers, a symbol), "
                f"got {self.vocab_size}."
            )
        if not 3 <= self.shortest <= self.seq_len:
            raise ValueError(
                f"span task: min_len must be in [3, seq_len={self.seq_len}], got {self.shortest}."
            )
        if not 1 <= self.longest_span <= self.shortest - 2:
            raise ValueError(
                f"span task: max_span must be in [1, min_len - 2 = {self.shortest - 2}], "
                f"got {self.longest_span}."
            )
        if self.num_examples is not None and self.num_examples <= 0:
            raise ValueError(f"span task: num_examples must be positive, got {self.num_examples}.")

    @property
    def shortest(self) -> int:
        return self.seq_len // 2 if self.min_len is None else self.min_len

    @property
    def longest_span(self) -> int:
        return self.shortest - 2 if self.max_span is None else self.max_span

    @property
    def num_batches(self) -> int:
        """Batches of a finite pass (num_examples set)."""
        return -(-self.num_examples // self.batch_size)

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index`: {"tokens", "mask", "start", "end", "weight"}."""
        b, l = self.batch_size, self.seq_len
        rng = np.random.default_rng([self.seed, index])
        rows = b
        if self.num_examples is not None:
            rows = min(b, max(self.num_examples - index * b, 0))
        lengths = rng.integers(self.shortest, l, size=b, endpoint=True)
        spans = rng.integers(1, self.longest_span, size=b, endpoint=True)
        # The opening marker's place: the span and both markers fit in the example.
        opens = (rng.random(b) * (lengths - spans - 1)).astype(np.int64)
        tokens = rng.integers(FIRST_SYMBOL, self.vocab_size, size=(b, l), dtype=np.int32)
        positions = np.arange(l)
        mask = positions[None] < lengths[:, None]
        tokens[~mask] = PAD
        batch_rows = np.arange(b)
        tokens[batch_rows, opens] = OPEN
        tokens[batch_rows, opens + spans + 1] = CLOSE
        start, end = (opens + 1).astype(np.int32), (opens + spans).astype(np.int32)
        weight = np.ones(b, np.float32)
        # Filler rows (past the last example of a finite pass): all padding, weight 0.
        tokens[rows:], mask[rows:], start[rows:], end[rows:], weight[rows:] = PAD, False, 0, 0, 0.0
        return {"tokens": tokens, "mask": mask, "start": start, "end": end, "weight": weight}


def span_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    vocab_size: int = 16,
    min_len: int | None = None,
    max_span: int | None = None,
    eval_examples: int = 1024,
) -> IndexedIterator:
    """The span task as a dataset factory (train.dataset_fn); see SpanExamples.

    split "train": endless batches from `seed`. "eval"/"validation" and
    "test": one pass over eval_examples examples of their own seed streams,
    so evaluation never sees a training example's draw.
    """
    if split not in _STREAMS:
        raise ValueError(f"span task: split must be one of {sorted(_STREAMS)}, got {split!r}.")
    examples = SpanExamples(
        seq_len,
        vocab_size,
        batch_size,
        seed + _STREAMS[split],
        min_len=min_len,
        max_span=max_span,
        num_examples=None if split == "train" else eval_examples,
    )
    if split == "train":
        return IndexedIterator(examples)
    return SinglePassIterator(examples)
