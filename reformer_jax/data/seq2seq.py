"""Generated sequence-to-sequence tasks: proof on any CPU that the encoder-decoder learns.

    reverse    source: random symbols           target: the same symbols reversed
    sort       source: random symbols           target: the symbols in ascending order
    copy       source: random symbols (long)    target: the same symbols
    addition   source: digits of a, "+", digits of b     target: digits of a + b

Ids: 0 pads (and starts the decoder), 1 ends a sequence (EOS), symbols are
2..vocab_size-1. In addition the digits 0..9 are ids 2..11 and "+" is 12, so
vocab_size must be at least 13; numbers have 1..n_digits digits, written least
significant digit first by default (`msd_first=False`), so the decoder emits
the sum in the order the carry flows (as the paper's and trax's algorithmic
tasks fix a reading order; `msd_first=True` writes numbers as people do).

Every source and target ends with EOS. Batches (the sequence-to-sequence
format of reformer_jax/tasks.py, Seq2SeqTask):

    {"source": int32 [b, l], "source_mask": bool [b, l],
     "target": int32 [b, l], "target_weights": float32 [b, l]}

with l = seq_len. Training batches are endless, a pure function of (seed,
batch index); "eval"/"validation" and "test" are one pass over `eval_examples`
examples from their own seed streams, the last batch filled with rows of
weight 0 (all padding). Lengths (symbols, EOS excluded) are uniform in
[min_len, max_len]; max_len defaults to seq_len - 1, the longest that fits
with its EOS.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from reformer_jax.data import IndexedIterator, SinglePassIterator

PAD, EOS = 0, 1
FIRST_SYMBOL = 2
PLUS = FIRST_SYMBOL + 10  # addition: digits are ids 2..11
TASKS = ("reverse", "sort", "copy", "addition")
_STREAMS = {"train": 0, "eval": 1_000_003, "validation": 1_000_003, "test": 2_000_006}


@dataclasses.dataclass(frozen=True)
class Seq2SeqExamples:
    """Batches of one generated task, a pure function of (seed, index); see the module docstring.

    num_examples: None for endless batches, else the number of examples
    (batch i then holds examples i*b .. i*b + b - 1; rows past the last are
    filler of weight 0).
    """

    task: str
    seq_len: int
    vocab_size: int
    batch_size: int
    seed: int = 0
    min_len: int = 1
    max_len: int | None = None
    n_digits: int = 10
    msd_first: bool = False
    num_examples: int | None = None

    def __post_init__(self):
        name = f"seq2seq task {self.task!r}"
        if self.task not in TASKS:
            raise ValueError(f"seq2seq task must be one of {TASKS}, got {self.task!r}.")
        if self.batch_size <= 0:
            raise ValueError(f"{name}: batch_size must be positive, got {self.batch_size}.")
        if self.task == "addition":
            if self.vocab_size < PLUS + 1:
                raise ValueError(
                    f"{name}: vocab_size must be >= {PLUS + 1} (pad, EOS, ten digits, '+'), "
                    f"got {self.vocab_size}."
                )
            longest = 2 * self.n_digits + 1  # the source: a, "+", b
            if not 1 <= self.n_digits or longest + 1 > self.seq_len:
                raise ValueError(
                    f"{name}: n_digits={self.n_digits} needs seq_len >= {longest + 1} (two "
                    f"numbers, '+' and EOS), got seq_len={self.seq_len}."
                )
        else:
            if self.vocab_size < FIRST_SYMBOL + 2:
                raise ValueError(
                    f"{name}: vocab_size must be >= {FIRST_SYMBOL + 2} (pad, EOS and two "
                    f"symbols), got {self.vocab_size}."
                )
            if not 1 <= self.min_len <= self.longest <= self.seq_len - 1:
                raise ValueError(
                    f"{name}: lengths must satisfy 1 <= min_len <= max_len <= seq_len - 1 = "
                    f"{self.seq_len - 1} (room for EOS), got min_len={self.min_len}, "
                    f"max_len={self.longest}."
                )
        if self.num_examples is not None and self.num_examples <= 0:
            raise ValueError(f"{name}: num_examples must be positive, got {self.num_examples}.")

    @property
    def longest(self) -> int:
        return self.seq_len - 1 if self.max_len is None else self.max_len

    @property
    def num_batches(self) -> int:
        """Batches of a finite pass (num_examples set)."""
        return -(-self.num_examples // self.batch_size)

    def pairs(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (source, target) symbol sequences of batch `index`, EOS not included."""
        rng = np.random.default_rng([self.seed, index])
        if self.task == "addition":
            return [self._addition(rng) for _ in range(self.batch_size)]
        out = []
        for _ in range(self.batch_size):
            n = int(rng.integers(self.min_len, self.longest, endpoint=True))
            source = rng.integers(FIRST_SYMBOL, self.vocab_size, size=n).astype(np.int32)
            if self.task == "reverse":
                target = source[::-1]
            elif self.task == "sort":
                target = np.sort(source)
            else:
                target = source
            out.append((source, target.copy()))
        return out

    def _addition(self, rng) -> tuple[np.ndarray, np.ndarray]:
        # Each number's digit count is uniform in 1..n_digits, then its digits uniform.
        a, b = (self._number(rng) for _ in range(2))
        source = np.concatenate([self._digits(a), [PLUS], self._digits(b)])
        return source.astype(np.int32), self._digits(a + b)

    def _number(self, rng) -> int:
        n = int(rng.integers(1, self.n_digits, endpoint=True))
        digits = rng.integers(0, 10, size=n)
        digits[0] = rng.integers(1, 10) if n > 1 else digits[0]
        return int("".join(map(str, digits)))

    def _digits(self, value: int) -> np.ndarray:
        digits = [int(c) for c in str(value)]
        if not self.msd_first:
            digits = digits[::-1]
        return np.asarray(digits, np.int32) + FIRST_SYMBOL

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index` in the sequence-to-sequence format."""
        b, l = self.batch_size, self.seq_len
        rows = b
        if self.num_examples is not None:
            rows = min(b, max(self.num_examples - index * b, 0))
        source = np.zeros((b, l), np.int32)
        target = np.zeros((b, l), np.int32)
        for i, (src, tgt) in enumerate(self.pairs(index)[:rows]):
            source[i, : len(src) + 1] = np.append(src, EOS)
            target[i, : len(tgt) + 1] = np.append(tgt, EOS)
        return {
            "source": source,
            "source_mask": source != PAD,
            "target": target,
            "target_weights": (target != PAD).astype(np.float32),
        }


def seq2seq_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int,
    task: str = "reverse",
    vocab_size: int = 16,
    min_len: int = 1,
    max_len: int | None = None,
    n_digits: int = 10,
    msd_first: bool = False,
    eval_examples: int = 1024,
) -> IndexedIterator:
    """A generated task as a dataset factory (train.dataset_fn); see Seq2SeqExamples.

    split "train": endless batches from `seed`; "eval"/"validation" and
    "test": one pass over eval_examples examples of their own seed streams.
    """
    if split not in _STREAMS:
        raise ValueError(f"seq2seq task: split must be one of {sorted(_STREAMS)}, got {split!r}.")
    examples = Seq2SeqExamples(
        task,
        seq_len,
        vocab_size,
        batch_size,
        seed + _STREAMS[split],
        min_len=min_len,
        max_len=max_len,
        n_digits=n_digits,
        msd_first=msd_first,
        num_examples=None if split == "train" else eval_examples,
    )
    if split == "train":
        return IndexedIterator(examples)
    return SinglePassIterator(examples)


def render(ids, task: str = "reverse", msd_first: bool = False) -> str:
    """Token ids as text, up to the first EOS: symbols as s<k>; addition as its digits and '+'."""
    out = []
    for i in ids:
        i = int(i)
        if i in (PAD, EOS):
            break
        if task == "addition":
            out.append("+" if i == PLUS else str(i - FIRST_SYMBOL))
        else:
            out.append(f"s{i - FIRST_SYMBOL}")
    if task == "addition":
        # Each number is written least significant digit first unless msd_first: show it as read.
        parts = "".join(out).split("+")
        return "+".join(p if msd_first else p[::-1] for p in parts)
    return " ".join(out)
