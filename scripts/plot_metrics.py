"""Plot a training run's curves from its metrics.jsonl.

    python scripts/plot_metrics.py runs/copy/metrics.jsonl --out loss.png [--title TEXT]
    python scripts/plot_metrics.py runs/a/metrics.jsonl runs/b/metrics.jsonl \
        --metric exact_match --out compare.png

Draws the training loss (nats per token, log scale) and the training and
evaluation accuracy against the step, from the file the trainer appends to.
With --metric (or several files): one evaluation metric of each run against
the step on one axes, each run labelled by its workdir's name.
"""

from __future__ import annotations

import argparse
import json
import os


def read_metrics(path: str) -> dict[str, list[dict]]:
    """metrics.jsonl -> {split: [records in step order]}; a resumed run's repeats keep the last."""
    by_split: dict[str, dict[int, dict]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_split.setdefault(record["split"], {})[record["step"]] = record
    return {split: [rows[s] for s in sorted(rows)] for split, rows in by_split.items()}


def plot(metrics: dict[str, list[dict]], out: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("eval", "o-")):
        rows = metrics.get(split, [])
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=split, markersize=3)
        ax_acc.plot(steps, [r["accuracy"] for r in rows], style, label=split, markersize=3)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (nats per token)")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_compare(runs: dict[str, dict[str, list[dict]]], metric: str, out: str, title="") -> None:
    """{label: read_metrics(...)} -> one axes: each run's eval `metric` against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, metrics in runs.items():
        rows = [r for r in metrics.get("eval", []) if metric in r]
        ax.plot([r["step"] for r in rows], [r[metric] for r in rows], "o-", label=label, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"eval {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="+", help="a run's metrics.jsonl (several: compare)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="")
    parser.add_argument("--metric", help="compare this eval metric across the runs")
    args = parser.parse_args(argv)
    if args.metric or len(args.metrics) > 1:
        runs = {os.path.basename(os.path.dirname(os.path.abspath(p))): p for p in args.metrics}
        runs = {label: read_metrics(p) for label, p in runs.items()}
        plot_compare(runs, args.metric or "accuracy", args.out, args.title)
    else:
        plot(read_metrics(args.metrics[0]), args.out, args.title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
