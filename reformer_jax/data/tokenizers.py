"""Text <-> token ids: each text dataset's tokenizer, declared on its factory.

Tokenizer                      encode(text) -> ids, decode(ids) -> text, vocab_size,
                               eos_id / pad_id (None where the vocabulary has none)
BYTE_OFFSET                    2: byte b is id b + 2; ids 0 (pad) and 1 (eos) come first
byte_ids(data uint8 [...]) -> int32 [...]
                               bytes as the ids enwik8's and the stdlib corpus's batches hold
BYTES                          UTF-8 text as byte_ids (vocabulary 258: pad 0, eos 1)
RUN_SENTENCEPIECE              what a dataset declares whose text is encoded with the
                               run's own SentencePiece model (WORKDIR/spiece.model): wmt14
declare(tokenizer)             decorator: a dataset factory's text encoding
for_dataset(factory) -> Tokenizer | RUN_SENTENCEPIECE | None
                               what a factory declared; None where its data has no text
SPIECE_FILE                    "spiece.model": a run's SentencePiece vocabulary,
                               in its workdir (as HF checkpoints name it)
load_sentencepiece(path) -> Tokenizer
train_sentencepiece(texts, path, *, vocab_size, ...) -> Tokenizer
                               a new vocabulary: ids pad 0, eos 1, unk 2, no bos
for_run(workdir, factory=None) -> Tokenizer | None
                               workdir/spiece.model if present, else the factory's

Each text dataset's factory declares how its text becomes ids
(`@tokenizers.declare(BYTES)` on enwik8_dataset and stdlib_dataset,
listops.TOKENIZER on listops_dataset, RUN_SENTENCEPIECE on wmt14_dataset),
and its batches are built with that tokenizer's functions, so train,
evaluate, predict and sample, which all ask `for_run`, read and write the
ids the model was trained on.

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
from typing import Any, TypeVar

import numpy as np

from reformer_jax import user_files
from reformer_jax.data import DatasetError, one_line, write_then_rename

# The ids every vocabulary here gives padding and end of sequence: the batches'
# padding (0) and the sequence-to-sequence code's EOS (1). Our SentencePiece
# vocabularies add unk 2; the byte vocabulary puts byte 0 at 2.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A named pair of functions between text and int32 token ids.

    eos_id / pad_id: the vocabulary's end-of-sequence and padding ids, None
    where it has none. `encode` never appends eos; `decode` drops the ids
    that stand for no text (padding, eos, other control ids, ids outside the
    vocabulary such as a masked LM's mask id).
    """

    name: str
    vocab_size: int
    encode: Callable[[str], np.ndarray]
    decode: Callable[[Sequence[int]], str]
    eos_id: int | None = None
    pad_id: int | None = None


class TokenizerError(DatasetError):
    """A vocabulary file missing or unreadable; the one-line message says what to do."""


# ----------------------------------------------------------------------------- bytes + 2

BYTE_OFFSET = EOS_ID + 1  # byte b is id b + BYTE_OFFSET: pad and eos come first
_BYTE_VOCAB = 256 + BYTE_OFFSET  # 258 ids


def byte_ids(data: np.ndarray) -> np.ndarray:
    """Bytes (uint8 [...]) -> their token ids (int32 [...]): byte + BYTE_OFFSET."""
    return np.asarray(data, np.uint8).astype(np.int32) + BYTE_OFFSET


def _encode_bytes(text: str) -> np.ndarray:
    return byte_ids(np.frombuffer(text.encode("utf-8"), np.uint8))


def _decode_bytes(ids: Sequence[int]) -> str:
    ids = np.asarray(ids, np.int64).reshape(-1)
    data = ids[(ids >= BYTE_OFFSET) & (ids < _BYTE_VOCAB)] - BYTE_OFFSET
    return data.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


BYTES = Tokenizer("bytes", _BYTE_VOCAB, _encode_bytes, _decode_bytes, EOS_ID, PAD_ID)


# ----------------------------------------------------------------------------- declarations


class _RunSentencePiece:
    def __repr__(self) -> str:
        return "RUN_SENTENCEPIECE"


# A dataset whose text is encoded with the run's own SentencePiece model: the
# vocabulary it was trained with is the workdir's spiece.model (python -m
# reformer_jax.train copies it there, reformer_jax/cli.py `store_vocabulary`).
RUN_SENTENCEPIECE = _RunSentencePiece()

F = TypeVar("F", bound=Callable[..., Any])


def declare(tokenizer: Tokenizer | _RunSentencePiece) -> Callable[[F], F]:
    """Decorator: the decorated dataset factory's text becomes ids with `tokenizer`.

    The factory keeps it as its `tokenizer` attribute, which `for_dataset`
    reads; the factory's batches must hold the ids `tokenizer.encode` gives.
    """

    def mark(factory: F) -> F:
        factory.tokenizer = tokenizer
        return factory

    return mark


def for_dataset(factory: Callable | None) -> Tokenizer | _RunSentencePiece | None:
    """What a dataset factory declared (`declare`), or None: its data has no text (ids only)."""
    return getattr(factory, "tokenizer", None)


# ----------------------------------------------------------------------------- SentencePiece

SPIECE_FILE = "spiece.model"
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
    SentencePiece model, user_files.FileError when it cannot be read (a
    directory, no permission, empty).
    """
    if not os.path.exists(path):
        raise TokenizerError(
            f"{path}: no such file; copy the checkpoint's {SPIECE_FILE} there, or train one "
            "with python -m reformer_jax.tokenizer."
        )
    return _from_proto(user_files.read_bytes(path), path)


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


def for_run(workdir: str, factory: Callable | None = None) -> Tokenizer | None:
    """The tokenizer of a run whose dataset factory is `factory` (None: not known).

    Its workdir's spiece.model when there is one (trained by python -m
    reformer_jax.tokenizer, copied by convert or by train from the dataset's
    vocabulary), else what the factory declared (`for_dataset`): None for
    data without text. A factory that declared RUN_SENTENCEPIECE needs the
    workdir's spiece.model: TokenizerError (one line) without it.
    """
    path = os.path.join(workdir, SPIECE_FILE)
    declared = for_dataset(factory)
    if os.path.exists(path) or declared is RUN_SENTENCEPIECE:
        return load_sentencepiece(path)
    return declared
