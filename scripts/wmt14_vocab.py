"""Trains the shared English-German SentencePiece vocabulary for WMT 2014.

    python scripts/wmt14_vocab.py [--data_dir=<tfds data dir>] [--output=PATH]
        [--vocab_size=32000] [--max_pairs=1000000]

The paper's translation model (Reformer §5) uses one ~32K subword vocabulary
shared by source and target, as tensor2tensor did. This trains a SentencePiece
unigram model on English and German sentences of the prepared tfds train split
(reformer_jax/data/wmt14.py, `texts_for_vocabulary`) with the ids the batches
need: pad 0, EOS 1, unknown 2, no BOS. The output defaults to where
`wmt14_dataset` looks for it (<$REFORMER_JAX_DATA or ~/.cache/reformer_jax>/
wmt14/spiece.model).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys

from reformer_jax.data import DatasetError, tokenizers, wmt14


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
    parser.add_argument("--output", default=None, help="default: " + wmt14.default_vocab_file())
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument(
        "--max_pairs", type=int, default=1_000_000, help="train pairs to read (0: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which pairs are read")
    parser.add_argument("--name", default=wmt14.DEFAULT_NAME, help="tfds dataset name")
    args = parser.parse_args(argv)
    output = os.path.abspath(os.path.expanduser(args.output or wmt14.default_vocab_file()))
    texts = wmt14.texts_for_vocabulary(
        args.data_dir, max_pairs=args.max_pairs or None, seed=args.seed, name=args.name
    )
    try:
        first = next(texts)  # a missing dataset fails here, before SentencePiece starts
        os.makedirs(os.path.dirname(output), exist_ok=True)
        # SentencePiece's unigram model over a uniform sample of 2M sentences, written
        # whole or not at all, with the ids the batches need (pad 0, EOS 1, unk 2, no BOS).
        tokenizers.train_sentencepiece(
            itertools.chain([first], texts),
            output,
            vocab_size=args.vocab_size,
            max_sentences=2_000_000,
            seed=args.seed,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {output} ({args.vocab_size} pieces)")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
