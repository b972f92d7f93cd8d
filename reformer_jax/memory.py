"""Memory planner: will this training step fit my accelerator?

    python -m reformer_jax.memory --gin_file=configs/enwik8.gin [--gin_param=...]
        [--batch_size=1] [--seq_len=N] [--optimizer=adam|adafactor] [--json]
        [--fit=40GiB [--min_chunk=512]]

Compiles the training step `python -m reformer_jax.train` runs for the same
gin config (trainer.make_step: the task `train.task` names, its batch, the
optimizer and schedule of the train bindings; loss, gradients, optimizer
update, the state donated) for abstract inputs on one device, without
allocating or running anything, and prints XLA's compiled memory analysis:
parameter, optimizer-state and temporary bytes and their total. The figures
are those of the device JAX compiles for (run it with the target backend for
exact numbers; the CPU compiler's buffer assignment is a close guide for
GPU/TPU). Data parallelism over n devices holds batch_size / n rows a device:
plan that batch.

`--fit=BUDGET` searches the "auto" run settings (chunk sizes, head chunks,
remat, micro-batches; reformer_jax/budget.py) for the fastest whose compiled
total fits BUDGET ("40GiB", "512MiB", "8GB", bytes, or "device"), compiling
O(log) plans, and prints it as gin bindings to paste, with its plan.

On CPU the planner turns off XLA's XNNPACK ("ynn") fusions before the backend
starts (`--xla_cpu_experimental_ynn_fusion_type=`): they take their operands
materialised, so per-feature broadcasts (LayerNorm scales) become full
[length, d_model] float32 arrays that GPU/TPU compilers fuse away (1.2 GiB of
the enwik8 step). `--keep_cpu_fusions` plans with the CPU compiler as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

from reformer_jax import budget, cli, optim, profiling, trainer
from reformer_jax.config import AUTO, ReformerConfig, RunSettings
from reformer_jax.model import count_params
from reformer_jax.tasks import LanguageModelTask, Task

GIB = 2**30
NO_YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type="


def _tree_bytes(tree: Any) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_plan_args(
    cfg: ReformerConfig,
    *,
    batch_size: int,
    seq_len: int,
    optimizer: str,
    grad_accum_steps: int,
    task: Task | None = None,
) -> None:
    """One line for a `plan` argument out of range (a ValueError), before anything compiles;
    with a task, also a model config it cannot train (tasks.TaskError, a ValueError)."""
    for name, value in (("batch_size", batch_size), ("grad_accum_steps", grad_accum_steps)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    if not _is_int(seq_len) or not 1 <= seq_len <= cfg.max_len:
        raise ValueError(
            f"seq_len must be an int in [1, max_len={cfg.max_len}], got {seq_len!r}; "
            "raise ReformerConfig.max_len (and axial_shape) for longer inputs."
        )
    if batch_size % grad_accum_steps:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by grad_accum_steps "
            f"({grad_accum_steps}), the micro-batches a step is split into; give a multiple "
            "of it or fewer micro-batches."
        )
    if optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {optim.OPTIMIZERS}.")
    if task is not None:
        task.check(cfg)


# train()'s arguments, beside the optimizer's name, that shape the step it compiles.
TRAIN_ARGS = (*(a for a in trainer.OPTIMIZER_ARGS if a != "optimizer"), "steps", "seed")


def gin_train_args() -> dict[str, Any]:
    """The parsed gin config's values of TRAIN_ARGS (train.<name>; train()'s default where
    unbound), for plan(train_args=...)."""
    defaults = trainer.train_defaults()
    return {name: cli.query(f"train.{name}", defaults.get(name)) for name in TRAIN_ARGS}


def plan(
    cfg: ReformerConfig,
    *,
    batch_size: int,
    seq_len: int | None = None,
    optimizer: str = "adam",
    grad_accum_steps: int = 1,
    run: RunSettings | None = None,
    task: Task | None = None,
    train_args: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Bytes of one compiled training step of `task` (default: a language model) for `cfg`
    on [batch_size, seq_len] positions (task.batch_spec), run with `run` (chunk sizes,
    remat): the step train() compiles (trainer.make_step), on one device.

    train_args: train()'s arguments in TRAIN_ARGS (schedule, clip_norm, weight_decay,
    steps, seed, ...; gin_train_args() reads them from gin); one not given takes
    train()'s default.
    """
    seq_len = cfg.max_len if seq_len is None else seq_len
    task = LanguageModelTask() if task is None else task
    check_plan_args(
        cfg,
        batch_size=batch_size,
        seq_len=seq_len,
        optimizer=optimizer,
        grad_accum_steps=grad_accum_steps,
        task=task,
    )
    args = {**trainer.train_defaults(), **(train_args or {})}
    opt, lr = trainer.make_optimizer(
        steps=args.get("steps"),
        optimizer=optimizer,
        **{k: args[k] for k in trainer.OPTIMIZER_ARGS if k != "optimizer"},
    )
    step = trainer.make_step(
        task,
        cfg,
        RunSettings() if run is None else run,
        opt,
        lr,
        seed=args["seed"],
        grad_accum_steps=grad_accum_steps,
        mesh=profiling.one_device_mesh(),
    )
    # Shapes only: nothing is allocated or run.
    batch = step.batch(batch_size, seq_len)
    # The donated state aliases the new state, so the live total is arguments
    # + temporaries + outputs not aliased to an argument: xla_memory's "total".
    mem = profiling.xla_memory(step.compile(batch))
    return {
        "n_params": count_params(step.state.params),
        "params_bytes": _tree_bytes(step.state.params),
        "optimizer_bytes": _tree_bytes(step.state.opt_state),
        "temp_bytes": mem["temp"],
        "batch_bytes": _tree_bytes(batch),
        "total_bytes": mem["total"],
    }


def format_plan(
    result: dict[str, int], cfg: ReformerConfig, batch_size: int, seq_len: int, optimizer: str
) -> str:
    gib = lambda n: f"{n / GIB:8.3f} GiB"
    layers = f"{cfg.n_layers} layers {cfg.attention_kinds}"
    if cfg.cross_attention:  # an encoder-decoder (source and target each seq_len tokens)
        enc = cfg.encoder_config()
        layers = f"encoder {enc.n_layers} layers {enc.attention_kinds} + decoder {layers}"
    lines = [
        f"model: {layers}, d_model {cfg.d_model}, "
        f"d_ff {cfg.d_ff}, {cfg.n_heads}x{cfg.d_head} heads, reversible={cfg.reversible}, "
        f"dtype {cfg.dtype}",
        f"step: batch {batch_size} x {seq_len} tokens, {optimizer}, "
        f"device {jax.devices()[0].platform}",
        f"parameters   {gib(result['params_bytes'])}  ({result['n_params']:,} params)",
        f"optimizer    {gib(result['optimizer_bytes'])}",
        f"temporaries  {gib(result['temp_bytes'])}",
        f"total        {gib(result['total_bytes'])}",
    ]
    return "\n".join(lines)


def main(argv) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.memory", description=__doc__.split("\n\n")[0]
    )
    cli.add_gin_flags(parser)
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="sequences per step (default: train.batch_size, else 1)",
    )
    parser.add_argument("--seq_len", type=int, default=None, help="default: max_len")
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=optim.OPTIMIZERS,
        help="default: train.optimizer, else adam",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--fit",
        default=None,
        metavar="BUDGET",
        help='choose the "auto" run settings to fit BUDGET: "40GiB", "512MiB", "8GB", bytes, '
        'or "device"',
    )
    parser.add_argument(
        "--min_chunk",
        type=int,
        default=budget.MIN_CHUNK,
        help="with --fit: the smallest feed-forward and loss chunk tried (positions)",
    )
    parser.add_argument(
        "--keep_cpu_fusions",
        action="store_true",
        help="plan with the CPU compiler's XNNPACK fusions on (see the module docstring)",
    )
    args = parser.parse_args(argv)
    if not args.keep_cpu_fusions:
        # Read when the backend starts, i.e. at the first compilation below.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_YNN_FUSIONS}".strip()
    cli.parse_gin(args.gin_file, args.gin_param)
    cfg = cli.model_config()
    # `is None`, not `or`: an explicit 0 is refused below, not replaced by the default.
    if args.batch_size is not None and args.batch_size < 1:
        raise cli.UsageError(f"--batch_size must be an int >= 1, got {args.batch_size}.")
    if args.seq_len is not None and args.seq_len < 1:
        raise cli.UsageError(
            f"--seq_len must be an int >= 1 (leave it out for max_len={cfg.max_len}), "
            f"got {args.seq_len}."
        )
    if args.seq_len is not None and args.seq_len > cfg.max_len:
        raise cli.UsageError(
            f"--seq_len={args.seq_len} must be in [1, max_len={cfg.max_len}]; "
            "raise ReformerConfig.max_len (and axial_shape) for longer inputs."
        )
    seq_len = cfg.max_len if args.seq_len is None else args.seq_len
    batch_size = cli.query("train.batch_size", 1) if args.batch_size is None else args.batch_size
    optimizer = args.optimizer or cli.query("train.optimizer", "adam")
    grad_accum_steps = cli.query("train.grad_accum_steps", AUTO)
    try:  # values from the gin config (train.task, train.batch_size, train.grad_accum_steps, ...)
        task = cli.task()
        check_plan_args(
            cfg,
            batch_size=batch_size,
            seq_len=seq_len,
            optimizer=optimizer,
            grad_accum_steps=1 if grad_accum_steps == AUTO else grad_accum_steps,
            task=task,
        )
    except (ValueError, TypeError) as e:
        raise cli.UsageError(f"bad configuration: {e}") from None
    shape = dict(
        batch_size=batch_size,
        seq_len=seq_len,
        optimizer=optimizer,
        task=task,
        train_args=gin_train_args(),
    )
    if args.fit is not None:
        fit(cfg, cli.run_settings(), grad_accum_steps, args.fit, args.min_chunk, args.json, **shape)
        return
    result = plan(
        cfg,
        grad_accum_steps=1 if grad_accum_steps == AUTO else grad_accum_steps,
        run=cli.run_settings(),
        **shape,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_plan(result, cfg, batch_size, seq_len, optimizer))


def choose(
    cfg: ReformerConfig,
    run: RunSettings,
    grad_accum_steps: int | str,
    limit: int,
    *,
    batch_size: int,
    seq_len: int,
    optimizer: str = "adam",
    min_chunk: int = budget.MIN_CHUNK,
    task: Task | None = None,
    train_args: dict[str, Any] | None = None,
) -> tuple[budget.Choice, dict[str, int]]:
    """The fastest setting of the "auto" knobs whose plan fits `limit` bytes, and its plan
    (of `task`'s step with `train_args`, as plan()).

    Raises budget.BudgetError when even the leanest setting does not fit.
    """
    rungs = budget.ladders(
        cfg, run, grad_accum_steps, seq_len=seq_len, batch_size=batch_size, min_chunk=min_chunk
    )
    print(
        f"searching {', '.join(k for k, r in rungs.items() if len(r) > 1) or 'nothing'}: at most "
        f"{budget.max_plans(rungs)} plans of one training step",
        file=sys.stderr,
        flush=True,
    )
    plans = {}

    def plan_total(setting):
        knobs = {k: setting[k] for k in budget.RUN_KNOBS}
        result = plan(
            cfg,
            batch_size=batch_size,
            seq_len=seq_len,
            optimizer=optimizer,
            grad_accum_steps=setting["grad_accum_steps"],
            run=dataclasses.replace(run, **knobs),
            task=task,
            train_args=train_args,
        )
        plans[tuple(sorted(setting.items()))] = result
        return result["total_bytes"]

    choice = budget.search(rungs, limit, plan_total)
    return choice, plans[tuple(sorted(choice.settings.items()))]


def fit(
    cfg: ReformerConfig,
    run: RunSettings,
    grad_accum_steps: int | str,
    fit_budget: str,
    min_chunk: int,
    as_json: bool,
    *,
    batch_size: int,
    seq_len: int,
    optimizer: str,
    task: Task | None = None,
    train_args: dict[str, Any] | None = None,
) -> None:
    """--fit: the fastest setting of the "auto" knobs whose plan fits `fit_budget`, printed."""
    if min_chunk < 1:
        raise cli.UsageError(f"--min_chunk must be an int >= 1, got {min_chunk}.")
    try:
        limit = budget.budget_bytes(fit_budget)
        choice, result = choose(
            cfg,
            run,
            grad_accum_steps,
            limit,
            batch_size=batch_size,
            seq_len=seq_len,
            optimizer=optimizer,
            min_chunk=min_chunk,
            task=task,
            train_args=train_args,
        )
    except budget.BudgetError as e:
        raise cli.UsageError(str(e)) from None
    if as_json:
        report = {"budget_bytes": limit, "settings": choice.settings, "plans": choice.plans}
        print(json.dumps({**report, "bindings": choice.bindings(), **result}))
        return
    print(f"fits {limit / GIB:.3f} GiB ({choice.plans} plans compiled):")
    print("\n".join(choice.bindings()) or "(every knob is set explicitly)")
    print(format_plan(result, cfg, batch_size, seq_len, optimizer))


if __name__ == "__main__":
    cli.run_main(main)
