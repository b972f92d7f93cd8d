"""Predictions of a trained encoder for inputs read from a JSON-lines file.

    python -m reformer_jax.predict --workdir=DIR --input=FILE.jsonl [--output=FILE.jsonl]
        [--step=N] [--batch_size=8] [--gin_param=...] [--mask_text=[MASK]]

Each input line is one JSON object, {"text": "..."} (encoded with the run's
tokenizer, the one its dataset declares, reformer_jax/data/tokenizers.py:
bytes + 2 for enwik8 and the stdlib corpus, ListOps' vocabulary, or the
workdir's SentencePiece vocabulary, spiece.model, when it has one) or
{"ids": [...]} (token ids); other keys are copied to the output. The file is
UTF-8 text, read whole before the model loads (a byte-order mark at its
start is dropped; a file that is missing, empty or not UTF-8 is one line:
reformer_jax/user_files.py). Each output line is the input's prediction, in
the input's order:

    classification   {"label": 3, "probs": [...]}
    spans            {"start": 17, "end": 21, "ids": [...], "text": "..."}
    masked LM        {"ids": [...], "text": "...", "filled": [{"position", "id", "prob"}]}
                     (the positions to fill hold the mask id; in "text", each
                     --mask_text becomes one mask token)

Every input is padded to the model's max_len with a padding mask: padding
changes nothing (docs/algorithm.md, "Padding"), so an input gets the
prediction it would get alone, and the model compiles once. LSH hashes with
a fixed key, so predictions are reproducible.

A bad line (not JSON, not UTF-8, empty, ids outside the vocabulary, longer
than the model) stops the command with one line naming the line number; the lines
before it are predicted and written first, so nothing already read is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reformer_jax import checkpoints, cli, tasks, user_files


def _config_bindings(cfg) -> list[str]:
    return [f"ReformerConfig.{name} = {value!r}" for name, value in vars(cfg).items()]


class InputError(cli.UsageError):
    """A bad input line: FILE:LINE and what is wrong."""


def parse_line(
    line: str, where: str, *, vocab_size: int, max_len: int, tokenizer, mask_text, mask_id
) -> tuple[dict, np.ndarray]:
    """One input line -> (the object read, int32 ids [n]); InputError naming `where` if bad."""
    if not line.strip():
        raise InputError(f'{where}: empty line; give one JSON object per line, {{"text": ...}}')
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or ("text" in obj) == ("ids" in obj):
        raise InputError(f'{where}: give an object with exactly one of "text" or "ids"')
    if "ids" in obj:
        ids = obj["ids"]
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise InputError(f'{where}: "ids" must be a list of ints')
        ids = np.asarray(ids, np.int64)
    else:
        if tokenizer is None:
            raise InputError(
                f'{where}: this run\'s data has no text encoding; give "ids" instead of "text"'
            )
        if not isinstance(obj["text"], str):
            raise InputError(f'{where}: "text" must be a string')
        try:
            ids = _encode(obj["text"], tokenizer, mask_text, mask_id)
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
    if ids.size == 0:
        raise InputError(f"{where}: the input is empty")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise InputError(
            f"{where}: id {int(ids[bad][0])} is outside the vocabulary 0..{vocab_size - 1}"
        )
    if ids.size > max_len:
        raise InputError(
            f"{where}: {ids.size} tokens, longer than the model's max_len {max_len}; shorten it"
        )
    return obj, ids.astype(np.int32)


def _encode(text, tokenizer, mask_text, mask_id):
    if mask_id is None or not mask_text:
        return np.asarray(tokenizer.encode(text), np.int64)
    parts = [np.asarray(tokenizer.encode(p), np.int64) for p in text.split(mask_text)]
    out = [parts[0]]
    for p in parts[1:]:
        out += [np.asarray([mask_id], np.int64), p]
    return np.concatenate(out)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--input", required=True, help="JSON lines, one input per line")
    parser.add_argument("--output", default=None, help="JSON lines out (default: stdout)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--batch_size", type=int, default=8, help="inputs per forward pass")
    parser.add_argument("--gin_param", action="append", default=[], help="override a binding")
    parser.add_argument(
        "--mask_text",
        default="[MASK]",
        help='masked LM: the text that stands for one mask token in a "text" input',
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise cli.UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
    # Read whole before the model loads: a file that is no UTF-8 text fails at once.
    lines = list(user_files.text_lines(args.input, "--input", "one JSON object a line"))
    cli.log_to_stderr()
    config = os.path.join(args.workdir, "config.gin")
    if not os.path.isfile(config):
        raise cli.UsageError(f"{config} not found: --workdir must be a training run's workdir")
    try:
        run = checkpoints.load_run(args.workdir, args.step)
    except checkpoints.CheckpointError as e:
        raise cli.UsageError(str(e)) from None
    cli.parse_gin([config], _config_bindings(run.config) + args.gin_param)
    cfg = cli.model_config()
    task = cli.task()
    if isinstance(task, tasks.LanguageModelTask):
        raise cli.UsageError(
            f"{args.workdir} is a language model: use python -m reformer_jax.sample to generate"
        )
    if isinstance(task, tasks.Seq2SeqTask):
        raise cli.UsageError(
            f"{args.workdir} is an encoder-decoder: translate a file of sources with python -m "
            "reformer_jax.sample --source_file=FILE (one source a line)"
        )
    model = task.model(cfg, cli.run_settings())
    tokenizer = cli.run_tokenizer(args.workdir)
    mask_id = task.resolved_mask_id(cfg) if isinstance(task, tasks.MaskedLMTask) else None
    key = jax.random.key(0)

    @jax.jit
    def predict(params, tokens, mask):
        return task.predict(model, params, tokens, mask, key)

    out = open(args.output, "w") if args.output else sys.stdout
    pending: list[tuple[dict, np.ndarray]] = []

    def flush():
        if not pending:
            return
        b = args.batch_size
        tokens = np.zeros((b, cfg.max_len), np.int32)
        mask = np.zeros((b, cfg.max_len), bool)
        for i, (_, ids) in enumerate(pending):
            tokens[i, : ids.size], mask[i, : ids.size] = ids, True
        rows = jax.device_get(predict(run.params, jnp.asarray(tokens), jnp.asarray(mask)))
        for i, (obj, ids) in enumerate(pending):
            row = {name: value[i] for name, value in rows.items()}
            extra = {k: v for k, v in obj.items() if k not in ("text", "ids")}
            print(json.dumps({**extra, **task.describe(row, ids, tokenizer)}), file=out)
        out.flush()
        pending.clear()

    try:
        for number, line in enumerate(lines, 1):
            pending.append(
                parse_line(
                    line,
                    f"{args.input}:{number}",
                    vocab_size=cfg.vocab_size,
                    max_len=cfg.max_len,
                    tokenizer=tokenizer,
                    mask_text=args.mask_text,
                    mask_id=mask_id,
                )
            )
            if len(pending) == args.batch_size:
                flush()
        flush()
    except InputError:
        flush()  # the lines before the bad one are not lost
        raise
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    cli.run_main(main)
