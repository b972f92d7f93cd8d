"""ListOps (Nangia & Bowman 2018) as in the Long Range Arena (Tay et al. 2020, §3.1).

An example is a nested list operation, its answer a digit (10 classes):

    [MAX 2 9 [MIN 4 7 ] 0 ]  ->  9

Operators: MIN, MAX, MED (median), SM (sum modulo 10); operands are digits or
nested operations. MED of an even count is LRA's `int(np.median(args))`: the
mean of the two middle values, rounded down (MED 3 8 = 5, MED 1 2 = 1).

Generation follows LRA's generator (google-research/long-range-arena,
lra_benchmarks/data/listops.py, read at commit 29833a1):

* a node at depth < max_depth is an operator with probability 0.25, with
  2..max_args arguments (uniform) and a uniform operator; otherwise, and
  always at depth max_depth, it is a uniform digit. The root is at depth 1,
  so no tree is deeper than max_depth levels (digits included).
* a tree's length counts its tokens without parentheses: 1 per digit, 2 per
  operator (`[OP` and `]`). Trees are drawn until one has
  min_len < length < max_len (strictly, as LRA: 501..1999 tokens at the
  defaults); duplicates are dropped.
* LRA's settings, the defaults here: max_depth 10, max_args 10, min_length
  500, max_length 2000; 96,000 train, 2,000 validation and 2,000 test
  examples (the script's flag defaults).

What differs from LRA: the random numbers come from numpy, so the examples
are drawn as LRA draws them but are not those of LRA's released files (whose
text `encode` reads). Each split is drawn from its own stream seeded by
(data_seed, split), so a split does not change when another split's size
does; validation excludes test examples and train excludes both (LRA draws
one set of distinct trees and cuts it). Generating a draw stops as soon as it
reaches max_len tokens, which rejects exactly the trees LRA rejects.

Tokens. LRA's files hold a binarised form with parentheses,
`( ( ( [MAX 2 ) 9 ) ] )`; the parentheses only restate the bracketing, and
LRA's length limits count tokens without them, so the vocabulary has none
(`encode` skips them, so LRA's text encodes directly). `[MAX` and `]` are one
token each: id 0 pads, ids 1..10 are the digits 0..9, then `[MIN`, `[MAX`,
`[MED`, `[SM`, `]` (VOCAB_SIZE 16).

Files. Each split is generated once into
`<data_dir>/listops/<settings>/<split>.npz` (token ids concatenated, offsets,
labels) beside `<split>.json` (settings, counts, label histogram and the
arrays' sha256); data_dir defaults to $REFORMER_JAX_DATA, else
~/.cache/reformer_jax. A file that does not match its JSON is a DatasetError.
Generation runs at about 1,000 examples a second or two on one CPU core
(measured at LRA's settings): the first train request takes 2-4 minutes,
and LRA's train split takes 54 MB.

Batches: {"tokens": int32 [b, l] (0-padded), "mask": bool [b, l] (True on
real tokens), "label": int32 [b], "weight": float32 [b] (0 on filler rows)}.
An example longer than seq_len is an error rather than truncated (LRA
truncates at 2000, which never cuts its data): a cut example's label can no
longer be computed from its tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np

from reformer_jax.data import (
    DatasetError,
    IndexedIterator,
    SinglePassIterator,
    one_line,
    tokenizers,
    write_then_rename,
)
from reformer_jax.data.enwik8 import default_data_dir

OPERATORS = ("MIN", "MAX", "MED", "SM")  # LRA's order
OPERATOR_PROB = 0.25  # P(a node at depth < max_depth is an operator): LRA's VALUE_P
NUM_CLASSES = 10
PAD_ID = 0
VOCAB = ("<pad>", *(str(d) for d in range(10)), *(f"[{op}" for op in OPERATORS), "]")
VOCAB_SIZE = len(VOCAB)  # 16
DIGIT_OFFSET = 1  # id of digit d = d + DIGIT_OFFSET
OPERATOR_IDS = {op: VOCAB.index(f"[{op}") for op in OPERATORS}
END_ID = VOCAB.index("]")
SPLITS = ("train", "validation", "test")
GENERATOR_VERSION = 1  # bump when the same settings would give different data
_SPLIT_ALIASES = {
    "train": "train",
    "eval": "validation",
    "validation": "validation",
    "test": "test",
}
_TOKEN_IDS = {token: i for i, token in enumerate(VOCAB) if i != PAD_ID}
_MAX_MISSES = 1_000_000  # consecutive rejected or repeated draws before giving up
# The string evaluator's operators, written as LRA computes them.
_TEXT_OPERATORS = {
    "MIN": min,
    "MAX": max,
    "MED": lambda args: int(np.median(args)),
    "SM": lambda args: int(np.sum(args)) % 10,
}

log = logging.getLogger("reformer_jax")

# A tree is a digit or (operator, *arguments): ("MAX", 2, 9, ("MIN", 4, 7), 0).
Tree = int | tuple


# --- Trees -------------------------------------------------------------------


def value(tree: Tree) -> int:
    """The answer of a tree, a digit 0..9."""
    if isinstance(tree, int):
        return tree
    op, *args = tree
    values = [value(a) for a in args]
    if op == "MIN":
        return min(values)
    if op == "MAX":
        return max(values)
    if op == "SM":
        return sum(values) % 10
    if op == "MED":
        ordered = sorted(values)
        n = len(ordered)
        return (ordered[(n - 1) // 2] + ordered[n // 2]) // 2
    raise ValueError(f"listops: unknown operator {op!r}; expected one of {OPERATORS}.")


def depth(tree: Tree) -> int:
    """Levels of a tree, digits included: 1 for a digit, 2 for [SM 1 2 ]."""
    if isinstance(tree, int):
        return 1
    return 1 + max(depth(a) for a in tree[1:])


def tree_ids(tree: Tree) -> list[int]:
    """A tree's token ids, [OP first and ] last for each operator."""
    out: list[int] = []

    def walk(node: Tree) -> None:
        if isinstance(node, int):
            out.append(node + DIGIT_OFFSET)
            return
        out.append(OPERATOR_IDS[node[0]])
        for arg in node[1:]:
            walk(arg)
        out.append(END_ID)

    walk(tree)
    return out


def to_text(tree: Tree) -> str:
    """A tree as text: "[MAX 2 9 [MIN 4 7 ] 0 ]"."""
    return decode(tree_ids(tree))


class _TooLong(Exception):
    """A draw reached max_len tokens: it will be rejected whatever follows."""


class _TreeSampler:
    """LRA's random tree, drawing its uniforms from a numpy Generator in blocks.

    One uniform decides operator or digit, one the digit, one the argument
    count and one the operator. They come from blocks of 2^16 through a
    C-level iterator: one numpy call, or one Python call, per scalar would
    dominate the time of a draw.
    """

    def __init__(self, rng: np.random.Generator, max_depth: int, max_args: int, max_len: int):
        self.max_depth, self.max_args, self.max_len = max_depth, max_args, max_len
        blocks = iter(lambda: rng.random(1 << 16).tolist(), None)  # endless
        self.uniform = itertools.chain.from_iterable(blocks).__next__
        self.length = 0

    def draw(self) -> Tree:
        """One tree of fewer than max_len tokens (its length in self.length), or _TooLong."""
        self.length = 0
        return self.node(1)

    def node(self, level: int) -> Tree:
        if level < self.max_depth and self.uniform() < OPERATOR_PROB:
            n_args = 2 + int(self.uniform() * (self.max_args - 1))  # uniform in 2..max_args
            op = OPERATORS[int(self.uniform() * len(OPERATORS))]
            self.length += 2  # [OP and ]
            if self.length >= self.max_len:
                raise _TooLong
            args = [self.node(level + 1) for _ in range(n_args)]
            return (op, *args)
        self.length += 1
        if self.length >= self.max_len:
            raise _TooLong
        return int(self.uniform() * 10)


def random_trees(
    rng: np.random.Generator, *, min_len: int, max_len: int, max_depth: int, max_args: int
) -> Iterator[Tree]:
    """Endless independent trees of min_len < len(tree_ids(tree)) < max_len (LRA's sampling).

    Raises ValueError after a million draws in a row outside the range.
    """
    sampler = _TreeSampler(rng, max_depth, max_args, max_len)
    misses = 0
    while True:
        try:
            tree = sampler.draw()
        except _TooLong:
            tree = None
        if tree is not None and sampler.length > min_len:
            misses = 0
            yield tree
            continue
        misses += 1
        if misses >= _MAX_MISSES:
            raise ValueError(
                f"listops: {misses:,} draws in a row had no tree of {min_len} < length < "
                f"{max_len} tokens (max_depth {max_depth}, max_args {max_args}); lower min_len "
                "or raise max_depth or max_args."
            )


# --- Tokens and the string evaluator ------------------------------------------


def encode(text: str) -> np.ndarray:
    """Token ids, int32 [n], of a whitespace-separated expression; "(" and ")" are skipped."""
    ids = []
    for token in text.split():
        if token in ("(", ")"):
            continue
        if token not in _TOKEN_IDS:
            raise ValueError(f"listops: unknown token {token!r}; the vocabulary is {VOCAB[1:]}.")
        ids.append(_TOKEN_IDS[token])
    return np.asarray(ids, np.int32)


def decode(ids: Iterable[int]) -> str:
    """The text of token ids, padding (id 0) and ids outside the vocabulary dropped."""
    return " ".join(VOCAB[int(i)] for i in ids if PAD_ID < int(i) < VOCAB_SIZE)


# The vocabulary as the tokenizer the dataset factory declares (predict reads "text" with it).
TOKENIZER = tokenizers.Tokenizer("listops", VOCAB_SIZE, encode, decode, pad_id=PAD_ID)


def evaluate(text: str) -> int:
    """The answer of an expression given as text, computed from the text alone.

    A stack machine over the tokens, independent of `value`: `[OP` opens a
    frame, a digit joins the innermost frame, `]` closes it and passes its
    result outward. MED is LRA's `int(np.median(args))`. Parentheses are
    skipped, so LRA's own text evaluates too. Raises ValueError on text
    that is not one well-formed expression.
    """
    frames: list[tuple[str, list[int]]] = []
    results: list[int] = []
    for token in text.split():
        if token in ("(", ")"):
            continue
        if token.startswith("[") and token[1:] in OPERATORS:
            frames.append((token[1:], []))
            continue
        if token == "]":
            if not frames:
                raise ValueError(f"listops: unmatched ']' in {text[:80]!r}.")
            op, args = frames.pop()
            if not args:
                raise ValueError(f"listops: [{op} without arguments in {text[:80]!r}.")
            digit = _TEXT_OPERATORS[op](args)
        elif len(token) == 1 and "0" <= token <= "9":
            digit = int(token)
        else:
            raise ValueError(f"listops: unknown token {token!r} in {text[:80]!r}.")
        (frames[-1][1] if frames else results).append(digit)
    if frames or len(results) != 1:
        raise ValueError(
            f"listops: {text[:80]!r} is not one complete expression "
            f"({len(frames)} unclosed operators, {len(results)} top-level values)."
        )
    return results[0]


# --- Settings and splits ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ListOpsSettings:
    """What determines a generated ListOps dataset; the defaults are LRA's.

    data_seed seeds generation (train's shuffling has its own seed).
    n_eval: the size of validation and of test each. Lengths satisfy
    min_len < length < max_len.
    """

    data_seed: int = 0
    n_train: int = 96_000
    n_eval: int = 2_000
    min_len: int = 500
    max_len: int = 2000
    max_depth: int = 10
    max_args: int = 10

    def __post_init__(self):
        if self.n_train <= 0 or self.n_eval <= 0:
            raise ValueError(
                f"listops: n_train and n_eval must be positive, got {self.n_train}, {self.n_eval}."
            )
        if self.max_depth < 2 or self.max_args < 2:
            raise ValueError(
                "listops: max_depth and max_args must be >= 2 (an operator takes 2..max_args "
                f"arguments below the root), got {self.max_depth}, {self.max_args}."
            )
        if not 0 <= self.min_len < self.max_len - 1:
            raise ValueError(
                f"listops: need 0 <= min_len < max_len - 1 (lengths lie strictly between), "
                f"got min_len {self.min_len}, max_len {self.max_len}."
            )
        longest = 1
        for _ in range(self.max_depth - 1):
            longest = 2 + self.max_args * longest
        if longest <= self.min_len:
            raise ValueError(
                f"listops: no tree of max_depth {self.max_depth} and max_args {self.max_args} "
                f"is longer than {longest} tokens, so none exceeds min_len {self.min_len}; "
                "lower min_len or raise max_depth or max_args."
            )
        if self.data_seed < 0:
            raise ValueError(f"listops: data_seed must be >= 0, got {self.data_seed}.")

    def size(self, split: str) -> int:
        return self.n_train if split == "train" else self.n_eval

    def cache_name(self) -> str:
        """The settings as a directory name: 'seed0_n96000-2000_len500-2000_depth10_args10'."""
        return (
            f"seed{self.data_seed}_n{self.n_train}-{self.n_eval}_len{self.min_len}-{self.max_len}"
            f"_depth{self.max_depth}_args{self.max_args}"
        )


@dataclasses.dataclass(frozen=True)
class ListOpsSplit:
    """A generated split: n examples with their ids concatenated.

    ids: uint8 [total]; offsets: int64 [n + 1] (example i is
    ids[offsets[i]:offsets[i + 1]]); labels: uint8 [n].
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example: int64 [n]."""
        return np.diff(self.offsets)

    def example(self, i: int) -> np.ndarray:
        """Example i's token ids, uint8 [length]."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def label_counts(self) -> np.ndarray:
        """Examples per answer: int64 [NUM_CLASSES]."""
        return np.bincount(self.labels, minlength=NUM_CLASSES)


def canonical_split(split: str) -> str:
    """ "train", "validation" ("eval" is an alias) or "test"."""
    if split not in _SPLIT_ALIASES:
        raise ValueError(f"listops: split must be one of {sorted(_SPLIT_ALIASES)}, got {split!r}.")
    return _SPLIT_ALIASES[split]


def generate_split(
    split: str, settings: ListOpsSettings, exclude: Iterable[bytes] = ()
) -> ListOpsSplit:
    """settings.size(split) distinct trees from the stream seeded by (data_seed, split).

    exclude: token-id strings (uint8 bytes) to skip, e.g. another split's examples.
    """
    split = canonical_split(split)
    n = settings.size(split)
    rng = np.random.default_rng([settings.data_seed, SPLITS.index(split)])
    trees = random_trees(
        rng,
        min_len=settings.min_len,
        max_len=settings.max_len,
        max_depth=settings.max_depth,
        max_args=settings.max_args,
    )
    seen = set(exclude)
    chunks, labels = [], []
    repeats = 0
    for tree in trees:
        ids = bytes(tree_ids(tree))
        if ids in seen:
            repeats += 1
            if repeats >= _MAX_MISSES:
                raise ValueError(
                    f"listops: {repeats:,} repeated trees in a row after {len(labels)} of {n} "
                    f"{split} examples; these settings allow too few distinct trees: raise "
                    "max_len, max_depth or max_args, or lower n_train/n_eval."
                )
            continue
        repeats = 0
        seen.add(ids)
        chunks.append(ids)
        labels.append(value(tree))
        if len(labels) == n:
            break
    lengths = np.fromiter((len(c) for c in chunks), np.int64, len(chunks))
    return ListOpsSplit(
        ids=np.frombuffer(b"".join(chunks), np.uint8),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        labels=np.asarray(labels, np.uint8),
    )


# --- The cache ----------------------------------------------------------------


def _digest(data: ListOpsSplit) -> str:
    """sha256 of the arrays' bytes (not of the npz, whose zip headers hold write times)."""
    h = hashlib.sha256()
    for array in (data.ids, data.offsets, data.labels):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _describe(split: str, settings: ListOpsSettings) -> dict:
    """What the JSON beside a split must record for that split to be reused."""
    return {
        "dataset": "listops",
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "settings": dataclasses.asdict(settings),
    }


def split_paths(
    split: str, settings: ListOpsSettings | None = None, data_dir: str | None = None
) -> tuple[str, str]:
    """(npz path, json path) of a split's cache files."""
    settings = settings or ListOpsSettings()
    root = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    directory = os.path.join(root, "listops", settings.cache_name())
    split = canonical_split(split)
    return os.path.join(directory, f"{split}.npz"), os.path.join(directory, f"{split}.json")


def _read_cached(split: str, settings: ListOpsSettings, npz: str, meta: str) -> ListOpsSplit | None:
    """The cached split, None if absent or written for other settings; DatasetError if corrupt."""
    if not (os.path.isfile(npz) and os.path.isfile(meta)):
        return None
    fix = f"delete {npz} and {meta}; the next run generates them again"
    try:
        with open(meta) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"listops: {meta} is not readable JSON ({one_line(e)}); {fix}.") from e
    if not isinstance(record, dict):
        raise DatasetError(f"listops: {meta} does not hold a JSON object; {fix}.")
    if {k: record.get(k) for k in _describe(split, settings)} != _describe(split, settings):
        return None
    try:
        with np.load(npz) as f:
            data = ListOpsSplit(ids=f["ids"], offsets=f["offsets"], labels=f["labels"])
    except Exception as e:  # noqa: BLE001 - any failure to read means "regenerate it"
        raise DatasetError(f"listops: {npz} is not a readable npz ({one_line(e)}); {fix}.") from e
    if _digest(data) != record.get("sha256"):
        raise DatasetError(f"listops: {npz} does not match the sha256 recorded in {meta}; {fix}.")
    n = settings.size(split)
    if not (
        data.ids.dtype == data.labels.dtype == np.uint8
        and data.offsets.shape == (n + 1,)
        and data.labels.shape == (n,)
        and data.offsets[0] == 0
        and data.offsets[-1] == len(data.ids)
        and np.all(data.lengths > settings.min_len)
        and np.all(data.lengths < settings.max_len)
        and data.labels.max() < NUM_CLASSES
        and data.ids.max() < VOCAB_SIZE
    ):
        raise DatasetError(f"listops: {npz} does not hold {n} {split} examples as expected; {fix}.")
    return data


def load_split(
    split: str, settings: ListOpsSettings | None = None, data_dir: str | None = None
) -> ListOpsSplit:
    """A split, generated and cached on first use, read from the cache after.

    Validation is generated to exclude test examples, train to exclude both,
    so the first train request also generates the two evaluation splits.
    Raises DatasetError when a cached file is corrupt.
    """
    split = canonical_split(split)
    settings = settings or ListOpsSettings()
    npz, meta = split_paths(split, settings, data_dir)
    data = _read_cached(split, settings, npz, meta)
    if data is not None:
        return data

    later = SPLITS[SPLITS.index(split) + 1 :]
    exclude = set()
    for other in later:
        held_out = load_split(other, settings, data_dir)
        exclude.update(held_out.example(i).tobytes() for i in range(len(held_out)))
    log.info("listops: generating %d %s examples into %s", settings.size(split), split, npz)
    start = time.perf_counter()
    data = generate_split(split, settings, exclude)
    seconds = time.perf_counter() - start

    os.makedirs(os.path.dirname(npz), exist_ok=True)
    with write_then_rename(npz) as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, ids=data.ids, offsets=data.offsets, labels=data.labels)
    counts = data.label_counts()
    record = {
        **_describe(split, settings),
        "examples": len(data),
        "tokens": int(data.offsets[-1]),
        "shortest": int(data.lengths.min()),
        "longest": int(data.lengths.max()),
        "label_counts": counts.tolist(),
        "majority_class_rate": float(counts.max() / len(data)),
        "generation_seconds": round(seconds, 2),
        "sha256": _digest(data),
    }
    with write_then_rename(meta) as f:
        f.write((json.dumps(record, indent=1) + "\n").encode())
    return data


def majority_class_rate(
    split: str = "test", settings: ListOpsSettings | None = None, data_dir: str | None = None
) -> float:
    """The accuracy of always answering the split's most frequent label (generates if needed)."""
    counts = load_split(split, settings, data_dir).label_counts()
    return float(counts.max() / counts.sum())


# --- Batches ------------------------------------------------------------------


def _batch(data: ListOpsSplit, examples: np.ndarray, batch_size: int, seq_len: int) -> dict:
    """Rows for `examples` (int [k], k <= batch_size), then filler rows of weight 0.

    {"tokens": int32 [b, l], "mask": bool [b, l], "label": int32 [b], "weight": float32 [b]}.
    """
    k = len(examples)
    starts = np.zeros(batch_size, np.int64)
    lengths = np.zeros(batch_size, np.int64)
    starts[:k] = data.offsets[examples]
    lengths[:k] = data.offsets[examples + 1] - starts[:k]
    mask = np.arange(seq_len) < lengths[:, None]  # [b, l]
    where = np.minimum(starts[:, None] + np.arange(seq_len), len(data.ids) - 1)  # [b, l]
    tokens = np.where(mask, data.ids[where], PAD_ID).astype(np.int32)
    label = np.zeros(batch_size, np.int32)
    label[:k] = data.labels[examples]
    weight = np.zeros(batch_size, np.float32)
    weight[:k] = 1.0
    return {"tokens": tokens, "mask": mask, "label": label, "weight": weight}


class ShuffledExamples:
    """Endless training batches, a pure function of (seed, batch index).

    The split is read as one stream of epochs; epoch e visits it in the order
    `np.random.default_rng([seed, e]).permutation(n)`, and batch i holds
    stream positions i * batch_size ... (i + 1) * batch_size - 1, so batches
    run across epoch boundaries and no example is dropped.
    """

    def __init__(self, data: ListOpsSplit, batch_size: int, seq_len: int, seed: int):
        self.data, self.batch_size, self.seq_len, self.seed = data, batch_size, seq_len, seed
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of epoch `epoch`, in visiting order."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a batch spans at most two epochs (unless b > n)
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(
                len(self.data)
            )
        return self._orders[epoch]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index` (every row real, weight 1)."""
        stream = np.arange(index * self.batch_size, (index + 1) * self.batch_size)
        epochs, positions = np.divmod(stream, len(self.data))
        examples = np.array(
            [self.order(int(e))[p] for e, p in zip(epochs, positions, strict=True)], np.int64
        )
        return _batch(self.data, examples, self.batch_size, self.seq_len)


class OrderedExamples:
    """One pass over a split in order; the last batch is filled with rows of weight 0."""

    def __init__(self, data: ListOpsSplit, batch_size: int, seq_len: int):
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.num_batches = -(-len(data) // batch_size)

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index` (0 <= index < num_batches)."""
        start = index * self.batch_size
        examples = np.arange(start, min(start + self.batch_size, len(self.data)))
        return _batch(self.data, examples, self.batch_size, self.seq_len)


@tokenizers.declare(TOKENIZER)
def listops_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    data_dir: str | None = None,
    data_seed: int = 0,
    n_train: int = 96_000,
    n_eval: int = 2_000,
    min_len: int = 500,
    max_len: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> IndexedIterator:
    """ListOps as a dataset factory (train.dataset_fn); the defaults are LRA's.

    split "train": endless batches shuffled per epoch by `seed`. "eval" /
    "validation" and "test": one ordered pass, then StopIteration, the last
    batch filled with rows of weight 0 (`seed` unused). Both save their next
    batch index as {"position": int}. data_seed and the size and shape
    settings choose the generated data (see ListOpsSettings); it is
    generated into data_dir on first use.
    Batches: {"tokens": int32 [b, seq_len], "mask": bool [b, seq_len],
    "label": int32 [b], "weight": float32 [b]}.
    """
    split = canonical_split(split)
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(
            f"listops: batch_size and seq_len must be positive, got {batch_size}, {seq_len}."
        )
    settings = ListOpsSettings(data_seed, n_train, n_eval, min_len, max_len, max_depth, max_args)
    data = load_split(split, settings, data_dir)
    longest = int(data.lengths.max())
    if longest > seq_len:
        too_long = int(np.sum(data.lengths > seq_len))
        raise DatasetError(
            f"listops: {too_long} of the {len(data)} {split} examples are longer than seq_len "
            f"{seq_len} (the longest has {longest} tokens); raise seq_len to {longest} or set "
            f"max_len to {seq_len + 1} (lengths stay below max_len)."
        )
    if split == "train":
        return IndexedIterator(ShuffledExamples(data, batch_size, seq_len, seed))
    return SinglePassIterator(OrderedExamples(data, batch_size, seq_len))
