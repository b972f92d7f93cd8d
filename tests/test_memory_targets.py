"""The shipped configs fit the memory they promise (docs/benchmarks.md).

Each case runs the memory planner (`python -m reformer_jax.memory --json`): XLA's
compiled memory analysis of one full training step (loss, gradients, Adam) of
the config as shipped, on the CPU compiler. It allocates nothing, so a plan for a
million tokens runs on a CI machine; the figures are deterministic for a given
jax version, and the margins below are what the configs' headers quote.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # compiles the shipped configs' full-size training steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


@pytest.mark.parametrize(
    "gin_file, budget_gib",
    [
        ("enwik8.gin", 8.0),  # the paper's enwik8-64K model, 8 x 64K tokens per step
        ("imagenet64.gin", 4.0),  # 8 images of 12,288 tokens
        ("long_1m.gin", 16.0),  # one sequence of 2^20 tokens, 6 layers, d_model 512
    ],
)
def test_config_step_fits_its_budget(gin_file, budget_gib):
    result = subprocess.run(
        [sys.executable, "-m", "reformer_jax.memory", f"--gin_file=configs/{gin_file}", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["total_bytes"] <= budget_gib * GIB, plan
    # The total holds the parameters and Adam's two moments beside the temporaries.
    assert plan["total_bytes"] >= plan["temp_bytes"] + 3 * plan["params_bytes"]
