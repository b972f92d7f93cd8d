"""Train a SentencePiece vocabulary for a run: writes <workdir>/spiece.model.

    python -m reformer_jax.tokenizer --workdir=DIR --vocab_size=N
        (--text_file=FILE [--text_file=FILE ...] | --stdlib)
        [--max_sentences=1000000] [--model_type=unigram] [--character_coverage=1.0]
        [--normalization=nmt_nfkc] [--seed=0]

The training sentences are the non-blank lines of the text files, or of the
train split of Python's standard library corpus (reformer_jax/data/stdlib.py)
with --stdlib; at most --max_sentences of them, a uniform sample drawn with
--seed. The vocabulary's ids are pad 0, eos 1, unk 2 (no bos); the same text
and flags give the same file (reformer_jax.data.tokenizers.train_sentencepiece).
`sample --prompt`, `predict` and the training code read <workdir>/spiece.model
(`tokenizers.for_run`), so train the vocabulary into the workdir first, then
train the model there. An existing spiece.model is never replaced: the ids of
a run's checkpoints mean that vocabulary.

Another source of text is one more flag in the `source` group of `_parser`
and one more branch in `texts_from_args`, returning an iterable of strings.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterable, Sequence

from reformer_jax import cli, user_files
from reformer_jax.data import stdlib, tokenizers

NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.tokenizer", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="the run's workdir (gets spiece.model)")
    parser.add_argument(
        "--vocab_size", type=int, required=True, help="pieces in all, pad, eos and unk included"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--text_file", action="append", help="UTF-8 text, one sentence a line (repeatable)"
    )
    source.add_argument(
        "--stdlib", action="store_true", help="the train split of Python's standard library"
    )
    parser.add_argument("--max_sentences", type=int, default=1_000_000)
    parser.add_argument("--model_type", default="unigram", choices=tokenizers.MODEL_TYPES)
    parser.add_argument("--character_coverage", type=float, default=1.0)
    parser.add_argument("--normalization", default="nmt_nfkc", choices=NORMALIZATIONS)
    parser.add_argument("--seed", type=int, default=0, help="for the sentence sample")
    return parser


def texts_from_args(args: argparse.Namespace) -> Iterable[str]:
    """The text the flags name, as an iterable of strings (read lazily).

    Every --text_file is checked now (reformer_jax/user_files.py: it exists, is a
    readable file, not empty); a line that is not UTF-8 stops the training with
    one line naming FILE:LINE when it is read.
    """
    if args.stdlib:
        return [stdlib.stdlib_text("train")]
    files = [user_files.text_lines(p, "--text_file", "one sentence a line") for p in args.text_file]
    return itertools.chain.from_iterable(files)


def main(argv: Sequence[str]) -> None:
    args = _parser().parse_args(argv)
    if args.vocab_size < 4:
        raise cli.UsageError(
            f"--vocab_size must be >= 4 (pad, eos, unk and at least one piece), "
            f"got {args.vocab_size}"
        )
    if args.max_sentences < 1:
        raise cli.UsageError(f"--max_sentences must be >= 1, got {args.max_sentences}")
    if not 0 < args.character_coverage <= 1:
        raise cli.UsageError(
            f"--character_coverage must be in (0, 1], got {args.character_coverage}"
        )
    path = os.path.join(args.workdir, tokenizers.SPIECE_FILE)
    if os.path.exists(path):
        raise cli.UsageError(
            f"{path} already exists (the vocabulary of that run's ids); give a new --workdir, "
            "or delete the file first"
        )
    texts = texts_from_args(args)
    try:
        os.makedirs(args.workdir, exist_ok=True)
    except OSError as e:
        raise cli.UsageError(
            f"cannot write to workdir {args.workdir!r}: {e.strerror}; choose a writable --workdir"
        ) from None
    try:
        tokenizer = tokenizers.train_sentencepiece(
            texts,
            path,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            max_sentences=args.max_sentences,
            seed=args.seed,
            normalization=args.normalization,
        )
    except ValueError as e:
        raise cli.UsageError(str(e).rstrip(".")) from None
    print(
        f"wrote {path}: a {args.model_type} vocabulary of {tokenizer.vocab_size} pieces "
        f"(pad {tokenizer.pad_id}, eos {tokenizer.eos_id}, unk {tokenizers.UNK_ID})"
    )


if __name__ == "__main__":
    cli.run_main(main)
