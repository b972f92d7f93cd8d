"""Evaluate the latest checkpoint of a training run.

    python -m reformer_jax.evaluate --workdir=DIR [--gin_param=...] [--variants full lsh-1 ...]
        [--eval_batches=N] [--split=eval|test]

Restores the newest readable checkpoint of the run (reformer_jax/checkpoints.py:
its parameters and its model config), applies --gin_param overrides on top
(e.g. 'ReformerConfig.n_hashes = 8', or 'ReformerConfig.attention_kinds =
("full_shared",)'), and evaluates on the eval split of the dataset that
<workdir>/config.gin (written by the trainer) or --gin_file names. With
--variants, evaluates each of "full" and "lsh-N" and prints the paper's
Table 2 row.

Encoder-decoder runs (Seq2SeqTask) can also be scored on what the model
writes: --decode decodes every source of the split greedily (--beam_size=K:
beam search with GNMT's --length_penalty) and reports decoded_exact_match
and, where the run has text (a SentencePiece vocabulary in the workdir),
BLEU with sacrebleu on detokenized text (reformer_jax/translation.py). For
WMT14 (@wmt14_dataset) the references are the raw newstest sentences.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import jax

from reformer_jax import checkpoints, cli, evaluation, sharding
from reformer_jax.data import DatasetError


def _config_bindings(cfg) -> list[str]:
    """gin bindings that reproduce a checkpoint's ReformerConfig (before the user's overrides)."""
    return [f"ReformerConfig.{name} = {value!r}" for name, value in vars(cfg).items()]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", required=True, help="a training run's workdir (or one written by save_params)"
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin config naming the dataset (default: <workdir>/config.gin)",
    )
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument(
        "--gin_param",
        action="append",
        default=[],
        help="override a binding of the run's config.gin",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="evaluate each of: full, lsh-1, lsh-2, ... (paper Table 2)",
    )
    parser.add_argument(
        "--eval_batches",
        type=int,
        default=None,
        help="batches to evaluate; 0 = the whole split (default: train.eval_batches of the run)",
    )
    parser.add_argument(
        "--split",
        default="eval",
        help="dataset split: eval (validation), or test where the dataset has one",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    group = parser.add_argument_group("encoder-decoders: score what the model writes")
    group.add_argument(
        "--decode", action="store_true", help="decode the split; report exact match and BLEU"
    )
    group.add_argument("--beam_size", type=int, default=None, help="beam search (implies --decode)")
    group.add_argument("--length_penalty", type=float, default=0.6, help="GNMT alpha for beams")
    group.add_argument(
        "--num_tokens", type=int, default=None, help="longest target written (default max_len)"
    )
    args = parser.parse_args(argv)
    if args.beam_size is not None:
        if args.beam_size < 1:
            raise cli.UsageError(f"--beam_size must be >= 1, got {args.beam_size}")
        args.decode = True
    if args.eval_batches is not None and args.eval_batches < 0:
        raise cli.UsageError(
            f"--eval_batches must be >= 0 (0: the whole split), got {args.eval_batches}"
        )
    cli.log_to_stderr()
    config = os.path.join(args.workdir, "config.gin")
    gin_files = args.gin_file or [config]
    if not args.gin_file and not os.path.isfile(config):
        raise cli.UsageError(
            f"{config} not found: --workdir must be a training run's workdir (or give --gin_file "
            "for the dataset of a run saved with save_params)"
        )
    mesh = sharding.make_mesh()
    try:
        run = checkpoints.load_run(args.workdir, args.step, mesh=mesh)
    except checkpoints.CheckpointError as e:
        raise cli.UsageError(str(e)) from None
    # The model is the checkpoint's own config, with the user's overrides on top.
    cli.parse_gin(gin_files, _config_bindings(run.config) + args.gin_param)
    cfg = cli.model_config()
    dataset_ref = cli.query("train.dataset_fn")
    if dataset_ref is None:
        raise cli.UsageError(f"{gin_files[0]} binds no train.dataset_fn")
    dataset_fn = dataset_ref.scoped_configurable_fn  # the factory with its gin bindings
    params, step = run.params, run.step
    task = cli.task()
    abstract = jax.eval_shape(lambda: task.init_params(task.model(cfg), jax.random.key(0), cfg))
    try:
        checkpoints.check_params_fit(params, abstract, f"checkpoint step {step}")
    except checkpoints.CheckpointError as e:
        raise cli.UsageError(f"{e} (a --gin_param changed a parameter shape)") from None
    kw = dict(
        batch_size=cli.query("train.batch_size", 8),
        eval_batches=(
            args.eval_batches
            if args.eval_batches is not None
            else cli.query("train.eval_batches", 4)
        ),
        seed=cli.query("train.seed", 0),
        mesh=mesh,
        split=args.split,
        task=task,
        run=cli.run_settings(),
    )
    try:  # an unknown --split (or missing data) fails here, before the model compiles
        dataset_fn(
            split=args.split, batch_size=kw["batch_size"], seq_len=cfg.max_len, seed=kw["seed"]
        )
    except DatasetError as e:
        raise cli.UsageError(str(e)) from None
    except ValueError as e:  # gin adds a line naming the configurable
        first = str(e).strip().splitlines()[0]
        raise cli.UsageError(f"--split={args.split}: {first}".rstrip(".")) from None
    try:
        variants = (
            [(cfg, "as configured")]
            if not args.variants
            else [evaluation.eval_variant_config(cfg, v) for v in args.variants]
        )
    except ValueError as e:
        raise cli.UsageError(f"--variants: {e}") from None
    results = {}
    for var_cfg, label in variants:
        try:
            results[label] = evaluation.Evaluator(var_cfg, dataset_fn, **kw)(params)
        except DatasetError as e:
            raise cli.UsageError(str(e)) from None
    decoded = _decoded_metrics(args, params, cfg, task, dataset_fn, kw) if args.decode else None
    if args.json:
        record = {"step": step, "results": results}
        if decoded is not None:
            record["decoded"] = decoded
        print(json.dumps(record))
        return
    print(f"checkpoint step {step} of {args.workdir}")
    print(evaluation.format_eval_table(results))
    if decoded is not None:
        how = "greedy" if args.beam_size is None else f"beam {args.beam_size}"
        line = (
            f"decoded ({how}, {decoded['examples']} examples): exact match "
            f"{100 * decoded['decoded_exact_match']:.1f}%"
        )
        if "bleu" in decoded:
            line += f", BLEU {decoded['bleu']:.2f} ({decoded['bleu_signature']})"
        print(line)


def _decoded_metrics(args, params, cfg, task, dataset_fn, kw) -> dict:
    """Decodes the split's sources (greedy or beam) and scores them (translation.py)."""
    from reformer_jax import tasks, translation
    from reformer_jax.data import wmt14

    if not isinstance(task, tasks.Seq2SeqTask):
        raise cli.UsageError(
            f"--decode scores what an encoder-decoder writes; this run's task is "
            f"{type(task).__name__}"
        )
    batches = dataset_fn(
        split=args.split, batch_size=kw["batch_size"], seq_len=cfg.max_len, seed=kw["seed"]
    )
    max_batches = kw["eval_batches"] or None
    decoded = translation.decode_split(
        params,
        cfg,
        batches,
        jax.random.key(kw["seed"]),
        beam_size=args.beam_size,
        length_penalty=args.length_penalty,
        num_tokens=args.num_tokens,
        max_batches=max_batches,
    )
    tokenizer = cli.run_tokenizer(args.workdir)
    references = None
    if cli.dataset_name() == "wmt14_dataset" and max_batches is None:
        _, references = wmt14.wmt14_references(
            args.split,
            cli.query("wmt14_dataset.data_dir"),
            source_language=cli.query("wmt14_dataset.source_language", "en"),
            target_language=cli.query("wmt14_dataset.target_language", "de"),
        )
    return translation.score(decoded, tokenizer, references)


if __name__ == "__main__":
    cli.run_main(main)
