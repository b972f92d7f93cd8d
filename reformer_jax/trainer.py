"""The trainer: train state, the train step, the loop.

    TrainState(step, params, opt_state)
    train_step(state, batch, key, *, model, optimizer, schedule, grad_accum_steps=1)
        -> (state, metrics)          batch: {"tokens": int32 [b, l], "weights": float32 [b, l]}
    make_step(task, cfg, run, optimizer, schedule, *, seed, grad_accum_steps, mesh) -> TrainStep
        .fn(state, batch) -> (state, metrics)      jitted, state donated
        .state, .batch(batch_size, seq_len)        abstract state and the task's batch
        .fresh_state(params, step), .compile(batch)
    make_optimizer(steps=, optimizer=, schedule=, learning_rate=, ...) -> (optimizer, schedule)
    train(*, model_config, dataset_fn, workdir, steps, batch_size, ...) -> final eval metrics

`make_step` builds the one step that train runs and that the memory planner
(reformer_jax/memory.py: plan, --fit), train.memory_budget, the profiling
helpers and scripts/benchmark.py compile, for every task.

The command line is `python -m reformer_jax.train` (reformer_jax/cli.py);
nothing here reads gin, so `train(...)` is a plain function for notebooks.
Evaluation is reformer_jax/evaluation.py, data parallelism
reformer_jax/sharding.py, checkpoints and the restore order
reformer_jax/checkpoints.py, the metric files and progress bar
reformer_jax/metrics.py.

Multi-host (one process per host, `jax.distributed.initialize` first): every
process runs this same code; each keeps its own rows of each global batch
(`sharding.shard_batch`), the parameters are replicated, and only process 0
writes metrics, TensorBoard and the config (orbax coordinates the checkpoint).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reformer_jax import budget, checkpoints, metrics, optim
from reformer_jax.config import AUTO, ReformerConfig, RunSettings
from reformer_jax.evaluation import LM_TASK, Evaluator, eval_variant_config, format_eval_table
from reformer_jax.sharding import make_mesh, shard_batch
from reformer_jax.tasks import Task, TaskError

log = logging.getLogger("reformer_jax")


class TrainingError(Exception):
    """Training cannot go on (diverged, bad arguments); one line for the user."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, step: int = 0):
        """The state at `step` of a run that starts from `params`: fresh optimizer moments."""
        return cls(step=jnp.int32(step), params=params, opt_state=optimizer.init(params))


# ----------------------------------------------------------------------------- steps


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    *,
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    task: Task = LM_TASK,
) -> tuple[TrainState, dict]:
    """One optimizer update of `task`'s loss on `batch` (the arrays task.batch_keys names).

    The step key is fold_in(key, step). With grad_accum_steps = k the batch is
    split into k micro-batches whose gradients are summed in a scan, so memory
    is that of b / k sequences. Metrics are the task's sums (normalised on the
    host) and the gradient and parameter norms.
    """
    step_key = jax.random.fold_in(key, state.step)

    def grads_of(micro, k):
        def loss_fn(params):
            sums = task.loss_sums(model, params, micro, k, deterministic=False)
            # "objective": what the task trains on when it is not the reported NLL
            # (label smoothing); a sum over the same weights.
            return sums.get("objective", sums["nll"]), sums

        return jax.grad(loss_fn, has_aux=True)(state.params)

    if grad_accum_steps == 1:
        nll_grads, sums = grads_of(batch, step_key)
    else:
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch
        )

        def body(acc, xs):
            i, mb = xs
            g, s = grads_of(mb, jax.random.fold_in(step_key, i))
            return jax.tree_util.tree_map(jnp.add, acc, (g, s)), None

        first = jax.tree_util.tree_map(lambda x: x[0], micro)
        sums_shape = jax.eval_shape(lambda: grads_of(first, step_key)[1])
        zeros = jax.tree_util.tree_map(
            lambda s: jnp.zeros(s.shape, s.dtype), (state.params, sums_shape)
        )
        (nll_grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
    # The loss is the mean NLL over the scored items (weighted tokens, examples) of the batch.
    grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(sums["weight"], 1.0), nll_grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics_ = {
        **sums,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "learning_rate": schedule(state.step),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics_


# ----------------------------------------------------------------------------- train


def _check_token_ids(batch: dict, vocab_size: int) -> None:
    """Ids outside the vocabulary would embed as NaN without a word: one clear error instead."""
    for name in ("tokens", "source", "target"):
        _check_ids(np.asarray(batch.get(name, np.zeros(0, np.int32))), vocab_size)


def _check_ids(tokens: np.ndarray, vocab_size: int) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise TrainingError(
            f"the dataset's token ids run from {int(tokens.min())} to {int(tokens.max())}, outside "
            f"the model's vocabulary 0..{vocab_size - 1}: set ReformerConfig.vocab_size (VOCAB) "
            f"to at least {int(tokens.max()) + 1}."
        )


def train(
    *,
    model_config: ReformerConfig,
    dataset_fn: Callable,
    workdir: str,
    steps: int,
    batch_size: int,
    seed: int = 0,
    optimizer: str = "adam",
    schedule: str = "rsqrt",
    learning_rate: float = 0.03125,
    warmup_steps: int = 2000,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-9,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    grad_accum_steps: int | str = AUTO,
    log_every: int = 50,
    eval_every: int = 500,
    eval_batches: int = 4,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    final_eval: Sequence[str] = (),
    init_checkpoint: str | None = None,
    steps_ahead: int = 2,
    progress: bool = True,
    task: Task | None = None,
    run_settings: RunSettings | None = None,
    memory_budget: int | str | None = None,
) -> dict[str, dict[str, float]]:
    """Trains `model_config` for `task` on `dataset_fn` batches; returns the final eval metrics.

    task: what is learned (reformer_jax/tasks.py); default next-token
    prediction (LanguageModelTask). run_settings: how each step runs (chunk
    sizes, remat; reformer_jax/config.py), not saved with the model.
    grad_accum_steps: micro-batches per step; "auto" is 1 without a budget.
    memory_budget: "40GiB", "512MiB", "8GB", bytes, or "device" (the device's
    memory less a margin): before the first step, the "auto" run settings and
    grad_accum_steps become the fastest setting whose compiled step fits
    (reformer_jax/budget.py), logged; values set explicitly are kept. None:
    no search ("auto" settings follow RunSettings.resolved).
    dataset_fn(split=, batch_size=, seq_len=, seed=) returns an iterator of
    global numpy batches holding the task's `batch_keys` (an LM: {"tokens",
    "weights"}), with get_state/set_state.
    init_checkpoint: a workdir (or checkpoint directory) whose parameters
    start a new run (fine-tuning); see reformer_jax/checkpoints.py for the
    restore order. steps_ahead: how many steps may be dispatched before the
    oldest has finished. final_eval lists evaluation variants run at the end
    ("full", "lsh-1", ...: the paper's Table 2 row), printed as a table.
    """
    cfg = model_config
    task = LM_TASK if task is None else task
    run = RunSettings() if run_settings is None else run_settings
    try:
        task.check(cfg)
        run.check(cfg)
    except (TaskError, ValueError) as e:
        raise TrainingError(str(e)) from None
    mesh = make_mesh()
    accum = 1 if grad_accum_steps == AUTO else grad_accum_steps
    _check_train_args(
        cfg,
        mesh,
        steps=steps,
        batch_size=batch_size,
        grad_accum_steps=accum,
        steps_ahead=steps_ahead,
        log_every=log_every,
        eval_every=eval_every,
        eval_batches=eval_batches,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        seed=seed,
        final_eval=final_eval,
    )
    opt, lr = make_optimizer(
        steps=steps,
        optimizer=optimizer,
        schedule=schedule,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )
    try:  # a bad budget is refused before the data is opened
        limit = None if memory_budget is None else budget.budget_bytes(memory_budget)
    except budget.BudgetError as e:
        raise TrainingError(str(e)) from None
    train_data = dataset_fn(split="train", batch_size=batch_size, seq_len=cfg.max_len, seed=seed)
    if limit is not None:
        batch_shapes = _peek_shapes(train_data, mesh)
        run, accum = _fit_budget(
            limit, task, cfg, run, grad_accum_steps, opt, lr, seed, mesh, batch_shapes
        )
    primary = jax.process_index() == 0
    built = make_step(task, cfg, run, opt, lr, seed=seed, grad_accum_steps=accum, mesh=mesh)
    ckpt = checkpoints.Checkpoints(os.path.join(workdir, checkpoints.SUBDIR), keep=keep_checkpoints)
    state, extra = checkpoints.restore_train_state(
        ckpt, built.state, built.fresh_state, init_checkpoint=init_checkpoint
    )
    if "data" in extra:
        train_data.set_state(extra["data"])
        if extra.get("seed", seed) != seed:
            log.warning("resuming a run started with seed %s under seed %s", extra["seed"], seed)
    step_fn = built.fn
    eval_kw = dict(
        batch_size=batch_size,
        eval_batches=eval_batches,
        seed=seed,
        mesh=mesh,
        task=task,
        run=run,
    )
    evaluate = Evaluator(cfg, dataset_fn, **eval_kw)
    # No train-state checkpoint: any metrics.jsonl is from a run killed before its first one.
    truncate_to = extra.get("metrics_bytes", 0)
    writer = metrics.MetricWriter(workdir, enabled=primary, truncate_to=truncate_to)
    start = int(state.step)
    bar = metrics.progress_bar(start, steps, progress and primary)
    meter = metrics.StepMeter(
        batch_size * cfg.max_len, steps_ahead=steps_ahead, bar=bar, summarize=task.summarize
    )
    try:
        for step in range(start, steps):
            batch = next(train_data)
            if step == start:  # once: reading state.step each step would wait for the device
                try:
                    task.check_batch(batch)
                except TaskError as e:
                    raise TrainingError(str(e)) from None
                _check_token_ids(batch, cfg.vocab_size)
            state, step_metrics = step_fn(state, shard_batch(batch, mesh))
            done = step + 1
            meter.dispatched(done, step_metrics)
            last, save = done == steps, done % checkpoint_every == 0 or done == steps
            if done % log_every == 0 or last or save:  # never checkpoint a diverged state
                record, bad = meter.flush()
                if bad:
                    raise TrainingError(_diverged_message(*bad, ckpt.latest_step(), workdir))
                writer.write(done, "train", record)
            if eval_every and (done % eval_every == 0 or last):
                writer.write(done, "eval", evaluate(state.params))
            if save:  # after the step's records, so a resume from here repeats none of them
                position = {"data": train_data.get_state(), "metrics_bytes": writer.offset()}
                ckpt.save(done, state, config=cfg, extra={**position, "seed": seed})
        ckpt.wait()
        final = {}
        for variant in final_eval:
            var_cfg, label = eval_variant_config(cfg, variant)
            final[label] = Evaluator(var_cfg, dataset_fn, **eval_kw)(state.params)
            writer.write(int(state.step), f"final/{label}", final[label])
        if final and primary:
            print(format_eval_table(final), flush=True)
        return final
    finally:
        bar.close()
        writer.close()
        ckpt.close()


def _check_train_args(cfg: ReformerConfig, mesh: Mesh, *, final_eval, **values) -> None:
    """One line for a train() argument out of range, before anything is built.

    The optimizer's and schedule's values are checked by optim.make_schedule
    and optim.make_optimizer, which train() calls next.
    """
    # name -> (least value, a note on what the least value or None means)
    ranges = {
        "steps": (1, ""),
        "batch_size": (1, ""),
        "grad_accum_steps": (1, ""),
        "steps_ahead": (0, ""),
        "log_every": (1, ""),
        "eval_every": (0, " (0: no evaluation during training)"),
        "eval_batches": (0, " (0 or None: the whole split)"),
        "checkpoint_every": (1, " (the last step is always saved)"),
        "keep_checkpoints": (1, " (or None to keep them all)"),
    }
    for name, (least, note) in ranges.items():
        value = values[name]
        if value is None and name in ("eval_batches", "keep_checkpoints"):
            continue
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an int >= {least}{note}, got {value!r}.")
    seed = values["seed"]
    # numpy's generators (the datasets) refuse negative seeds; jax keys take 63 bits.
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be an int in [0, 2**62), got {seed!r}.")
    n_dev, accum = mesh.devices.size, values["grad_accum_steps"]
    if values["batch_size"] % (n_dev * accum):
        raise ValueError(
            f"batch_size={values['batch_size']} must be divisible by devices ({n_dev}) x "
            f"grad_accum_steps ({accum})."
        )
    # A bad variant would otherwise stop the run only after its last step.
    if isinstance(final_eval, str) or not isinstance(final_eval, Sequence):
        raise ValueError(
            f"final_eval must be a list of evaluation variants such as ('full', 'lsh-2'), "
            f"got {final_eval!r}."
        )
    for variant in final_eval:
        if not isinstance(variant, str):
            raise ValueError(f"final_eval: variants are names such as 'lsh-2', got {variant!r}.")
        try:
            eval_variant_config(cfg, variant)
        except ValueError as e:
            raise ValueError(f"final_eval: {e}") from None


# ----------------------------------------------------------------------------- the step

OPTIMIZER_ARGS = (
    "optimizer",
    "schedule",
    "learning_rate",
    "warmup_steps",
    "b1",
    "b2",
    "eps",
    "weight_decay",
    "clip_norm",
)


def make_optimizer(
    *, steps: int | None = None, **kwargs
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule) as train() builds them for a run of `steps`.

    kwargs: train()'s arguments of those names (OPTIMIZER_ARGS); one not given
    takes train()'s default. steps may be None for a schedule without an end
    (not "cosine").
    """
    unknown = sorted(set(kwargs) - set(OPTIMIZER_ARGS))
    if unknown:
        raise TypeError(f"make_optimizer: unknown arguments {unknown}; use {OPTIMIZER_ARGS}.")
    args = {**{name: train_defaults()[name] for name in OPTIMIZER_ARGS}, **kwargs}
    lr = optim.make_schedule(
        args["schedule"],
        learning_rate=args["learning_rate"],
        warmup_steps=args["warmup_steps"],
        total_steps=steps,
    )
    opt = optim.make_optimizer(
        args["optimizer"],
        schedule=lr,
        **{k: args[k] for k in ("b1", "b2", "eps", "weight_decay", "clip_norm")},
    )
    return opt, lr


def train_defaults() -> dict[str, Any]:
    """train()'s default arguments, {name: value} (the planner's values for unbound ones)."""
    params = inspect.signature(train).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A run's training step (from make_step) and what it is compiled for.

    fn(state, batch) -> (state, metrics): jitted, the state donated; the step
    key is fold_in(split(key(seed))[1], state.step), derived inside the step.
    state: the TrainState's shapes (jax.ShapeDtypeStruct), replicated over
    the mesh. fresh_state(params, step): a TrainState on the mesh (params
    None: initialised from split(key(seed))[0]).
    """

    task: Task
    cfg: ReformerConfig
    model: nn.Module
    mesh: Mesh
    fn: Callable
    state: Any
    fresh_state: Callable

    def batch(self, batch_size: int, seq_len: int | None = None) -> dict:
        """The task's global batch of batch_size rows of seq_len (default max_len) positions,
        as shapes sharded over the mesh's "data" axis (task.batch_spec)."""
        seq_len = self.cfg.max_len if seq_len is None else seq_len
        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        spec = self.task.batch_spec(self.cfg, batch_size, seq_len)
        return {
            k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for k, s in spec.items()
        }

    def compile(self, batch: dict) -> Any:
        """fn compiled ahead of time for the state and `batch` (arrays or shapes); runs nothing."""
        return self.fn.lower(self.state, batch).compile()


def make_step(
    task: Task,
    cfg: ReformerConfig,
    run: RunSettings,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    seed: int = 0,
    grad_accum_steps: int = 1,
    mesh: Mesh | None = None,
) -> TrainStep:
    """The training step train() runs: task's model under `run`, train_step with the
    optimizer, schedule and micro-batches, jitted over `mesh` (default: every device,
    make_mesh) with the batch sharded over "data" and the state replicated."""
    mesh = make_mesh() if mesh is None else mesh
    model = task.model(cfg, run)
    fresh_state, abstract = _state_factory(task, model, optimizer, cfg, seed, mesh)
    fn = _jit_train_step(task, model, optimizer, schedule, seed, grad_accum_steps, mesh)
    return TrainStep(task, cfg, model, mesh, fn, abstract, fresh_state)


def _state_factory(task, model, opt, cfg, seed, mesh):
    """fresh_state(params, step) for the restore order, and the state's abstract shapes."""
    init_key = jax.random.split(jax.random.key(seed))[0]
    replicated = NamedSharding(mesh, PartitionSpec())

    def init_params():
        return task.init_params(model, init_key, cfg)

    def make(params, step):
        return TrainState.create(params, opt, step)

    def fresh_state(params, step):
        if params is None:
            return jax.jit(lambda: make(init_params(), 0), out_shardings=replicated)()
        return jax.jit(lambda p: make(p, step), out_shardings=replicated)(params)

    abstract = jax.eval_shape(lambda: make(init_params(), 0))
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract
    )
    return fresh_state, abstract


def _jit_train_step(task, model, opt, lr, seed, grad_accum_steps, mesh):
    """The compiled step (state, global batch) -> (state, metrics), state donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))

    def step(state, batch):
        # The step key is derived inside the step, so no host array need be
        # replicated across processes; the same key as in the module docstring.
        key = jax.random.split(jax.random.key(seed))[1]
        return train_step(
            state,
            batch,
            key,
            model=model,
            optimizer=opt,
            schedule=lr,
            grad_accum_steps=grad_accum_steps,
            task=task,
        )

    return jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


# ----------------------------------------------------------------------------- the budget


def _peek_shapes(data, mesh) -> dict:
    """The shapes of `data`'s next global batch, sharded over the mesh; the position is kept."""
    position = data.get_state()
    batch = next(data)
    data.set_state(position)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {
        k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=sharding)
        for k, v in batch.items()
    }


def _fit_budget(limit, task, cfg, run, grad_accum_steps, opt, lr, seed, mesh, batch_shapes):
    """(run settings, micro-batches): the fastest "auto" setting whose compiled step fits
    `limit` bytes (reformer_jax/budget.py), logged. Compiles; allocates nothing."""
    per_device = next(iter(batch_shapes.values())).shape[0] // mesh.devices.size
    rungs = budget.ladders(cfg, run, grad_accum_steps, seq_len=cfg.max_len, batch_size=per_device)

    def plan_total(setting):
        knobs = {k: setting[k] for k in budget.RUN_KNOBS}
        step = make_step(
            task,
            cfg,
            dataclasses.replace(run, **knobs),
            opt,
            lr,
            seed=seed,
            grad_accum_steps=setting["grad_accum_steps"],
            mesh=mesh,
        )
        total = budget.compiled_bytes(step.compile(batch_shapes))
        if total is None:
            raise TrainingError(
                f"train.memory_budget: the {jax.devices()[0].platform} backend gives no "
                "compiled memory analysis to plan with; leave memory_budget unset."
            )
        return total

    try:
        choice = budget.search(rungs, limit, plan_total)
    except budget.BudgetError as e:
        raise TrainingError(f"train.memory_budget: {e}") from None
    log.info("train.memory_budget: %s", choice.summary())
    return choice.run_settings(run), choice.settings["grad_accum_steps"]


def _diverged_message(step: int, names: list[str], last_checkpoint: int | None, workdir: str):
    return (
        f"non-finite {' and '.join(names)} at step {step}; stopped, the last good checkpoint "
        f"(step {last_checkpoint}) is kept in {workdir}. Lower the learning rate or set clip_norm."
    )
