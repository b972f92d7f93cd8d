"""Two SIGKILLs and resumes give bit-identical parameters and metrics (scripts/kill_soak.py).

The script's 20-kill run and its result are in docs/benchmarks.md.
"""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.slow  # kills and resumes a training run repeatedly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kill_soak():
    spec = importlib.util.spec_from_file_location(
        "kill_soak", os.path.join(ROOT, "scripts", "kill_soak.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_kills_then_resume_are_bit_identical(tmp_path):
    result = _kill_soak().soak(str(tmp_path / "soak"), kills=2, steps=12, seed=1)
    assert result["kills_delivered"] == 2, result["log"]
    assert result["params_bit_identical"], result
    assert result["metrics_identical"], result
    # 12 train records, evals at 5 and 10 and 12, two final-eval variants.
    assert result["metric_records"] == 12 + 3 + 2
