"""scripts/compare_peers.py, our half only: no torch or transformers needed.

Runs the script as a user would (`--impls ours`), which times our training
step in a fresh subprocess (`--_cell ours:L`) at a tiny size, and checks the
JSON record: the throughput is that of the timed steps, the FLOPs are
reformer_jax.flops.model_flops of the same model, the memory figures are ordered as
their definitions imply, and no process imported torch.
"""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from reformer_jax.flops import model_flops

pytestmark = pytest.mark.slow  # runs the peer-comparison script end to end

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    length, tokens, steps = 128, 256, 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(SCRIPTS, "compare_peers.py"),
            "--impls",
            "ours",
            "--lengths",
            str(length),
            "--tokens",
            str(tokens),
            "--steps",
            str(steps),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out) as f:
        data = json.load(f)
    return data, length, tokens, steps, run.stdout


def test_ours_cell_record_is_consistent(record):
    data, length, tokens, steps, _ = record
    (cell,) = data["cells"]
    assert cell["status"] == "ok" and cell["impl"] == "ours"
    assert cell["length"] == length and cell["batch"] == tokens // length
    assert cell["tokens"] == tokens
    assert len(cell["times_s"]) == steps and len(cell["others_cpu_share"]) == steps
    assert all(t > 0 for t in cell["times_s"])
    assert all(0.0 <= s <= 1.0 for s in cell["others_cpu_share"])
    assert cell["step_s"] == statistics.median(cell["times_s"])
    assert cell["tokens_per_s"] == pytest.approx(tokens / cell["step_s"], rel=1e-12)
    # A finite loss near log(vocab) for a freshly initialised model.
    assert 0.0 < cell["loss"] < 2 * math.log(258)
    # No torch in our cell.
    assert cell["torch_imported"] is False


def test_flops_are_model_flops_of_the_same_model(record):
    data, length, tokens, _, _ = record
    (cell,) = data["cells"]
    peers = _load("compare_peers")
    cfg = peers.ours_config(length)
    flops = model_flops(cfg, tokens // length, length)
    assert cell["flops_train"] == flops["train"]
    assert cell["flops_train_with_recompute"] == flops["train_with_recompute"]
    assert flops["train_with_recompute"] > flops["train"]  # the reversible recomputation
    assert cell["achieved_tflops"] == pytest.approx(
        flops["train_with_recompute"] / cell["step_s"] / 1e12, rel=1e-12
    )
    assert cell["matmul_peak_tflops"] > 0
    (row,) = data["summary"]
    assert row["ours_mfu"] == pytest.approx(
        cell["achieved_tflops"] / data["matmul_peak_tflops"], rel=1e-12
    )
    # The model is the issue's: 4 layers (local, lsh, local, lsh) of width 256.
    assert cfg.attention_kinds == ("local", "lsh", "local", "lsh") and cfg.n_layers == 4
    assert (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.d_head) == (256, 1024, 4, 64)
    assert (cfg.chunk_len, cfg.local_chunk_len, cfg.n_hashes) == (64, 64, 2)
    assert cfg.dropout == 0.0 and cfg.attention_dropout == 0.0
    # Parameters counted by hand: embedding, 2 x (local attention + FF), 2 x (shared-QK
    # attention + FF), output head, axial tables.
    m, f, v = 256, 1024, 258
    norm = 2 * m  # LayerNorm scale and bias
    ff = norm + m * f + f + f * m + m
    local, shared_qk = 4 * m * m + norm, 3 * m * m + norm
    head = 2 * (2 * m) + 2 * m * v + v
    axial = sum(a * b for a, b in zip(cfg.axial_shape, cfg.axial_dims, strict=True))
    assert cell["n_params"] == v * m + 2 * (local + ff) + 2 * (shared_qk + ff) + head + axial


def test_memory_figures(record):
    data, *_ = record
    (cell,) = data["cells"]
    assert cell["peak_reset"] is True
    # The step peak is a high-water mark taken after the reset: at least the RSS then.
    assert cell["step_peak_rss_mib"] >= cell["rss_after_trim_mib"] > 0
    assert cell["process_peak_rss_mib"] >= cell["step_peak_rss_mib"]
    # XLA's analysis: the donated state aliases its output; temporaries exist.
    assert cell["xla_temp_mib"] > 0 and cell["xla_argument_mib"] > 0
    assert cell["xla_alias_mib"] > 0


def test_table_printed(record):
    *_, stdout = record
    assert "| 128 | 2 |" in stdout
    assert "MFU against the measured float32 matmul peak" in stdout
