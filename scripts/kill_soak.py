"""Kill soak: SIGKILL a training run at random moments, resume it, compare with a clean run.

    python scripts/kill_soak.py [--kills 20] [--steps 90] [--seed 0] [--root DIR] [--json]

Trains the duplication (copy) task from configs/copy.gin, shrunk to seconds
(`SHRINK`), twice through `python -m reformer_jax.train`:

  1. a reference run, never interrupted;
  2. the same run, SIGKILLed `--kills` times and restarted after each kill
     (resuming from its newest readable checkpoint), then run to the end.

Kill moments cycle through three targets, each at a random point:
  step        after a random number of further finished steps, plus a random
              fraction of a step's time;
  checkpoint  as soon as an orbax write is under way (its temporary directory
              exists);
  eval        as soon as the train record of an evaluation step is written
              (the evaluation runs next).
What the workdir showed at each kill is recorded as the observed phase.

The run passes when the final parameters are bit-identical to the reference's
and metrics.jsonl holds the same records (every field but the wall-clock
tokens_per_second) in the same order: a resumed run truncates metrics.jsonl
back to its checkpoint, so no step is logged twice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EVAL_EVERY = 5
# copy.gin at a size that trains a step in milliseconds on a CPU.
SHRINK = [
    "SEQ_LEN = 32",
    "VOCAB = 8",
    "ReformerConfig.axial_shape = (32,)",
    "ReformerConfig.axial_dims = (16,)",
    "ReformerConfig.d_model = 16",
    "ReformerConfig.d_ff = 32",
    "ReformerConfig.n_heads = 2",
    "ReformerConfig.d_head = 8",
    "ReformerConfig.chunk_len = 8",
    "ReformerConfig.dropout = 0.1",
    "train.batch_size = 8",
    "train.warmup_steps = 4",
    "train.log_every = 1",
    f"train.eval_every = {EVAL_EVERY}",
    "train.eval_batches = 2",
    "train.checkpoint_every = 3",
    "train.final_eval = ('full', 'lsh-1')",
    "train.progress = False",
]
VOLATILE = {"tokens_per_second"}  # wall-clock: differs between any two runs


def _command(workdir: str, steps: int, gin_file: str, extra: list[str]) -> list[str]:
    params = [*SHRINK, f"train.steps = {steps}", *extra]
    return [
        sys.executable,
        "-m",
        "reformer_jax.train",
        f"--gin_file={gin_file}",
        f"--workdir={workdir}",
        *(f"--gin_param={p}" for p in params),
    ]


def _records(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):  # a line cut by the kill is not a record yet
                out.append(json.loads(line))
    return out


def _train_steps(workdir: str) -> int:
    steps = [r["step"] for r in _records(workdir) if r["split"] == "train"]
    return max(steps, default=0)


def _tmp_checkpoints(workdir: str) -> set[str]:
    """orbax's temporary directories: checkpoint writes under way (or cut short by a kill)."""
    d = os.path.join(workdir, "checkpoints")
    return {n for n in os.listdir(d) if ".orbax-checkpoint-tmp" in n} if os.path.isdir(d) else set()


def _before_eval(workdir: str, eval_every: int) -> bool:
    """The last record is the train record of an evaluation step: the evaluation runs now."""
    records = _records(workdir)
    return (
        bool(records) and records[-1]["split"] == "train" and records[-1]["step"] % eval_every == 0
    )


def _phase(workdir: str, eval_every: int, stale: set[str]) -> str:
    """What the workdir shows: an eval about to run or running, a checkpoint write, or a step.

    Checkpoint writes are asynchronous, so one may be under way during the
    next steps or an evaluation; both are then named ("eval+checkpoint").
    """
    names = [
        n
        for n, on in (
            ("eval", _before_eval(workdir, eval_every)),
            ("checkpoint", bool(_tmp_checkpoints(workdir) - stale)),
        )
        if on
    ]
    return "+".join(names) or "step"


def _env(root: str) -> dict[str, str]:
    """The runs' environment: this checkout first on the path, and a shared XLA cache
    so that each restart loads its compiled step instead of compiling it again."""
    return {
        "JAX_COMPILATION_CACHE_DIR": os.path.join(root, "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        **os.environ,
        "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_for(proc: subprocess.Popen, condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.005)
    raise TimeoutError("the run made no progress; is the machine overloaded?")


def soak(
    root: str,
    *,
    kills: int,
    steps: int,
    seed: int = 0,
    gin_file: str = "configs/copy.gin",
    extra: list[str] = (),
    timeout: float = 900,
) -> dict:
    """Runs the reference and the killed run under `root`; returns the comparison."""
    import jax

    from reformer_jax import checkpoints

    rng = random.Random(seed)
    shutil.rmtree(root, ignore_errors=True)
    ref, killed = os.path.join(root, "reference"), os.path.join(root, "killed")
    env = _env(root)
    t0 = time.monotonic()
    done = subprocess.run(
        _command(ref, steps, gin_file, list(extra)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"reference run failed:\n{done.stderr}")
    ref_seconds = time.monotonic() - t0
    eval_every = EVAL_EVERY
    log = []
    cmd = _command(killed, steps, gin_file, list(extra))
    for i in range(kills):
        target = ("step", "checkpoint", "eval")[i % 3]
        stale = _tmp_checkpoints(killed)  # left by earlier kills
        proc = _start(cmd, env)
        start_step = _train_steps(killed)
        if target == "step":
            goal = start_step + rng.randint(1, max(1, 2 * steps // (kills + 1)))
            hit = _wait_for(proc, lambda g=goal: _train_steps(killed) >= g, timeout)
            if hit:
                time.sleep(rng.uniform(0.0, 0.02))  # inside the next step, at a random point
        elif target == "checkpoint":
            hit = _wait_for(proc, lambda old=stale: bool(_tmp_checkpoints(killed) - old), timeout)
        else:
            hit = _wait_for(
                proc,
                lambda s=start_step: _before_eval(killed, eval_every) and _train_steps(killed) > s,
                timeout,
            )
        observed = _phase(killed, eval_every, stale)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        if not hit and proc.returncode not in (0, -signal.SIGKILL):
            raise RuntimeError(f"run {i} failed before its kill:\n{err}")
        log.append(
            {
                "kill": i + 1,
                "target": target,
                "observed": observed,
                "delivered": hit,
                "at_step": _train_steps(killed),
            }
        )
        if not hit:  # the run ended before the moment came: nothing left to kill
            break
    last = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if last.returncode:
        raise RuntimeError(f"final resume failed:\n{last.stderr}")

    want, got = checkpoints.load_run(ref), checkpoints.load_run(killed)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    params_equal = got.step == want.step and all(
        a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        for a, b in zip(leaves(got.params), leaves(want.params), strict=True)
    )
    strip = lambda rs: [{k: v for k, v in r.items() if k not in VOLATILE} for r in rs]
    want_records, got_records = strip(_records(ref)), strip(_records(killed))
    return {
        "kills_delivered": sum(e["delivered"] for e in log),
        "kills_asked": kills,
        "observed_phases": {
            p: sum(p in e["observed"].split("+") for e in log if e["delivered"])
            for p in ("step", "checkpoint", "eval")
        },
        "steps": steps,
        "reference_seconds": round(ref_seconds, 1),
        "params_bit_identical": bool(params_equal),
        "metrics_identical": got_records == want_records,
        "metric_records": len(want_records),
        "log": log,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "kill_soak"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = soak(args.root, kills=args.kills, steps=args.steps, seed=args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for entry in result["log"]:
            print(entry)
        print({k: v for k, v in result.items() if k != "log"})
    ok = result["params_bit_identical"] and result["metrics_identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
