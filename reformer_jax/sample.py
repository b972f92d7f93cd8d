"""Sample text from a run's checkpoint (a trained or a converted model).

    python -m reformer_jax.sample --workdir=DIR --prompt="In 1965, " [--num_tokens=200]
        [--num_samples=1] [--temperature=1.0] [--top_k=K] [--top_p=P] [--greedy]
        [--seed=0] [--n_hashes=R] [--step=S] [--prompt_ids=3,17,4]

Reads the newest readable checkpoint of DIR (`checkpoints.load_run`: its
parameters and model config, no gin needed) and continues the prompt with
`sampling.generate`. Byte-level models are read and written as text: vocab
256 means id = byte, vocab 258 (enwik8: 0 pad, 1 EOS) id = byte + 2. Other
vocabularies take --prompt_ids and print ids.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from reformer_jax import checkpoints, cli, sampling

BYTE_OFFSETS = {256: 0, 258: 2}  # vocab size -> id of byte 0


def encode(text: str, vocab_size: int) -> list[int]:
    """UTF-8 text -> ids of a byte-level vocabulary."""
    return [b + BYTE_OFFSETS[vocab_size] for b in text.encode("utf-8")]


def decode(ids: Sequence[int], vocab_size: int) -> str:
    """Ids of a byte-level vocabulary -> text; ids below the byte range (pad, EOS) are dropped."""
    offset = BYTE_OFFSETS[vocab_size]
    return bytes(i - offset for i in ids if i >= offset).decode("utf-8", errors="replace")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.sample", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a run's workdir (or a converted one)")
    parser.add_argument("--prompt", default=None, help="text, for byte-level models")
    parser.add_argument("--prompt_ids", default=None, help="comma-separated token ids")
    parser.add_argument("--num_tokens", type=int, default=200)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="take the most likely token")
    parser.add_argument("--seed", type=int, default=0, help="decides hashing and every draw")
    parser.add_argument("--n_hashes", type=int, default=None, help="hash rounds (default: config)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = parser.parse_args(argv)
    cli.log_to_stderr()
    try:
        run = checkpoints.load_run(args.workdir, args.step)
    except checkpoints.CheckpointError as e:
        raise cli.UsageError(str(e)) from None
    vocab = run.config.vocab_size
    text_mode = vocab in BYTE_OFFSETS
    if (args.prompt is None) == (args.prompt_ids is None):
        raise cli.UsageError("give exactly one of --prompt (text) and --prompt_ids (ids).")
    if args.prompt is not None:
        if not text_mode:
            raise cli.UsageError(
                f"--prompt is text, for byte-level models (vocab 256 or 258); this model's "
                f"vocab is {vocab}: give --prompt_ids instead."
            )
        ids = encode(args.prompt, vocab)
    else:
        try:
            ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise cli.UsageError(
                f"--prompt_ids={args.prompt_ids!r}: give comma-separated integers, e.g. 3,17,4."
            ) from None
    if args.num_samples < 1:
        raise cli.UsageError(f"--num_samples must be >= 1, got {args.num_samples}.")
    prompt = jnp.asarray([ids] * args.num_samples, jnp.int32).reshape(args.num_samples, -1)
    try:
        out = sampling.generate(
            run.params,
            run.config,
            prompt,
            jax.random.key(args.seed),
            num_tokens=args.num_tokens,
            greedy=args.greedy,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            n_hashes=args.n_hashes,
        )
    except ValueError as e:
        raise cli.UsageError(str(e).splitlines()[0]) from None
    for row in jax.device_get(out).tolist():
        print(decode(ids + row, vocab) if text_mode else ",".join(map(str, ids + row)))


if __name__ == "__main__":
    cli.run_main(main)
