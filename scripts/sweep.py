"""Run a grid of gin overrides, one workdir per point, and tabulate the results.

    python scripts/sweep.py --gin_file=configs/copy.gin --sweep 'N_HASHES=[1,2,4]' \\
        [--sweep 'train.learning_rate=[0.02,0.05]'] [--gin_param=...] \\
        [--root=runs/sweep] [--parallel=2]

Each point of the Cartesian product of the --sweep lists runs
`python -m reformer_jax.train` with its bindings as extra --gin_param flags in
<root>/<name=value,...>; a point whose workdir already holds a finished run
resumes (and so finishes at once). At the end a markdown table gives, per
point, the last eval metrics and any final Table-2 evaluations.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def parse_sweep(text: str) -> tuple[str, list]:
    """'N_HASHES=[1,2,4]' -> ('N_HASHES', [1, 2, 4])."""
    name, sep, values = text.partition("=")
    if not sep:
        raise SystemExit(f"error: --sweep {text!r} is not NAME=[v1,v2,...]")
    try:
        parsed = ast.literal_eval(values.strip())
    except (ValueError, SyntaxError):
        raise SystemExit(f"error: --sweep {text!r}: the values must be a Python list") from None
    if not isinstance(parsed, (list, tuple)) or not parsed:
        raise SystemExit(f"error: --sweep {text!r}: give a non-empty list of values")
    return name.strip(), list(parsed)


def gin_value(value) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def last_metrics(workdir: str) -> dict[str, dict]:
    """split -> the last record of that split in <workdir>/metrics.jsonl."""
    out: dict[str, dict] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                out[rec["split"]] = rec
    return out


def run_point(args, point: dict) -> tuple[dict, int, str]:
    name = ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "_")
    workdir = os.path.join(args.root, name)
    cmd = [sys.executable, "-m", "reformer_jax.train", f"--workdir={workdir}"]
    cmd += [f"--gin_file={f}" for f in args.gin_file]
    cmd += [f"--gin_param={p}" for p in args.gin_param]
    cmd += [f"--gin_param={k} = {gin_value(v)}" for k, v in point.items()]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep.log"), "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    print(f"[sweep] {name}: exit {code}", file=sys.stderr, flush=True)
    return point, code, workdir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gin_file", action="append", required=True)
    parser.add_argument("--gin_param", action="append", default=[])
    parser.add_argument("--sweep", action="append", required=True, help="NAME=[v1,v2,...]")
    parser.add_argument("--root", default="runs/sweep", help="parent of the points' workdirs")
    parser.add_argument("--parallel", type=int, default=1, help="points run at once")
    args = parser.parse_args(argv)
    axes = [parse_sweep(s) for s in args.sweep]
    points = [
        dict(zip([n for n, _ in axes], combo, strict=True))
        for combo in itertools.product(*[vals for _, vals in axes])
    ]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results = list(pool.map(lambda p: run_point(args, p), points))

    names = [n for n, _ in axes]
    finals = sorted({s for _, _, wd in results for s in last_metrics(wd) if s.startswith("final/")})
    columns = (
        names + ["exit", "step", "eval loss", "eval accuracy"] + [f"{s[6:]} acc" for s in finals]
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for point, code, workdir in results:
        m = last_metrics(workdir)
        ev = m.get("eval") or m.get("train") or {}
        cells = [str(point[n]) for n in names] + [
            str(code),
            str(ev.get("step", "-")),
            f"{ev.get('loss', float('nan')):.4f}",
            f"{ev.get('accuracy', float('nan')):.4f}",
        ]
        cells += [f"{m[s]['accuracy']:.4f}" if s in m else "-" for s in finals]
        print("| " + " | ".join(cells) + " |")
    if any(code for _, code, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
