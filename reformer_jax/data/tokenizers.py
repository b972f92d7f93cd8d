"""Text <-> token ids for the commands that read or write text (predict, sample).

Tokenizer                      encode(text) -> ids, decode(ids) -> text, vocab_size,
                               eos_id / pad_id (None where the vocabulary has none)
BYTES                          UTF-8 bytes, ids 0..255 (enwik8, the stdlib corpus)
LISTOPS                        reformer_jax/data/listops.py's 16-token vocabulary
for_dataset(name) -> Tokenizer | None
                               the tokenizer of a dataset factory's gin name;
                               None where the data has no text (ids only)
SPIECE_FILE                    "spiece.model": a run's SentencePiece vocabulary,
                               in its workdir (as HF checkpoints name it)
load_sentencepiece(path) -> Tokenizer
train_sentencepiece(texts, path, *, vocab_size, ...) -> Tokenizer
                               a new vocabulary: ids pad 0, eos 1, unk 2, no bos
for_run(workdir, dataset_name=None) -> Tokenizer | None
                               workdir/spiece.model if present, else for_dataset

SentencePiece (Kudo & Richardson 2018) is the subword vocabulary of the
Reformer paper's text experiments beyond enwik8 (§5: WMT 2014 English-German)
and of HF's google/reformer-crime-and-punishment. Encoding and decoding are
sentencepiece's own, so the ids are the ones the vocabulary's model was
trained on.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from reformer_jax.data import DatasetError, listops, one_line, write_then_rename


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A named pair of functions between text and int32 token ids.

    eos_id / pad_id: the vocabulary's end-of-sequence and padding ids, None
    where it has none (bytes, ListOps). `encode` never appends eos.
    """

    name: str
    vocab_size: int
    encode: Callable[[str], np.ndarray]
    decode: Callable[[Sequence[int]], str]
    eos_id: int | None = None
    pad_id: int | None = None


class TokenizerError(DatasetError):
    """A vocabulary file missing or unreadable; the one-line message says what to do."""


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


# ----------------------------------------------------------------------------- SentencePiece

SPIECE_FILE = "spiece.model"
# Ids of a vocabulary we train: 0 pads and starts a decoder, 1 ends a sequence.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MODEL_TYPES = ("unigram", "bpe", "char", "word")
# sentencepiece's trainer splits its work over this many threads, and the
# result depends on the split (and records it), so it is fixed, not the
# machine's core count: the same text gives the same file everywhere.
_TRAINER_THREADS = 16


class _SentencePiece:
    """A sentencepiece processor built from a serialized model; pickles as those bytes."""

    def __init__(self, proto: bytes):
        import sentencepiece

        self.proto = proto
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        n = self.sp.get_piece_size()
        # decode skips pad, eos and every other control piece (bos, if any).
        self.shown = np.asarray([not self.sp.is_control(i) for i in range(n)], bool)

    def __reduce__(self):
        return (_SentencePiece, (self.proto,))

    def encode(self, text: str) -> np.ndarray:
        """text -> int32 ids [n], no eos."""
        return np.asarray(self.sp.encode(text), np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text; pad, eos and control ids, and ids outside the vocabulary, are dropped."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        inside = (ids >= 0) & (ids < self.shown.size)
        ids = ids[inside]
        return self.sp.decode([int(i) for i in ids[self.shown[ids]]])


def _from_proto(proto: bytes, source: str) -> Tokenizer:
    try:
        sp = _SentencePiece(proto)
    except (RuntimeError, OSError, ValueError, TypeError):
        raise TokenizerError(
            f"{source} is not a SentencePiece model (sentencepiece cannot parse it); give the "
            f"checkpoint's {SPIECE_FILE}, or train one with python -m reformer_jax.tokenizer."
        ) from None
    optional = lambda i: None if i < 0 else int(i)
    return Tokenizer(
        "sentencepiece",
        sp.sp.get_piece_size(),
        sp.encode,
        sp.decode,
        eos_id=optional(sp.sp.eos_id()),
        pad_id=optional(sp.sp.pad_id()),
    )


def load_sentencepiece(path: str) -> Tokenizer:
    """A SentencePiece model file (e.g. a workdir's spiece.model) -> Tokenizer.

    Raises TokenizerError (one line) when the file is missing or is not a
    SentencePiece model.
    """
    if not os.path.isfile(path):
        raise TokenizerError(
            f"{path}: no such file; copy the checkpoint's {SPIECE_FILE} there, or train one "
            "with python -m reformer_jax.tokenizer."
        )
    with open(path, "rb") as f:
        return _from_proto(f.read(), path)


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Every non-blank line of `texts` (each item may hold several lines)."""
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line


def _sample(sentences: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of k sentences (all of them if fewer), in their original order.

    Reservoir sampling (Vitter's algorithm R) with numpy's generator: one
    pass, memory for k sentences, the same sample for the same input and seed.
    """
    rng = np.random.default_rng(seed)
    kept: list[tuple[int, str]] = []
    for i, s in enumerate(sentences):
        if i < k:
            kept.append((i, s))
        else:
            j = int(rng.integers(0, i + 1))
            if j < k:
                kept[j] = (i, s)
    return [s for _, s in sorted(kept)]


def train_sentencepiece(
    texts: Iterable[str],
    path: str,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    max_sentences: int = 1_000_000,
    seed: int = 0,
    normalization: str = "nmt_nfkc",
) -> Tokenizer:
    """Trains a SentencePiece vocabulary on `texts` and writes it to `path` (atomically).

    texts: strings whose non-blank lines are the training sentences.
    vocab_size: pieces in all, including pad (id 0), eos (1) and unk (2);
        there is no bos. The sequence-to-sequence code uses 0 as padding and
        decoder start and 1 as end of sequence.
    model_type: sentencepiece's "unigram" (its default; Kudo 2018), "bpe",
        "char" or "word".
    character_coverage: the share of characters the vocabulary covers
        (1.0: every character seen; the rest become unk).
    max_sentences: at most this many sentences are used, a uniform sample
        drawn with `seed` (`_sample`) when there are more.
    normalization: sentencepiece's normalization rule ("nmt_nfkc": NFKC
        plus whitespace clean-up, its default; "identity": none).
    The trainer runs in this process on the sentences in memory (no
    temporary files) with a fixed thread count, so the same input, settings
    and seed give a byte-identical file. Bad settings, or text too small for
    vocab_size, raise ValueError (one line).
    """
    import sentencepiece

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 4:
        raise ValueError(
            f"vocab_size must be an int >= 4 (pad, eos, unk and at least one piece), "
            f"got {vocab_size!r}."
        )
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}.")
    if not 0 < character_coverage <= 1:
        raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage!r}.")
    if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
        raise ValueError(f"max_sentences must be an int >= 1, got {max_sentences!r}.")
    sentences = _sample(_sentences(texts), max_sentences, seed)
    if not sentences:
        raise ValueError("no text to train a vocabulary on: every line is blank.")
    out = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name=normalization,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            input_sentence_size=0,  # sampled above, reproducibly
            num_threads=_TRAINER_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        # sentencepiece's message ends with its advice, e.g. "Vocabulary size
        # too high (5000). Please set it to a value <= 1234."
        reason = str(e).strip().splitlines()[-1].split("] ")[-1] if str(e).strip() else ""
        raise ValueError(
            f"sentencepiece cannot train a {model_type} vocabulary of {vocab_size} pieces on "
            f"{len(sentences):,} sentences: {reason or one_line(e)}"
        ) from None
    proto = out.getvalue()
    tokenizer = _from_proto(proto, "the trained vocabulary")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with write_then_rename(path) as f:
        f.write(proto)
    return tokenizer


def for_run(workdir: str, dataset_name: str | None = None) -> Tokenizer | None:
    """The tokenizer of a run: its workdir's spiece.model when there is one (trained by
    python -m reformer_jax.tokenizer, or copied by convert), else `for_dataset(dataset_name)`
    (None without a dataset name, or for data without text)."""
    path = os.path.join(workdir, SPIECE_FILE)
    if os.path.exists(path):
        return load_sentencepiece(path)
    return None if dataset_name is None else for_dataset(dataset_name)
