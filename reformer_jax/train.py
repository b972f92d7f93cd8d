"""Training: state, train_step, evaluation, checkpoints, metrics, and the CLI.

    python -m reformer_jax.train --gin_file=configs/copy.gin [--gin_param=...] [--workdir=DIR]

Resume order: the newest readable checkpoint in <workdir> ->
`init_checkpoint` (parameters only) -> from scratch. A checkpoint holds the
train state (step, parameters, optimizer state) and, as JSON, the data
iterator's position and the seed, so a killed run restarts on the batch it
would have seen next, with the same per-step keys: its losses are those of a
run never interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reformer_jax import optim
from reformer_jax.model import ReformerConfig, ReformerLM

log = logging.getLogger("reformer_jax")


class TrainingError(Exception):
    """Training cannot go on (diverged, unreadable checkpoints); one line for the user."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


# ----------------------------------------------------------------------------- steps


def _loss_sums(model, params, batch, key, deterministic):
    return model.apply(
        {"params": params},
        batch["tokens"],
        key=key,
        deterministic=deterministic,
        weights=batch["weights"],
        output="loss",
    )


def train_step(
    state: TrainState,
    batch: dict,
    key: jax.Array,
    *,
    model: ReformerLM,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
) -> tuple[TrainState, dict]:
    """One optimizer update on `batch` (tokens, weights: [b, l]).

    The step key is fold_in(key, step). With grad_accum_steps = k the batch is
    split into k micro-batches whose gradients are summed in a scan, so memory
    is that of b / k sequences. Metrics are sums (normalised on the host).
    """
    step_key = jax.random.fold_in(key, state.step)

    def grads_of(micro, k):
        def loss_fn(params):
            sums = _loss_sums(model, params, micro, k, deterministic=False)
            return sums["nll"], sums

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

        zeros = jax.tree_util.tree_map(
            jnp.zeros_like,
            (
                state.params,
                {"nll": jnp.float32(0), "correct": jnp.float32(0), "weight": jnp.float32(0)},
            ),
        )
        (nll_grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
    # The loss is the mean NLL over weighted tokens of the whole batch.
    grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(sums["weight"], 1.0), nll_grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "nll": sums["nll"],
        "correct": sums["correct"],
        "weight": sums["weight"],
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "learning_rate": schedule(state.step),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: dict, key: jax.Array, *, model: ReformerLM) -> dict:
    """Loss sums of a batch without dropout (hashing still uses `key`)."""
    return _loss_sums(model, params, batch, key, deterministic=True)


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Host-side: sums -> loss (nats), accuracy, bits per token."""
    weight = max(float(sums["weight"]), 1e-9)
    loss = float(sums["nll"]) / weight
    return {
        "loss": loss,
        "accuracy": float(sums["correct"]) / weight,
        "bits_per_token": loss / math.log(2.0),
    }


# ----------------------------------------------------------------------------- sharding


def make_mesh() -> Mesh:
    """All devices on one `data` axis (data parallel; parameters replicated)."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global arrays sharded over `data` (multi-host safe)."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """orbax CheckpointManager: state as a pytree, data position and seed as JSON."""

    def __init__(self, directory: str, *, keep: int):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, step: int, state: TrainState, extra: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)
            ),
            force=True,
        )

    def restore_latest(self, abstract_state: TrainState) -> tuple[TrainState, dict] | None:
        """The newest readable checkpoint; unreadable ones are skipped with a warning."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
                    ),
                )
                return restored["state"], restored["extra"]
            except Exception as e:  # noqa: BLE001 - any failure means "unreadable"
                log.warning(
                    "checkpoint at step %d is unreadable (%s: %s); trying an older one",
                    step,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
        if steps:
            raise TrainingError(
                f"no readable checkpoint in {self.manager.directory} (steps {steps}); move the "
                "directory away to start from scratch."
            )
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# ----------------------------------------------------------------------------- metrics


class MetricWriter:
    """metrics.jsonl (one object per logged step) and TensorBoard event files."""

    def __init__(self, workdir: str):
        from tensorboardX import SummaryWriter

        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self.jsonl.flush()
        for name, value in metrics.items():
            self.tb.add_scalar(f"{split}/{name}", value, step)
        self.tb.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()


# ----------------------------------------------------------------------------- train


def eval_variant_config(cfg: ReformerConfig, variant: str) -> tuple[ReformerConfig, str]:
    """'full' -> LSH layers as shared-QK full attention; 'lsh-N' -> N hash rounds."""
    if variant == "full":
        kinds = tuple("full_shared" if k == "lsh" else k for k in cfg.attention_kinds)
        return cfg.replace(attention_kinds=kinds), "Full"
    if variant.startswith("lsh-") and variant[4:].isdigit():
        return cfg.replace(n_hashes=int(variant[4:])), f"LSH-{variant[4:]}"
    raise ValueError(f"unknown evaluation variant {variant!r}; use 'full' or 'lsh-N'.")


def evaluate_params(
    params: Any,
    cfg: ReformerConfig,
    dataset_fn: Callable,
    *,
    batch_size: int,
    eval_batches: int | None,
    seed: int,
    mesh: Mesh,
    split: str = "eval",
) -> dict:
    """Mean metrics over the first `eval_batches` batches of `split`.

    eval_batches=None (or 0) runs until the split's iterator ends: the whole
    validation/test split for enwik8 (bits per character over every byte).
    """
    model = ReformerLM(cfg)
    step = jax.jit(lambda p, b, k: eval_step(p, b, k, model=model))
    data = dataset_fn(split=split, batch_size=batch_size, seq_len=cfg.max_len, seed=seed)
    batches = itertools.islice(data, eval_batches) if eval_batches else data
    key = jax.random.key(seed)
    totals = {"nll": 0.0, "correct": 0.0, "weight": 0.0}
    for i, batch in enumerate(batches):
        sums = jax.device_get(step(params, shard_batch(batch, mesh), jax.random.fold_in(key, i)))
        totals = {k: totals[k] + float(sums[k]) for k in totals}
    return summarize(totals)


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
    grad_accum_steps: int = 1,
    log_every: int = 50,
    eval_every: int = 500,
    eval_batches: int = 4,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    final_eval: Sequence[str] = (),
    init_checkpoint: str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Trains `model_config` on `dataset_fn` batches; returns the final eval metrics.

    dataset_fn(split=, batch_size=, seq_len=, seed=) returns an iterator of
    {"tokens", "weights"} numpy batches with get_state/set_state. final_eval
    lists evaluation variants run at the end ("full", "lsh-1", ...: the
    paper's Table 2 row); their accuracies are printed as a markdown table.
    """
    cfg = model_config
    _check_train_args(steps=steps, batch_size=batch_size, grad_accum_steps=grad_accum_steps)
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if batch_size % (n_dev * grad_accum_steps):
        raise ValueError(
            f"batch_size={batch_size} must be divisible by devices ({n_dev}) x "
            f"grad_accum_steps ({grad_accum_steps})."
        )
    replicated = NamedSharding(mesh, PartitionSpec())
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))

    model = ReformerLM(cfg)
    lr = optim.make_schedule(
        schedule, learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=steps
    )
    opt = optim.make_optimizer(
        optimizer,
        schedule=lr,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )
    key = jax.random.key(seed)
    init_key, step_key = jax.random.split(key)

    def init_state():
        params = model.init(init_key, jnp.zeros((1, cfg.max_len), jnp.int32))["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))

    abstract = jax.eval_shape(init_state)
    abstract = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract
    )
    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), keep=keep_checkpoints)
    train_data = dataset_fn(split="train", batch_size=batch_size, seq_len=cfg.max_len, seed=seed)

    restored = ckpt.restore_latest(abstract)
    if restored is not None:
        state, extra = restored
        train_data.set_state(extra["data"])
        if extra.get("seed", seed) != seed:
            log.warning("resuming a run started with seed %s under seed %s", extra["seed"], seed)
        log.info("resumed from %s at step %d", ckpt.manager.directory, int(state.step))
    else:
        state = jax.jit(init_state, out_shardings=replicated)()
        if init_checkpoint:
            params = ocp.StandardCheckpointer().restore(
                os.path.abspath(init_checkpoint), abstract.params
            )
            state = state.replace(params=params)
            log.info("initialised parameters from %s", init_checkpoint)

    step_fn = jax.jit(
        lambda s, b, k: train_step(
            s, b, k, model=model, optimizer=opt, schedule=lr, grad_accum_steps=grad_accum_steps
        ),
        in_shardings=(replicated, data_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )

    writer = MetricWriter(workdir)
    eval_kw = dict(batch_size=batch_size, eval_batches=eval_batches, seed=seed, mesh=mesh)
    start = int(state.step)
    pending: list[tuple[int, dict]] = []
    last_log = time.perf_counter()
    tokens_per_step = batch_size * cfg.max_len
    bar = _progress(start, steps, progress)

    def flush_metrics(step: int) -> None:
        """Checks every pending step for a non-finite loss, then logs their sums."""
        nonlocal last_log
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        for (s, _), m in zip(pending, fetched, strict=True):
            # The loss of step s uses the parameters before its update; the
            # parameter norm checks the update itself, so no NaN is saved.
            bad = [
                n
                for n, k in (("loss", "nll"), ("parameters", "param_norm"))
                if not np.isfinite(m[k])
            ]
            if bad:
                raise TrainingError(
                    f"non-finite {' and '.join(bad)} at step {s + 1}; stopped, the last good "
                    "checkpoint "
                    f"(step {ckpt.manager.latest_step()}) is kept in {workdir}. Lower the "
                    "learning rate or set clip_norm."
                )
        sums = {k: sum(float(m[k]) for m in fetched) for k in ("nll", "correct", "weight")}
        now = time.perf_counter()
        record = summarize(sums)
        record.update(
            {
                "grad_norm": float(fetched[-1]["grad_norm"]),
                "param_norm": float(fetched[-1]["param_norm"]),
                "learning_rate": float(fetched[-1]["learning_rate"]),
                "tokens_per_second": len(fetched) * tokens_per_step / max(now - last_log, 1e-9),
            }
        )
        writer.write(step, "train", record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
        pending.clear()
        last_log = now

    try:
        for step in range(start, steps):
            batch = shard_batch(next(train_data), mesh)
            state, metrics = step_fn(state, batch, step_key)
            pending.append((step, metrics))
            bar.update(1)
            done = step + 1
            if done % log_every == 0 or done == steps:
                flush_metrics(done)
            if done % checkpoint_every == 0 or done == steps:
                flush_metrics(done)  # never checkpoint a diverged state
                ckpt.save(done, state, {"data": train_data.get_state(), "seed": seed})
            if eval_every and (done % eval_every == 0 or done == steps):
                writer.write(
                    done, "eval", evaluate_params(state.params, cfg, dataset_fn, **eval_kw)
                )
        ckpt.wait()
        final = {}
        for variant in final_eval:
            var_cfg, label = eval_variant_config(cfg, variant)
            final[label] = evaluate_params(state.params, var_cfg, dataset_fn, **eval_kw)
            writer.write(int(state.step), f"final/{label}", final[label])
        if final:
            print(format_eval_table(final), flush=True)
        return final
    finally:
        bar.close()
        writer.close()
        ckpt.close()


def format_eval_table(results: dict[str, dict[str, float]]) -> str:
    head = "| metric | " + " | ".join(results) + " |"
    rule = "|---|" + "---:|" * len(results)
    acc = "| accuracy | " + " | ".join(f"{100 * r['accuracy']:.1f}%" for r in results.values())
    bpt = "| bits/token | " + " | ".join(f"{r['bits_per_token']:.4f}" for r in results.values())
    return "\n".join([head, rule, acc + " |", bpt + " |"])


def _check_train_args(**values):
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress(start, total, enabled):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)


# ----------------------------------------------------------------------------- CLI


def _log_to_stderr() -> None:
    """The trainer's own messages (resume, warnings) on stderr, whatever absl did."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: Sequence[str]) -> None:
    from reformer_jax import cli

    parser = argparse.ArgumentParser(
        prog="python -m reformer_jax.train", description="Train a ReformerLM from gin configs."
    )
    cli.add_gin_flags(parser)
    parser.add_argument(
        "--workdir",
        default=None,
        help="checkpoints, metrics and config.gin go here (default: runs/<first gin file's name>)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (multi-host launchers)",
    )
    args = parser.parse_args(argv)
    if not args.gin_file:
        raise cli.UsageError("give at least one --gin_file (e.g. --gin_file=configs/copy.gin)")
    if args.distributed:
        jax.distributed.initialize()
    _log_to_stderr()
    cli.parse_gin(args.gin_file, args.gin_param)
    workdir = args.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(args.gin_file[0]))[0]
    )
    cli.prepare_workdir(workdir)
    cli.call_train(workdir=workdir)


if __name__ == "__main__":
    from reformer_jax import cli as _cli

    _cli.run_main(main)
