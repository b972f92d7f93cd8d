"""WMT 2014 English-German (Reformer §5, translation) as sequence-to-sequence batches.

The paper trains its reversible Transformer on WMT 2014 English-German and
reports BLEU on newstest2014. The pairs come from tensorflow-datasets,
`wmt14_translate/de-en`, read through `tfds.data_source` (random access over
array_record files, numpy only; no TensorFlow at training time):

    split            tfds split     what it is
    "train"          train          europarl v7, commoncrawl, news-commentary v9
    "eval"/"validation" validation  newstest2013 (3,000 pairs)
    "test"           test           newstest2014 (3,003 pairs, the paper's BLEU set)

Both sides are encoded with one shared SentencePiece vocabulary (the paper
follows tensor2tensor's shared ~32K subword vocabulary), pad id 0, EOS id 1,
no BOS; `texts_for_vocabulary` feeds its training (scripts/wmt14_vocab.py).

Batches (global: on several hosts every host draws the same batch and the
trainer keeps its own rows, reformer_jax/data/__init__.py):

    {"source": int32 [b, s], "source_mask": bool [b, s] (True on real tokens),
     "target": int32 [b, t], "target_weights": float32 [b, t]}

with s = t = seq_len. Every source and every target ends with EOS (1), padding
is 0, target_weights is 1 on the real target tokens including the EOS. The
decoder reads the target shifted right (the model does the shift).

Pairs longer than seq_len (either side, EOS included):
* train: dropped, as tensor2tensor's max_length filter drops them. The
  iterator logs how many it dropped at the end of each pass over the split.
* eval/validation/test: truncated to seq_len - 1 tokens plus EOS, so every
  example counts once; the count is logged when the split is read. BLEU is
  computed on the untruncated text (`wmt14_references`).

Preparing the data (once, on a machine with network; ~1.5 GB of downloads)
-------------------------------------------------------------------------
tfds needs TensorFlow to build the dataset (its `tfds` command does not start
without it), not to read it. In a separate environment:

    pip install tensorflow-cpu "tensorflow-datasets>=4.9.6"
    tfds build wmt14_translate/de-en --data_dir=<data_dir> --file_format=array_record

then train with `wmt14_dataset.data_dir = "<data_dir>"` (or $TFDS_DATA_DIR;
tfds's default is ~/tensorflow_datasets).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from reformer_jax.data import DatasetError, SinglePassIterator, open_tfds_split, tokenizers
from reformer_jax.data.enwik8 import default_data_dir
from reformer_jax.data.tokenizers import Tokenizer

DEFAULT_NAME = "wmt14_translate/de-en"
PAD_ID = 0
EOS_ID = 1
VOCAB_SCRIPT = "python scripts/wmt14_vocab.py"
_SPLITS = {"train": "train", "eval": "validation", "validation": "validation", "test": "test"}

log = logging.getLogger("reformer_jax")

# A pair of encoded sides, each ending with EOS: (int32 [s'], int32 [t']).
Pair = tuple[np.ndarray, np.ndarray]


def default_vocab_file() -> str:
    """Where scripts/wmt14_vocab.py writes the vocabulary: <data dir>/wmt14/spiece.model.

    The data dir is $REFORMER_JAX_DATA, else ~/.cache/reformer_jax.
    """
    return os.path.join(default_data_dir(), "wmt14", "spiece.model")


def tfds_split(split: str) -> str:
    """The tfds split of a dataset split name ("eval" is "validation")."""
    if split not in _SPLITS:
        raise ValueError(f"wmt14: split must be one of {sorted(_SPLITS)}, got {split!r}.")
    return _SPLITS[split]


# --- The vocabulary -------------------------------------------------------------


def load_vocabulary(vocab_file: str | None) -> Tokenizer:
    """The SentencePiece model at `vocab_file` (None: `default_vocab_file()`) as a Tokenizer.

    Raises DatasetError when the file is missing or unreadable, or when its
    ids are not pad 0 and EOS 1 (the batch format's).
    """
    path = os.path.abspath(os.path.expanduser(vocab_file or default_vocab_file()))
    if not os.path.isfile(path):
        raise DatasetError(
            f"wmt14: no SentencePiece vocabulary at {path}; train one (once the data is "
            f"prepared) with `{VOCAB_SCRIPT} --output={path}`, or point "
            "wmt14_dataset.vocab_file at an existing spiece.model."
        )
    try:
        tokenizer = tokenizers.load_sentencepiece(path)
    except tokenizers.TokenizerError:
        raise DatasetError(
            f"wmt14: {path} is not a readable SentencePiece model; train one with "
            f"`{VOCAB_SCRIPT} --output={path}`."
        ) from None
    if (tokenizer.pad_id, tokenizer.eos_id) != (PAD_ID, EOS_ID):
        ids = [-1 if i is None else i for i in (tokenizer.pad_id, tokenizer.eos_id)]
        raise DatasetError(
            f"wmt14: {path} has pad id {ids[0]} and EOS id {ids[1]}; the batches need "
            f"pad {PAD_ID} and EOS {EOS_ID}: train it with `{VOCAB_SCRIPT} --output={path}`."
        )
    return tokenizer


# --- The tfds dataset -----------------------------------------------------------


def _preparation_steps(name: str, data_dir: str) -> str:
    return (
        "Prepare it once, on a machine with network, in an environment that also has "
        "TensorFlow (tfds needs it to build the dataset, not to read it):\n"
        '  pip install tensorflow-cpu "tensorflow-datasets>=4.9.6"\n'
        f"  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
        "Details: the docstring of reformer_jax/data/wmt14.py."
    )


def open_split(split: str, data_dir: str | None = None, name: str = DEFAULT_NAME) -> Sequence:
    """The examples of a split ({language: text}), random access, or a DatasetError."""
    import tensorflow_datasets.translate.wmt14  # noqa: F401 - registers wmt14_translate

    return open_tfds_split(
        name, tfds_split(split), data_dir, label="wmt14", preparation_steps=_preparation_steps
    )


def _text(value: Any) -> str:
    """A tfds Text feature as str (tfds returns bytes or str depending on the reader)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _side(example: dict, language: str) -> str:
    if language not in example:
        raise ValueError(
            f"wmt14: the examples have languages {sorted(example)}, not {language!r}; set "
            "source_language and target_language to two of them."
        )
    return _text(example[language])


def encode_pair(
    example: dict, tokenizer: Tokenizer, source_language: str, target_language: str
) -> Pair:
    """An example's two sides as token ids, each with EOS appended."""
    eos = np.asarray([EOS_ID], np.int32)
    src = np.concatenate([tokenizer.encode(_side(example, source_language)), eos])
    tgt = np.concatenate([tokenizer.encode(_side(example, target_language)), eos])
    return src.astype(np.int32), tgt.astype(np.int32)


def truncate(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """ids cut to seq_len tokens, the last one EOS (ids already end with EOS)."""
    if len(ids) <= seq_len:
        return ids
    return np.concatenate([ids[: seq_len - 1], [EOS_ID]]).astype(np.int32)


def make_batch(pairs: Sequence[Pair], batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    """Rows for `pairs` (at most batch_size, each side at most seq_len), then filler rows.

    Filler rows are all padding: source_mask False, target_weights 0, so they count nowhere.
    """
    source = np.full((batch_size, seq_len), PAD_ID, np.int32)
    target = np.full((batch_size, seq_len), PAD_ID, np.int32)
    src_len = np.zeros(batch_size, np.int64)
    tgt_len = np.zeros(batch_size, np.int64)
    for row, (src, tgt) in enumerate(pairs):
        source[row, : len(src)], target[row, : len(tgt)] = src, tgt
        src_len[row], tgt_len[row] = len(src), len(tgt)
    positions = np.arange(seq_len)
    return {
        "source": source,
        "source_mask": positions < src_len[:, None],  # [b, s]
        "target": target,
        "target_weights": (positions < tgt_len[:, None]).astype(np.float32),  # [b, t]
    }


class ShuffledPairs:
    """Endless training batches read from one stream of shuffled epochs.

    Epoch e visits the split in the order `np.random.default_rng([seed, e]).permutation(n)`;
    stream position p is example `order(p // n)[p % n]`. A batch takes the next
    pairs of the stream that fit seq_len (too long ones are skipped and
    counted), so `batch_at(p)` is a pure function of (seed, p) and a position
    restores the stream exactly.
    """

    def __init__(
        self,
        source: Sequence,
        tokenizer: Tokenizer,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        languages: tuple[str, str],
    ):
        self.source, self.tokenizer, self.languages = source, tokenizer, languages
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.num_examples = len(source)
        self._orders: dict[int, np.ndarray] = {}
        self.read = 0  # pairs read by this process in the current epoch
        self.dropped = 0  # of those, too long

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of epoch `epoch`, in visiting order."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a batch spans at most two epochs (unless b > n)
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.num_examples)
        return self._orders[epoch]

    def batch_at(self, position: int) -> tuple[dict[str, np.ndarray], int]:
        """The batch starting at stream position `position`, and the position after it."""
        pairs: list[Pair] = []
        skipped_in_a_row = 0
        while len(pairs) < self.batch_size:
            epoch, offset = divmod(position, self.num_examples)
            example = self.source[int(self.order(epoch)[offset])]
            position += 1
            src, tgt = encode_pair(example, self.tokenizer, *self.languages)
            self.read += 1
            if max(len(src), len(tgt)) <= self.seq_len:
                pairs.append((src, tgt))
                skipped_in_a_row = 0
            else:
                self.dropped += 1
                skipped_in_a_row += 1
                if skipped_in_a_row >= self.num_examples:
                    raise DatasetError(
                        f"wmt14: no train pair fits seq_len {self.seq_len} (EOS included); "
                        "raise seq_len (ReformerConfig.max_len)."
                    )
            if offset == self.num_examples - 1:
                log.info(
                    "wmt14 train: end of epoch %d: dropped %d of the %d pairs read in it "
                    "(a side longer than seq_len %d tokens, EOS included)",
                    epoch,
                    self.dropped,
                    self.read,
                    self.seq_len,
                )
                self.read = self.dropped = 0
        return make_batch(pairs, self.batch_size, self.seq_len), position


class StreamIterator(Iterator[dict[str, np.ndarray]]):
    """Iterates `stream.batch_at`; its state is the next stream position."""

    def __init__(self, stream: ShuffledPairs, position: int = 0):
        self.stream, self.position = stream, position

    def __next__(self) -> dict[str, np.ndarray]:
        batch, self.position = self.stream.batch_at(self.position)
        return batch

    def get_state(self) -> dict[str, int]:
        return {"position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class OrderedPairs:
    """One pass over encoded pairs in split order; the last batch is topped up with filler rows."""

    def __init__(self, pairs: Sequence[Pair], batch_size: int, seq_len: int):
        self.pairs, self.batch_size, self.seq_len = pairs, batch_size, seq_len
        self.num_batches = -(-len(pairs) // batch_size)

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """Batch number `index` (0 <= index < num_batches)."""
        start = index * self.batch_size
        pairs = self.pairs[start : start + self.batch_size]
        return make_batch(pairs, self.batch_size, self.seq_len)


@tokenizers.declare(tokenizers.RUN_SENTENCEPIECE)
def wmt14_dataset(
    *,
    split: str,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    data_dir: str | None = None,
    vocab_file: str | None = None,
    source_language: str = "en",
    target_language: str = "de",
    name: str = DEFAULT_NAME,
) -> Iterator[dict[str, np.ndarray]]:
    """WMT 2014 translation pairs as a dataset factory (train.dataset_fn).

    split "train": endless batches, shuffled per epoch by `seed`, pairs with a
    side over seq_len tokens dropped (ShuffledPairs); state {"position":
    stream position}. "eval"/"validation" (newstest2013) and "test"
    (newstest2014): one ordered pass with long sides truncated, the last
    batch filled with rows of weight 0, then StopIteration; state
    {"position": batch index}; `seed` unused.
    vocab_file: a SentencePiece model with pad 0 and EOS 1, shared by both
    languages (None: `default_vocab_file()`). data_dir: tfds's data dir.
    Raises DatasetError when the vocabulary or the dataset is missing.
    """
    split = tfds_split(split)
    if batch_size <= 0 or seq_len < 2:
        raise ValueError(
            f"wmt14: batch_size must be positive and seq_len >= 2 (a token and EOS), "
            f"got {batch_size}, {seq_len}."
        )
    if source_language == target_language:
        raise ValueError(f"wmt14: source and target language are both {source_language!r}.")
    tokenizer = load_vocabulary(vocab_file)
    source = open_split(split, data_dir, name)
    languages = (source_language, target_language)
    if split == "train":
        stream = ShuffledPairs(
            source,
            tokenizer,
            batch_size=batch_size,
            seq_len=seq_len,
            seed=seed,
            languages=languages,
        )
        log.info(
            "wmt14 train: %d pairs; pairs with a side longer than seq_len %d (EOS included) "
            "are dropped, counted at the end of each epoch",
            len(source),
            seq_len,
        )
        return StreamIterator(stream)
    pairs = [encode_pair(source[i], tokenizer, *languages) for i in range(len(source))]
    too_long = sum(max(len(s), len(t)) > seq_len for s, t in pairs)
    log.info(
        "wmt14 %s: %d pairs, %d with a side longer than seq_len %d (EOS included) truncated",
        split,
        len(pairs),
        too_long,
        seq_len,
    )
    pairs = [(truncate(s, seq_len), truncate(t, seq_len)) for s, t in pairs]
    return SinglePassIterator(OrderedPairs(pairs, batch_size, seq_len))


def wmt14_references(
    split: str = "test",
    data_dir: str | None = None,
    *,
    source_language: str = "en",
    target_language: str = "de",
    name: str = DEFAULT_NAME,
) -> tuple[list[str], list[str]]:
    """(sources, references): a split's raw text, in the order of its eval batches.

    BLEU compares detokenized translations of `sources` with `references`
    (reformer_jax/bleu.py); the text is untruncated.
    """
    source = open_split(split, data_dir, name)
    examples = [source[i] for i in range(len(source))]
    return (
        [_side(ex, source_language) for ex in examples],
        [_side(ex, target_language) for ex in examples],
    )


def texts_for_vocabulary(
    data_dir: str | None = None,
    *,
    languages: tuple[str, ...] = ("en", "de"),
    max_pairs: int | None = 1_000_000,
    seed: int = 0,
    name: str = DEFAULT_NAME,
) -> Iterator[str]:
    """Sentences of the train split for a shared vocabulary: each language's side of each pair.

    max_pairs: read that many pairs, drawn without replacement by `seed` and
    visited in split order (None: all of them, ~4.5M); SentencePiece samples
    its input anyway, and a sample keeps the read short.
    """
    source = open_split("train", data_dir, name)
    n = len(source)
    if max_pairs is None or max_pairs >= n:
        indices = np.arange(n)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_pairs, replace=False))
    for i in indices:
        example = source[int(i)]
        for language in languages:
            yield _side(example, language)
