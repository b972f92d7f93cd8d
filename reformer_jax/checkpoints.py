"""Checkpoints: what a run saves, the order a run restores in, and reading a run back.

A checkpoint is `<workdir>/checkpoints/<step>/` (an orbax CheckpointManager
directory) with three items:

    state   the train state {step, params, opt_state} (a parameters-only
            checkpoint written by `save_params` has {step, params})
    config  the ReformerConfig as JSON (`dataclasses.asdict`), so a run is
            readable without gin or the config that trained it
    extra   JSON: the data iterator's position, the seed and the length of
            metrics.jsonl at that step (truncated back to it on resume)

Restore order of `train` (`restore_train_state`):

    1. the newest readable checkpoint in <workdir>: the whole train state; a
       parameters-only checkpoint starts a fresh optimizer at its step;
    2. `init_checkpoint` (a workdir or its checkpoints/ directory): its
       newest readable parameters, fresh optimizer, step 0 (fine-tuning);
    3. from scratch.

A checkpoint that cannot be read (a write cut short, a corrupt file) is
skipped with a warning in favour of the next older one. Parameters whose
names or shapes differ from the model's are a `CheckpointError` naming the
first difference, never a silent partial restore.

Public functions:

    save_params(workdir, config, params, step=0)        writes a parameters-only checkpoint
    load_run(workdir, step=None, *, mesh=None) -> Run   Run(config, params, step)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reformer_jax.config import LEGACY_RUN_FIELDS, ReformerConfig

log = logging.getLogger("reformer_jax")

SUBDIR = "checkpoints"


class CheckpointError(Exception):
    """No usable checkpoint where one was asked for; one line saying what to do."""


class Run(NamedTuple):
    """A checkpoint read back: the model config, its parameters and the step."""

    config: ReformerConfig
    params: Any
    step: int


def config_to_json(config: ReformerConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_json(data: dict) -> ReformerConfig:
    # JSON lists become tuples in ReformerConfig.__post_init__. Checkpoints
    # written before RunSettings held its fields in the model config: how
    # that run stepped is not part of the model, so they are dropped.
    known = {f.name for f in dataclasses.fields(ReformerConfig)}
    unknown = sorted(set(data) - known - set(LEGACY_RUN_FIELDS))
    if unknown:
        log.warning("checkpoint config has fields this version does not know: %s", unknown)
    return ReformerConfig(**{k: v for k, v in data.items() if k in known})


def find_directory(path: str) -> str:
    """<path>/checkpoints for a workdir; `path` itself when given the checkpoints directory."""
    path = os.path.abspath(path)
    sub = os.path.join(path, SUBDIR)
    if os.path.isdir(sub) or not os.path.isdir(path) or os.path.basename(path) != SUBDIR:
        return sub
    return path


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _replicated(mesh: Mesh | None) -> NamedSharding:
    mesh = mesh or Mesh(np.asarray(jax.devices()), ("data",))
    return NamedSharding(mesh, PartitionSpec())


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def check_params_fit(saved: Any, wanted: Any, where: str) -> None:
    """Raises CheckpointError at the first parameter whose name or shape differs."""
    shape = lambda x: tuple(x.shape)
    got = {_path_str(p): shape(x) for p, x in jax.tree_util.tree_leaves_with_path(saved)}
    want = {_path_str(p): shape(x) for p, x in jax.tree_util.tree_leaves_with_path(wanted)}
    fix = "train with the checkpoint's config (its 'config' item) or start in a new --workdir"
    for name in sorted(want):
        if name not in got:
            raise CheckpointError(f"{where} has no parameter {name}; {fix}.")
        if got[name] != want[name]:
            raise CheckpointError(
                f"{where}: parameter {name} is {got[name]} there but {want[name]} in the model; "
                f"{fix}."
            )
    extra = sorted(set(got) - set(want))
    if extra:
        raise CheckpointError(f"{where} has parameters the model lacks ({extra[0]}, ...); {fix}.")


class Checkpoints:
    """The orbax CheckpointManager of one directory, with the restore loop."""

    def __init__(self, directory: str, *, keep: int | None = None, create: bool = True):
        self.directory = os.path.abspath(directory)
        if not create and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"no checkpoints in {self.directory}: train first, or give the workdir of a "
                "training run"
            )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "extra": ocp.JsonCheckpointHandler(),
            },
        )

    def steps(self) -> list[int]:
        """Steps with a committed checkpoint, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, *, config: ReformerConfig, extra: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                config=ocp.args.JsonSave(config_to_json(config)),
                extra=ocp.args.JsonSave(extra),
            ),
            force=True,
        )

    def saved_tree(self, step: int) -> dict:
        """The saved state's tree of array metadata (shapes, dtypes), read without the arrays."""
        return self.manager.item_metadata(step)["state"].tree

    def read_config(self, step: int) -> ReformerConfig:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return config_from_json(restored["config"])

    def restore_state(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=abstract_state,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                ),
                extra=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["extra"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        item = {"params": abstract_params}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            ),
        )
        return restored["state"]["params"]

    def newest_readable(self, read: Callable[[int], Any], *, step: int | None = None) -> Any:
        """read(step) for the newest step it succeeds on (or exactly `step`).

        A CheckpointError from `read` (a mismatch, not damage) is raised at
        once; any other failure means "unreadable" and the next older
        checkpoint is tried.
        """
        steps = self.steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory} ({steps})")
            steps = [step]
        for s in steps:
            try:
                return read(s)
            except CheckpointError:
                raise
            except Exception as e:  # noqa: BLE001 - any other failure means "unreadable"
                log.warning(
                    "checkpoint at step %d is unreadable (%s); trying an older one", s, _one_line(e)
                )
        if steps:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} (steps {steps}); move the directory "
                "away to start from scratch."
            )
        raise CheckpointError(f"no checkpoints in {self.directory}")

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _abstract(tree: Any, sharding) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding), tree
    )


def _read_params(ckpt: Checkpoints, step: int, sharding, wanted: Any | None) -> Any:
    saved = ckpt.saved_tree(step)["params"]
    if wanted is not None:
        check_params_fit(saved, wanted, f"checkpoint {ckpt.directory}/{step}")
    return ckpt.restore_params(step, _abstract(saved if wanted is None else wanted, sharding))


def load_run(workdir: str, step: int | None = None, *, mesh: Mesh | None = None) -> Run:
    """The config, parameters and step of a run's newest readable checkpoint (or `step`).

    `workdir` is a training workdir, its checkpoints/ directory, or a directory
    written by `save_params`. No optimizer or model template is needed: the
    parameter shapes come from the checkpoint's metadata and the config from
    its JSON. Parameters are replicated over `mesh` (default: all devices).
    """
    ckpt = Checkpoints(find_directory(workdir), create=False)
    sharding = _replicated(mesh)
    try:

        def read(s):
            config = ckpt.read_config(s)
            return Run(config, _read_params(ckpt, s, sharding, None), s)

        return ckpt.newest_readable(read, step=step)
    finally:
        ckpt.close()


def save_params(workdir: str, config: ReformerConfig, params: Any, step: int = 0) -> None:
    """Writes `params` of a `config` model as a parameters-only checkpoint at `step`.

    `load_run`, `python -m reformer_jax.evaluate --workdir` and `train` (as its
    workdir, or as `init_checkpoint`) read it; a converted model is saved
    this way.
    """
    ckpt = Checkpoints(os.path.join(workdir, SUBDIR), keep=None)
    try:
        state = {"step": np.int32(step), "params": params}
        ckpt.save(step, state, config=config, extra={})
        ckpt.wait()
    finally:
        ckpt.close()


def restore_train_state(
    ckpt: Checkpoints,
    abstract_state: Any,
    fresh_state: Callable[[Any, int], Any],
    *,
    init_checkpoint: str | None = None,
) -> tuple[Any, dict]:
    """The train state to start from, in the restore order of the module docstring.

    abstract_state: the TrainState's shapes, dtypes and shardings.
    fresh_state(params, step): a new state (fresh optimizer); params=None
    initialises them. Returns (state, extra); extra is {} unless a full train
    state was resumed.
    """
    sharding = jax.tree_util.tree_leaves(abstract_state)[0].sharding
    if ckpt.steps():

        def read(s):
            if "opt_state" in ckpt.saved_tree(s):
                check_params_fit(
                    ckpt.saved_tree(s)["params"], abstract_state.params, f"{ckpt.directory}/{s}"
                )
                return ckpt.restore_state(s, abstract_state)
            return fresh_state(_read_params(ckpt, s, sharding, abstract_state.params), s), {}

        state, extra = ckpt.newest_readable(read)
        log.info("resumed from %s at step %d", ckpt.directory, int(state.step))
        return state, extra
    if init_checkpoint:
        source = Checkpoints(find_directory(init_checkpoint), create=False)
        try:
            params = source.newest_readable(
                lambda s: _read_params(source, s, sharding, abstract_state.params)
            )
        finally:
            source.close()
        log.info("initialised parameters from %s", source.directory)
        return fresh_state(params, 0), {}
    return fresh_state(None, 0), {}
