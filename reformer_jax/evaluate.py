"""Evaluate the latest checkpoint of a training run.

    python -m reformer_jax.evaluate --workdir=DIR [--gin_param=...] [--variants full lsh-1 ...]
        [--eval_batches=N] [--split=eval|test]

Reads <workdir>/config.gin (written by the trainer), applies --gin_param
overrides on top (e.g. 'ReformerConfig.n_hashes = 8', or
'ReformerConfig.attention_kinds = ("full_shared",)'), restores the parameters
of the newest readable checkpoint and evaluates on the eval split. With
--variants, evaluates each of "full" and "lsh-N" and prints the paper's
Table 2 row.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from reformer_jax import cli, train
from reformer_jax.model import ReformerLM


def restore_params(workdir: str, abstract_params, mesh):
    """Parameters of the newest readable checkpoint in <workdir>/checkpoints, and its step."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise cli.UsageError(
            f"no checkpoints in {directory}: train first, or pass the --workdir of a training run"
        )
    replicated = NamedSharding(mesh, PartitionSpec())
    item = {
        "params": jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract_params
        )
    }
    manager = ocp.CheckpointManager(directory)
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=item,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                        partial_restore=True,
                    )
                ),
            )
            return restored["state"]["params"], step
        except Exception as e:  # noqa: BLE001 - any failure means "unreadable"
            train.log.warning(
                "checkpoint at step %d is unreadable (%s); trying an older one",
                step,
                type(e).__name__,
            )
    raise cli.UsageError(f"no readable checkpoint in {directory}")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
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
    args = parser.parse_args(argv)
    train._log_to_stderr()
    config = os.path.join(args.workdir, "config.gin")
    if not os.path.isfile(config):
        raise cli.UsageError(f"{config} not found: --workdir must be a training run's workdir")
    cli.parse_gin([config], args.gin_param)
    cfg = cli.model_config()
    dataset_ref = cli.query("train.dataset_fn")
    if dataset_ref is None:
        raise cli.UsageError(f"{config} binds no train.dataset_fn")
    dataset_fn = dataset_ref.scoped_configurable_fn  # the factory with its gin bindings
    mesh = train.make_mesh()
    abstract = jax.eval_shape(
        lambda: ReformerLM(cfg).init(jax.random.key(0), jnp.zeros((1, cfg.max_len), jnp.int32))[
            "params"
        ]
    )
    params, step = restore_params(args.workdir, abstract, mesh)
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
    )
    results = {}
    for variant in args.variants or [None]:
        var_cfg, label = (
            (cfg, "as configured") if variant is None else (train.eval_variant_config(cfg, variant))
        )
        results[label] = train.evaluate_params(params, var_cfg, dataset_fn, **kw)
    if args.json:
        print(json.dumps({"step": step, "results": results}))
    else:
        print(f"checkpoint step {step} of {args.workdir}")
        print(train.format_eval_table(results))


if __name__ == "__main__":
    cli.run_main(main)
