"""The memory planner plans the step `train` runs, for every task family.

For each shipped task family (language model, masked LM, classification,
spans, encoder-decoder) a shipped config, shrunk by gin bindings so it
compiles in seconds: `python -m reformer_jax.memory --json` (its main, in
this process) must report, to the byte, the compiled memory of the step
that `python -m reformer_jax.train` builds for the same bindings, compiled
for the batch the run's dataset gives. The trainer's step is captured where
train takes it from (trainer.make_step), and the run stops at its first step
before anything runs.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from reformer_jax import memory, profiling, trainer
from tests import inprocess

# One local-attention layer of d_model 16 (2 heads of 8), 32 positions, batch 4: what
# differs between the families is the head, the batch and the loss, not the attention.
SMALL = (
    "SEQ_LEN = 32",
    "ReformerConfig.d_model = 16",
    "ReformerConfig.d_ff = 32",
    "ReformerConfig.n_heads = 2",
    "ReformerConfig.d_head = 8",
    "ReformerConfig.n_layers = 1",
    "ReformerConfig.attention_kinds = ('local',)",
    "ReformerConfig.local_chunk_len = 8",
    "train.batch_size = 4",
)
CASES = {
    "language model": (
        "configs/copy.gin",
        (
            *SMALL,
            "ReformerConfig.axial_shape = (32,)",
            "ReformerConfig.axial_dims = (16,)",
            "train.final_eval = ()",
        ),
    ),
    "masked LM": (
        "configs/mlm_cpu.gin",
        (*SMALL, "ReformerConfig.axial_shape = (4, 8)", "ReformerConfig.axial_dims = (8, 8)"),
    ),
    "classification": (
        "configs/listops_cpu.gin",
        (
            *SMALL,
            "listops_dataset.min_len = 8",
            "listops_dataset.max_len = 32",
            "listops_dataset.max_depth = 3",
            "listops_dataset.n_train = 64",
            "listops_dataset.n_eval = 16",
        ),
    ),
    "spans": (
        "configs/spans_cpu.gin",
        (*SMALL, "span_dataset.eval_examples = 16"),
    ),
    "encoder-decoder": (
        "configs/reverse_cpu.gin",
        (*SMALL, "ReformerConfig.n_encoder_layers = 1", "seq2seq_dataset.eval_examples = 16"),
    ),
}


class _FirstStep(Exception):
    """Raised in place of the run's first step, once its inputs are known."""


def _train_step_and_batch(flags, tmp_path, monkeypatch):
    """The TrainStep `train` builds for these flags and the shapes of its first batch."""
    seen = {}
    make_step = trainer.make_step

    def spy(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def first_step(state, batch):
            seen["step"], seen["batch"] = step, batch
            raise _FirstStep

        def zero_state(params, at_step):  # the state's values do not matter: nothing runs
            return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), step.state)

        return dataclasses.replace(step, fn=first_step, fresh_state=zero_state)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "make_step", spy)
        try:
            result = inprocess.train(*flags, f"--workdir={tmp_path / 'run'}")
            pytest.fail(f"train ended before its first step: {result.stderr[-2000:]}")
        except _FirstStep:
            pass
    shapes = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
        for k, v in seen["batch"].items()
    }
    return seen["step"], shapes


@pytest.mark.parametrize("family", list(CASES))
@pytest.mark.slow
def test_planner_total_is_the_compiled_train_step(family, tmp_path, monkeypatch):
    gin_file, params = CASES[family]
    if "listops" in gin_file:  # generated data, kept out of ~/.cache
        params = (*params, f"listops_dataset.data_dir = '{tmp_path / 'data'}'")
    flags = (f"--gin_file={gin_file}", *(f"--gin_param={p}" for p in params))

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main appends to it
    planned = inprocess.run(memory.main, *flags, "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)

    step, batch = _train_step_and_batch(flags, tmp_path, monkeypatch)
    # The planner's batch (the task's batch_spec) is the one the dataset gives.
    spec = lambda tree: {k: (s.shape, s.dtype) for k, s in tree.items()}
    assert spec(step.batch(next(iter(batch.values())).shape[0])) == spec(batch)
    compiled = profiling.xla_memory(step.compile(batch))
    assert plan["total_bytes"] == compiled["total"], (family, plan, compiled)
    assert plan["temp_bytes"] == compiled["temp"], (family, plan, compiled)
