"""A checkpoint written before the network was split into a stack and heads still loads.

tests/data/legacy_v1 is a tiny run (LSH, local, full and shared-QK full layers,
axial positions) trained and saved by commit 9bf76af, with what that commit
computed from it (its README says how). Today's code must read it and give
the same numbers (one deliberate change since: the README says which).
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer_jax import checkpoints, cli, decoding, evaluate, sampling
from reformer_jax.config import RunSettings
from reformer_jax.model import ReformerLM
from tests import inprocess

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy_v1")


def _reference():
    return np.load(os.path.join(FIXTURE, "reference.npz"))


def test_old_checkpoint_gives_the_same_log_probs_and_samples():
    run = checkpoints.load_run(FIXTURE)
    ref = _reference()
    assert run.step == 4 and run.config.pos_encoding == "axial"  # saved as "auto"
    log_probs = ReformerLM(run.config).apply({"params": run.params}, jnp.asarray(ref["tokens"]))
    np.testing.assert_allclose(log_probs, ref["log_probs"], rtol=0, atol=1e-6)
    key = jax.random.key(7)
    prompt = jnp.asarray(ref["prompt"])
    first, _ = decoding.prefill(run.params, run.config, prompt, key)
    np.testing.assert_allclose(first, ref["prefill_log_probs"], rtol=0, atol=1e-6)
    greedy = sampling.generate(run.params, run.config, prompt, key, num_tokens=12, greedy=True)
    np.testing.assert_array_equal(greedy, ref["greedy"])


@pytest.mark.slow
def test_old_checkpoint_evaluates_to_the_same_metrics(tmp_path):
    for args, name in (
        ((), "evaluate_default.json"),
        (("--variants", "full", "lsh-1"), "evaluate.json"),
    ):
        result = inprocess.run(evaluate.main, f"--workdir={FIXTURE}", "--json", *args)
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout.strip().splitlines()[-1])
        with open(os.path.join(FIXTURE, name)) as f:
            want = json.load(f)
        assert got["step"] == want["step"]
        assert got["results"].keys() == want["results"].keys()
        for label, metrics in want["results"].items():
            for metric, value in metrics.items():
                np.testing.assert_allclose(got["results"][label][metric], value, rtol=1e-6)


def test_old_run_settings_bindings_are_read_as_run_settings(tmp_path):
    """Chunk sizes were ReformerConfig fields before RunSettings: old gin files and
    --gin_param bindings still set them, on RunSettings, with a warning."""
    old = tmp_path / "old.gin"
    old.write_text("include 'base.gin'\nReformerConfig.ff_chunk_size = 16\n")
    cli.parse_gin(
        [str(old)],
        ["SEQ_LEN = 64", "VOCAB = 16", "N_HASHES = 2", "ReformerConfig.loss_chunk_size = 8"],
    )
    assert cli.run_settings() == RunSettings(ff_chunk_size=16, loss_chunk_size=8)
    assert "ff_chunk_size" not in {f.name for f in dataclasses.fields(cli.model_config())}
