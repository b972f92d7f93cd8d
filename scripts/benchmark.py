"""Benchmarks for reformer_jax.

Usage:
    python scripts/benchmark.py attention [--lengths 1K 2K ... 64K] [--tokens 65536]
        [--hashes 1 2 4 8] [--chunk 64] [--impl xla|pallas] [--heads 4] [--dim 64]
        [--dtype float32|bfloat16] [--repeats 5] [--memory-budget-gib G] [--max-seconds 60]
        [--json results.json] [--plot fig5.png]
    python scripts/benchmark.py step --gin_file=configs/enwik8.gin [--gin_param=...]
        [--batch_size 1] [--steps 5] [--peak_tflops T] [--fit BUDGET] [--json step.json]
        (compile time, time per step, peak RSS, planner figure, MFU)
    python scripts/benchmark.py depth --gin_file=configs/enwik8.gin [--layers 4 8 12 24]
    python scripts/benchmark.py sample --gin_file=configs/imagenet64.gin [--gin_param=...]
        [--lengths 1K 4K 12288] [--new_tokens 16] [--repeats 3] [--memory configs/enwik8.gin ...]
    python scripts/benchmark.py agreement [--steps 300] [--hashes 1 2 4 8]

`attention` reproduces the setup of the paper's Figure 5 (right): the number of
tokens per step is fixed (batch = tokens // L) and, for each sequence length L,
it times one forward+backward step (jit of value_and_grad of the summed output)
of full causal attention and of causal LSH attention with 1, 2, 4 and 8 hashes
(n_buckets = default_n_buckets(L, chunk)). Each cell is compiled once (compile
time reported separately, in the JSON), run once to warm up, then timed
`--repeats` times; the table gives the median seconds per step and XLA's
compiled temp memory; `--plot PATH` draws seconds per step against length
(log-log), one line per method, like the paper's figure. A cell whose
compiled temp + argument memory exceeds the budget is not run ("skipped
(memory)"); once a method takes longer than `--max-seconds` per step, its
longer lengths are skipped ("skipped (time)"). The table goes to stdout, progress to stderr.

`sample` times generation with the decoding caches of reformer_jax.sampling
against recomputing the whole prefix for every new token, for the model of a
gin config (random weights; speed does not depend on them) at each length L:
cached = `--new_tokens` greedy decode steps at positions L - n .. L - 1 (the
compiled scan, after a prefill of the first L - n tokens); recompute = one
forward pass over L positions per token (what a cache-less sampler runs).
Positions use the sinusoidal encoding so any L fits the model. `--memory`
lists gin files whose decoding-cache size (one sample, at the file's
max_len) is reported from array shapes alone.

`agreement` trains the shrunk duplication-task model of tests/test_sampling.py
(one shared-QK LSH layer, L = 64, chunk 8, trained with LSH-2) and measures
the decode-time LSH definition of reformer_jax.sampling against training-time
LSH: for each number of hash rounds, the accuracy of greedy generation of the
second copy from `0 w 0`, the teacher-forced accuracy of the full forward
pass, and, along teacher-forced prefixes, how often the cached decoder's
greedy token equals that of recomputing the whole prefix with training-time
LSH (same rotations), with the mean absolute log-probability difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
from typing import Any

import jax
import jax.numpy as jnp

from reformer_jax import profiling
from reformer_jax.attention import full_attention, lsh_attention
from reformer_jax.flops import model_flops
from reformer_jax.lsh import default_n_buckets
from reformer_jax.profiling import GIB, MIB, parse_length


def default_memory_budget() -> float:
    """Bytes: the GPU's bytes_limit if known, else 60% of physical RAM."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return float(stats["bytes_limit"])
    return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def make_step(method: str, n_hashes: int, length: int, chunk: int, impl: str = "xla"):
    """A jitted forward+backward step; `impl` is LSH's (kernels.window.resolve_impl)."""
    if method == "full":

        def loss(q, k, v):
            out = full_attention(q, k, v, causal=True)
            return jnp.sum(out.astype(jnp.float32))

        argnums: tuple[int, ...] = (0, 1, 2)
    else:
        n_buckets = default_n_buckets(length, chunk)

        def loss(qk, v, key):
            out, _ = lsh_attention(
                qk,
                v,
                key=key,
                n_hashes=n_hashes,
                n_buckets=n_buckets,
                chunk_len=chunk,
                causal=True,
                impl=impl,
            )
            return jnp.sum(out.astype(jnp.float32))

        argnums = (0, 1)
    return jax.jit(jax.value_and_grad(loss, argnums=argnums))


def make_inputs(method: str, shape: tuple[int, ...], dtype: Any, seed: int) -> list[jax.Array]:
    """Fresh normal arrays; a fixed key per cell (also the LSH rotation key)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    n_arrays = 3 if method == "full" else 2
    arrays = [jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in keys[:n_arrays]]
    if method != "full":
        arrays.append(keys[3])
    return jax.block_until_ready(arrays)


def run_cell(
    args: argparse.Namespace, method: str, n_hashes: int, length: int, budget: float, dtype: Any
) -> dict[str, Any]:
    batch = max(1, args.tokens // length)
    shape = (batch, args.heads, length, args.dim)
    cell: dict[str, Any] = {
        "method": method,
        "n_hashes": n_hashes,
        "length": length,
        "batch": batch,
        "status": "ok",
    }
    if method != "full":
        cell["n_buckets"] = default_n_buckets(length, args.chunk)
    inputs = make_inputs(method, shape, dtype, args.seed)
    step = make_step(method, n_hashes, length, args.chunk, args.impl)

    compiled, cell["compile_s"] = profiling.compile_timed(step, *inputs)
    mem = profiling.xla_memory(compiled)
    if mem is not None:
        for name in ("temp", "argument", "output", "generated_code"):
            cell[f"{name}_mib"] = mem[name] / MIB
        if mem["temp"] + mem["argument"] > budget:
            cell["status"] = "skipped (memory)"
            return cell

    try:
        (cell["warmup_s"],) = profiling.time_steps(lambda: compiled(*inputs), 1).times
        # A warm-up already over the time limit: one timed run is enough.
        repeats = 1 if cell["warmup_s"] > args.max_seconds else args.repeats
        timed = profiling.time_steps(lambda: compiled(*inputs), repeats)
    except Exception as err:  # e.g. XLA RESOURCE_EXHAUSTED at run time
        cell["status"] = f"failed ({type(err).__name__})"
        cell["error"] = str(err)[:500]
        return cell
    cell["times_s"] = timed.times
    cell["median_s"] = timed.median
    return cell


def format_cell(cell: dict[str, Any]) -> str:
    temp = f"{cell['temp_mib']:.0f} MiB" if "temp_mib" in cell else "? MiB"
    if cell["status"] == "ok":
        return f"{cell['median_s']:.4g} s / {temp}"
    if cell["status"] == "skipped (memory)":
        return f"skipped (memory): {temp} temp + {cell['argument_mib']:.0f} MiB args"
    return cell["status"]


def bench_attention(args: argparse.Namespace) -> None:
    dtype = jnp.dtype(args.dtype)
    budget = (
        args.memory_budget_gib * GIB
        if args.memory_budget_gib is not None
        else default_memory_budget()
    )
    device = jax.devices()[0]
    methods = [("full", 0)] + [(f"LSH-{r}", r) for r in args.hashes]
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    config["memory_budget_gib"] = budget / GIB
    header = {
        "device": f"{device.device_kind} (platform {device.platform}, "
        f"{jax.device_count()} device(s))",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }

    print("# Attention forward+backward time (paper Fig. 5 right)\n")
    for name, value in header.items():
        print(f"- {name}: {value}")
    print(f"- config: {json.dumps(config)}")
    print(
        "- full = standard causal attention (q, k, v); LSH-r = causal shared-QK LSH "
        "attention with r hashes, n_buckets = default_n_buckets(L, chunk)"
    )
    print(
        "- step = jit(value_and_grad(sum(out))); cell = median s/step over repeats / "
        "XLA compiled temp memory\n"
    )
    sys.stdout.flush()

    results: list[dict[str, Any]] = []
    too_slow: set[str] = set()
    rows = []
    for length in args.lengths:
        row = [
            str(length),
            str(max(1, args.tokens // length)),
            str(default_n_buckets(length, args.chunk)),
        ]
        for method, n_hashes in methods:
            if method in too_slow:
                cell = {"method": method, "length": length, "status": "skipped (time)"}
            else:
                print(f"[bench] L={length} {method} ...", file=sys.stderr, flush=True)
                kind = "full" if method == "full" else "lsh"
                cell = run_cell(args, kind, n_hashes, length, budget, dtype)
                cell["method"] = method
                if cell.get("median_s", 0.0) > args.max_seconds:
                    too_slow.add(method)
                print(
                    f"[bench]   {format_cell(cell)} (compile {cell['compile_s']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            results.append(cell)
            row.append(format_cell(cell))
        rows.append(row)

    columns = ["L", "batch", "n_buckets"] + [m for m, _ in methods]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---:" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "config": config, "results": results}, f, indent=2)
        print(f"\nRaw results written to {args.json}")
    if args.plot:
        plot_attention(results, [m for m, _ in methods], header["device"], args)
        print(f"Plot written to {args.plot}")


def plot_attention(results, methods, device, args) -> None:
    """Seconds per step against length, log-log, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method in methods:
        cells = [c for c in results if c["method"] == method and c["status"] == "ok"]
        if cells:
            ax.plot(
                [c["length"] for c in cells],
                [c["median_s"] for c in cells],
                marker="o",
                label=method if method != "full" else "full attention",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("seconds per step (forward + backward)")
    ax.set_title(f"{args.tokens:,} tokens per step, {args.dtype}\n{device}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)


def bench_depth(args: argparse.Namespace) -> None:
    """Compiled memory of one training step vs. depth, reversible and not."""
    from reformer_jax import cli, memory

    cli.parse_gin(args.gin_file, args.gin_param)
    cfg, task, train_args = cli.model_config(), cli.task(), memory.gin_train_args()
    print(
        f"# Training-step memory vs. depth ({args.gin_file}, batch {args.batch_size}, "
        f"{cfg.max_len} tokens, device {jax.devices()[0].platform}, jax {jax.__version__})"
    )
    print()
    print("| layers | reversible: temp / total GiB | plain: temp / total GiB |")
    print("|---:|---:|---:|")
    for n in args.layers:
        cells = []
        for rev in (True, False):
            plan = memory.plan(
                cfg.replace(n_layers=n, reversible=rev),
                batch_size=args.batch_size,
                task=task,
                train_args=train_args,
            )
            cells.append(f"{plan['temp_bytes'] / GIB:.2f} / {plan['total_bytes'] / GIB:.2f}")
            print(f"[bench] {n} layers reversible={rev}: {cells[-1]}", file=sys.stderr, flush=True)
        print(f"| {n} | {cells[0]} | {cells[1]} |", flush=True)


def bench_step(args: argparse.Namespace) -> None:
    """One real training step of a gin config: time, MFU, planner vs. measured peak memory."""
    from reformer_jax import budget, cli, memory

    cli.parse_gin(args.gin_file, args.gin_param)
    # The planner's figures are `python -m reformer_jax.memory`'s for the same gin config.
    cfg, task, train_args = cli.model_config(), cli.task(), memory.gin_train_args()
    batch_size = args.batch_size
    run = cli.run_settings()
    grad_accum = cli.query("train.grad_accum_steps", "auto")
    choice = None
    if args.fit:  # the "auto" knobs from the planner's search (python -m reformer_jax.memory --fit)
        limit = budget.budget_bytes(args.fit)
        choice, _ = memory.choose(
            cfg,
            run,
            grad_accum,
            limit,
            batch_size=batch_size,
            seq_len=cfg.max_len,
            task=task,
            train_args=train_args,
        )
        run, grad_accum = choice.run_settings(run), choice.settings["grad_accum_steps"]
    run = run.resolved(cfg.max_len)
    grad_accum = min(1 if grad_accum == "auto" else grad_accum, batch_size)
    device = jax.devices()[0]
    result: dict[str, Any] = {
        "gin_file": args.gin_file,
        "gin_param": args.gin_param,
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "batch_size": batch_size,
        "seq_len": cfg.max_len,
        "grad_accum_steps": grad_accum,
        "dtype": cfg.dtype,
        "run_settings": dataclasses.asdict(run),
    }
    if choice is not None:
        result["fit"] = {"budget": args.fit, "bindings": choice.bindings(), "plans": choice.plans}
    print(f"[bench] planning {args.gin_file} ...", file=sys.stderr, flush=True)
    plan = memory.plan(
        cfg,
        batch_size=batch_size,
        grad_accum_steps=grad_accum,
        run=run,
        task=task,
        train_args=train_args,
    )
    result["planner_total_gib"] = plan["total_bytes"] / GIB
    result["planner_temp_gib"] = plan["temp_bytes"] / GIB
    result["n_params"] = plan["n_params"]

    setup = profiling.train_setup(
        cfg, batch_size=batch_size, grad_accum_steps=grad_accum, run=run, task=task
    )
    result["compile_s"] = setup.compile()
    result["rss_before_step_gib"] = profiling.rss_bytes() / GIB
    progress = lambda i: print(f"[bench] step {i + 1} of {1 + args.steps} ...", file=sys.stderr)
    # The first run is timed too: --steps 0 runs one step.
    times = profiling.time_steps(setup, 1 + args.steps, before_each=progress).times
    result["peak_rss_gib"] = profiling.process_peak_rss_bytes() / GIB
    result["first_step_s"] = times[0]
    result["step_s"] = statistics.median(times[1:] or times)
    result["times_s"] = times
    result["loss"] = setup.loss()
    tokens = batch_size * cfg.max_len
    result["tokens_per_s"] = tokens / result["step_s"]
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["measured_peak_gib"] = stats["peak_bytes_in_use"] / GIB
    flops = model_flops(cfg, batch_size, cfg.max_len)
    peak = args.peak_tflops or profiling.matmul_peak_tflops(jnp.dtype(cfg.dtype))
    result["matmul_peak_tflops"] = peak
    for name in ("train", "train_with_recompute"):
        achieved = flops[name] / result["step_s"] / 1e12
        result[f"{name}_tflops"] = achieved
        result[f"mfu_{name}"] = achieved / peak
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def _first_and_median(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds (compile + run), median of `repeats` further calls)."""
    (first,) = profiling.time_steps(fn, 1).times
    return first, profiling.time_steps(fn, repeats).median


def bench_sample(args: argparse.Namespace) -> None:
    """Tokens per second of cached decoding vs. recomputing the prefix; cache memory."""
    import functools

    from reformer_jax import cli, decoding
    from reformer_jax.model import ReformerLM

    cli.parse_gin(args.gin_file, args.gin_param)
    base = cli.model_config().replace(axial_shape=None, axial_dims=None)
    device = jax.devices()[0]
    print(
        f"# Sampling speed ({' '.join(args.gin_file)} {' '.join(args.gin_param)}; "
        f"{base.n_layers} layers {base.attention_kinds}, d_model {base.d_model}, "
        f"{base.dtype}, batch {args.batch}; device {device.device_kind}, jax {jax.__version__})"
    )
    print()
    print("| L | cached tokens/s | recompute tokens/s | speed-up | compile cached / recompute |")
    print("|---:|---:|---:|---:|---:|")
    n = args.new_tokens

    @functools.partial(jax.jit, static_argnums=0)
    def decode_n(cfg, params, cache, token):
        """n greedy decode steps from `cache`, one compiled scan."""

        def step(carry, _):
            cache, token = carry
            log_probs, cache = decoding.step(params, cfg, cache, token)
            token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
            return (cache, token), token

        return jax.lax.scan(step, (cache, token), None, length=n)[1]

    results = []
    for length in args.lengths:
        cfg = base.replace(max_len=length)
        params = jax.jit(
            lambda cfg=cfg: ReformerLM(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))[
                "params"
            ]
        )()
        tokens = jax.random.randint(jax.random.key(1), (args.batch, length), 0, cfg.vocab_size)
        key = jax.random.key(2)
        _, cache = decoding.prefill(params, cfg, tokens[:, : length - n - 1], key)

        print(f"[bench] L={length}: cached ...", file=sys.stderr, flush=True)
        first_c, cached = _first_and_median(
            functools.partial(decode_n, cfg, params, cache, tokens[:, length - n - 1]),
            args.repeats,
        )
        print(f"[bench] L={length}: recompute ...", file=sys.stderr, flush=True)
        first_r, recompute = _first_and_median(
            functools.partial(
                decoding.recompute_log_probs, params, cfg, tokens[:, : length - 1], key
            ),
            args.recompute_repeats,
        )
        row = {
            "length": length,
            "cached_tokens_per_s": args.batch * n / cached,
            "recompute_tokens_per_s": args.batch / recompute,
            "compile_cached_s": first_c - cached,
            "compile_recompute_s": first_r - recompute,
        }
        row["speedup"] = row["cached_tokens_per_s"] / row["recompute_tokens_per_s"]
        results.append(row)
        print(
            f"| {length} | {row['cached_tokens_per_s']:.1f} | {row['recompute_tokens_per_s']:.3f} "
            f"| {row['speedup']:.0f}x | {row['compile_cached_s']:.0f} s / "
            f"{row['compile_recompute_s']:.0f} s |",
            flush=True,
        )
    if args.memory:
        print()
        print("| config | max_len | layers | dtype | cache per sample |")
        print("|---|---:|---|---|---:|")
        for path in args.memory:
            cli.parse_gin([path], [])
            cfg = cli.model_config()
            size = decoding.cache_bytes(cfg, 1)
            kinds = "/".join(cfg.attention_kinds)
            print(
                f"| {path} | {cfg.max_len} | {cfg.n_layers} x {kinds} | {cfg.dtype} "
                f"| {size / MIB:.1f} MiB |"
            )
            results.append({"memory": path, "max_len": cfg.max_len, "cache_bytes": size})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def bench_agreement(args: argparse.Namespace) -> None:
    """Decode-time LSH vs. training-time LSH on a trained copy-task model."""
    import numpy as np

    from reformer_jax import decoding, sampling, trainer
    from reformer_jax.config import RunSettings
    from reformer_jax.data import synthetic
    from reformer_jax.model import ReformerConfig, ReformerLM
    from reformer_jax.tasks import LanguageModelTask

    length, vocab = 64, 64
    cfg = ReformerConfig(
        vocab_size=vocab,
        max_len=length,
        d_model=64,
        d_ff=64,
        n_heads=4,
        d_head=16,
        n_layers=1,
        attention_kinds=("lsh",),
        chunk_len=8,
        n_hashes=2,
        axial_shape=(length,),
        axial_dims=(64,),
    )
    model = ReformerLM(cfg)
    opt, lr = trainer.make_optimizer(
        steps=args.steps, schedule="rsqrt", learning_rate=0.05, warmup_steps=50
    )
    step = trainer.make_step(
        LanguageModelTask(), cfg, RunSettings(), opt, lr, mesh=profiling.one_device_mesh()
    )
    state = step.fresh_state(None, 0)
    task = synthetic.DuplicationTask(length, vocab, 32, seed=0)
    print(f"[bench] training {args.steps} steps ...", file=sys.stderr, flush=True)
    for i in range(args.steps):
        state, _ = step.fn(state, task.batch(i))
    params = state.params
    tokens = synthetic.DuplicationTask(length, vocab, args.batch, seed=99).batch(0)["tokens"]
    half = length // 2
    print(
        f"# Decode-time vs. training-time LSH (copy task L={length}, |w|={half - 1}, "
        f"{args.steps} steps, {args.batch} sequences; device {jax.devices()[0].device_kind})"
    )
    print()
    print(
        "| eval hashes | generated copy (decode) | teacher-forced copy (training LSH) "
        "| same greedy token as recompute | mean abs log-prob diff |"
    )
    print("|---:|---:|---:|---:|---:|")
    for n_hashes in args.hashes:
        ids = sampling.generate(
            params,
            cfg,
            tokens[:, : half + 1],
            jax.random.key(2),
            num_tokens=half - 1,
            greedy=True,
            n_hashes=n_hashes,
        )
        generated = float(np.mean(np.asarray(ids) == tokens[:, half + 1 :]))
        forced = model.apply({"params": params}, tokens, n_hashes=n_hashes)
        teacher = float(np.mean(np.argmax(forced, -1)[:, half + 1 :] == tokens[:, half + 1 :]))
        # Along the true sequence: cached decoding vs. recomputing each prefix.
        key = jax.random.key(3)
        log_probs, cache = decoding.prefill(params, cfg, tokens[:, :1], key, n_hashes=n_hashes)
        same, diffs = [], []
        for t in range(1, length - 1):
            log_probs, cache = decoding.decode_step(params, cfg, cache, tokens[:, t])
            if t % args.every == 0 or t == length - 2:
                ref = decoding.recompute_log_probs(
                    params, cfg, tokens[:, : t + 1], key, n_hashes=n_hashes
                )
                same.append(np.asarray(jnp.argmax(log_probs, -1) == jnp.argmax(ref, -1)))
                diffs.append(float(jnp.mean(jnp.abs(log_probs - ref))))
        print(
            f"| LSH-{n_hashes} | {100 * generated:.2f}% | {100 * teacher:.2f}% "
            f"| {100 * np.mean(same):.1f}% | {np.mean(diffs):.2e} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    att = sub.add_parser("attention", help="attention fwd+bwd time vs. length (paper Fig. 5)")
    att.add_argument(
        "--lengths",
        type=parse_length,
        nargs="+",
        default=[2**i * 1024 for i in range(7)],
        help="sequence lengths, e.g. 1024 or 1K (default 1K..64K)",
    )
    att.add_argument(
        "--tokens", type=int, default=65536, help="tokens per step; batch = tokens // L"
    )
    att.add_argument("--hashes", type=int, nargs="+", default=[1, 2, 4, 8])
    att.add_argument("--chunk", type=int, default=64, help="LSH chunk length")
    att.add_argument(
        "--impl",
        choices=["xla", "pallas", "auto", "interpret"],
        default="xla",
        help="LSH's chunk attention: jnp (xla) or the fused kernel (pallas); docs/algorithm.md",
    )
    att.add_argument("--heads", type=int, default=4)
    att.add_argument("--dim", type=int, default=64, help="head dim (of q, k and v)")
    att.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    att.add_argument("--repeats", type=int, default=5, help="timed runs per cell")
    att.add_argument(
        "--memory-budget-gib",
        type=float,
        default=None,
        help="skip cells whose compiled temp + args exceed this (default: "
        "GPU bytes_limit, or 60%% of physical RAM on CPU)",
    )
    att.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="skip longer lengths of a method once a step takes longer",
    )
    att.add_argument("--seed", type=int, default=0)
    att.add_argument("--json", metavar="PATH", help="also write raw results as JSON")
    att.add_argument("--plot", metavar="PNG", help="also draw time against length (matplotlib)")
    att.set_defaults(func=bench_attention)

    stp = sub.add_parser("step", help="one real training step: time, MFU, memory vs. planner")
    stp.add_argument("--gin_file", action="append", default=[])
    stp.add_argument("--gin_param", action="append", default=[])
    stp.add_argument("--batch_size", type=int, default=1, help="sequences per step")
    stp.add_argument(
        "--steps", type=int, default=5, help="more timed steps after the first (0: one step)"
    )
    stp.add_argument(
        "--peak_tflops", type=float, default=None, help="default: a measured matmul peak"
    )
    stp.add_argument("--json", metavar="PATH")
    stp.add_argument(
        "--fit",
        metavar="BUDGET",
        help='choose the "auto" run settings for BUDGET ("40GiB", "device") before timing',
    )
    stp.set_defaults(func=bench_step)

    depth = sub.add_parser("depth", help="compiled train-step memory vs. layers (no run)")
    depth.add_argument("--gin_file", action="append", default=[])
    depth.add_argument("--gin_param", action="append", default=[])
    depth.add_argument("--layers", type=int, nargs="+", default=[2, 6, 12, 24])
    depth.add_argument("--batch_size", type=int, default=1)
    depth.set_defaults(func=bench_depth)

    smp = sub.add_parser("sample", help="cached decoding vs. recompute: tokens/s; cache memory")
    smp.add_argument("--gin_file", action="append", default=[])
    smp.add_argument("--gin_param", action="append", default=[])
    smp.add_argument("--lengths", type=parse_length, nargs="+", default=[1024, 4096, 12288])
    smp.add_argument("--new_tokens", type=int, default=16, help="decode steps timed per length")
    smp.add_argument("--batch", type=int, default=1, help="samples decoded at once")
    smp.add_argument("--repeats", type=int, default=3, help="timed runs of the cached loop")
    smp.add_argument("--recompute_repeats", type=int, default=1, help="timed recompute passes")
    smp.add_argument(
        "--memory", nargs="*", default=[], help="gin files whose decoding-cache size to report"
    )
    smp.add_argument("--json", metavar="PATH")
    smp.set_defaults(func=bench_sample)

    agr = sub.add_parser("agreement", help="decode-time vs. training-time LSH on a copy model")
    agr.add_argument("--steps", type=int, default=300, help="training steps of the copy model")
    agr.add_argument("--hashes", type=int, nargs="+", default=[1, 2, 4, 8])
    agr.add_argument("--batch", type=int, default=64, help="evaluation sequences")
    agr.add_argument("--every", type=int, default=4, help="compare with recompute every N steps")
    agr.set_defaults(func=bench_agreement)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
