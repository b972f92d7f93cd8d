"""Multi-host data parallelism for real: 2 processes x 4 CPU devices = 1 process x 8 devices.

Both processes run `python -m reformer_jax.train` and meet through
`jax.distributed.initialize` on the loopback address, with CPU collectives
(gloo) across them. Each keeps its own rows of every batch; the losses must
equal those of one process driving 8 devices on the same global batches, and
only process 0 writes the metrics and TensorBoard files.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY_GIN

pytestmark = pytest.mark.slow  # starts several processes that train together

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_GIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "reformer_jax.train",
        f"--gin_file={TINY}",
        f"--workdir={workdir}",
        "--gin_param=train.steps=4",
        "--gin_param=train.eval_every=2",
        *extra,
    ]


def _env(devices):
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_processes_of_four_devices_equal_one_of_eight(tmp_path):
    multi = str(tmp_path / "multi")
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _train_cmd(
                multi, f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"
            ),
            cwd=ROOT,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    single = str(tmp_path / "single")
    one = subprocess.run(
        _train_cmd(single), cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=900
    )
    assert one.returncode == 0, one.stderr

    got, want = _records(multi), _records(single)
    # Process 0 alone writes: one record per (step, split), one event file.
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    assert [(r["step"], r["split"]) for r in got] == [
        (1, "train"),
        (2, "train"),
        (2, "eval"),
        (3, "train"),
        (4, "train"),
        (4, "eval"),
    ]
    assert len(os.listdir(os.path.join(multi, "tensorboard"))) == 1
    for g, w in zip(got, want, strict=True):
        for name in ("loss", "accuracy"):
            np.testing.assert_allclose(g[name], w[name], rtol=1e-6, err_msg=f"{g['step']} {name}")
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]
