"""Training-step speed and memory: reformer_jax against HF transformers' Reformer.

    pip install -e '.[peers]'          # torch and transformers, never in the default install
    python scripts/compare_peers.py [--lengths 1K 4K 16K 64K] [--tokens 16384] [--steps 5]
        [--steps_long 3] [--impls ours hf] [--device cpu|gpu] [--json peers.json]
        [--plot docs/figures/peers.png]

Both sides train the same model: vocabulary 258, d_model 256, 4
heads x 64, d_ff 1024, layers (local, lsh, local, lsh), chunk 64 for both
kinds, one chunk back and none forward, 2 hash rounds, buckets = the paper's
2L/c (reformer_jax.lsh.default_n_buckets, factorised above 128, given to HF as
num_buckets), axial positions (a near-square factorisation of L, widths 64 +
192), dropout 0, causal. Tokens per step are fixed (batch = tokens // L), and
one sequence at lengths above it.

A training step is forward, loss, backward and an Adam update:
reformer_jax.trainer.train_step under jit (parameters and Adam state donated)
for ours; for HF, `ReformerModelWithLMHead` in train() mode (its reversible
backward runs only then) with labels = inputs, `loss.backward()` and
torch.optim.Adam.step(), torch.set_num_threads(cores). The first step
(compilation, warm-up) is not timed; the figure is the median of the next
--steps steps (--steps_long at lengths >= 64K).

Every (implementation, length) cell runs in a fresh subprocess of this script
(`--_cell ours:4096`), so torch and jax never share a process and each memory
figure belongs to one cell. Memory per cell:
- rss_before_step: resident memory just before the first step (framework,
  model, optimizer state and the batch; for ours after compilation);
- step_peak_rss: the peak resident memory over the timed steps (the kernel's
  high-water mark reset after the warm-up step, with freed heap returned to
  the OS first), the same definition for both: the memory ratio uses it;
- process_peak_rss: ru_maxrss of the whole cell (for ours it includes XLA's
  compilation);
- ours also: XLA's compiled memory_analysis of the step (arguments, outputs,
  temporaries).

FLOPs are reformer_jax.flops.model_flops (2 per multiply-add, backward = 2x forward,
plus the reversible backward pass's recomputation of every layer), the same
count for both, divided by the step time and by the machine's matmul peak,
measured by a probe in each framework (the larger of the two is the machine's
peak). A same-model check (`--_cell check:128`, needs both frameworks in one
process) converts the HF model's random weights with reformer_jax.convert and
compares the loss with HF's buckets injected, and the parameter counts.

`--device gpu` runs both sides on the GPU (jax's default device; HF's model
and batch moved to "cuda"), float32 with TF32 matmuls on both (jax's default
precision on GPUs; torch.backends.cuda.matmul.allow_tf32 = True for HF), our
knobs at "all at once" (GPU_KNOBS) and no CPU XLA flags. There the memory
columns are device memory, not RSS: ours `memory_stats()["peak_bytes_in_use"]`
(the whole cell, compilation's autotuning included), HF
`torch.cuda.max_memory_allocated()` over the timed steps; "before step" is the
memory in use just before the first step. Step times are taken after
synchronising the device. The same-model check stays on the CPU.

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from reformer_jax import profiling
from reformer_jax.flops import model_flops
from reformer_jax.profiling import MIB, load_average, parse_length

VOCAB = 258
D_MODEL = 256
N_HEADS = 4
D_HEAD = 64
D_FF = 1024
KINDS = ("local", "lsh", "local", "lsh")
CHUNK = 64
N_HASHES = 2
AXIAL_DIMS = (64, 192)
SEED = 0


def axial_shape(length: int) -> tuple[int, int]:
    """A near-square factorisation (a, b) of length, a <= b."""
    a = math.isqrt(length)
    while length % a:
        a -= 1
    return a, length // a


def n_buckets(length: int) -> int | tuple[int, ...]:
    """The paper's 2L/c, factorised above 128 (reformer_jax.lsh.default_n_buckets)."""
    from reformer_jax.lsh import default_n_buckets

    n = default_n_buckets(length, CHUNK)
    return n if isinstance(n, int) else tuple(n)


# Our speed knobs (RunSettings fields; None = all heads / the whole
# sequence at once). Two heads at a time and 256-token feed-forward and loss
# chunks: at L = 1K, XLA's temporaries drop from 1,047 MiB (all None) to 626
# MiB for ~5% more time (docs/benchmarks.md). OURS_KNOBS may override them
# per length.
DEFAULT_KNOBS = {
    "attention_head_chunk": 2,
    "ff_chunk_size": 256,
    "loss_chunk_size": 256,
}
# With one sequence per step the feed-forward/projection and loss chunks hold
# 4,096 tokens, as 256-token chunks of a batch of 16 do at L = 1K: a 256-token
# chunk of one sequence makes [256, 256] x [256, 1024] matmuls and L / 256
# trips through each chunk loop per layer. The step took 6.5 s instead of 5.1 s
# at 16K and 42.7 s instead of 23.5-27.5 s at 64K (docs/benchmarks.md); XLA's
# temporaries grow by <= 6 MiB. At 4K (batch 4) 1,024-token chunks were no
# faster than 256-token ones.
OURS_KNOBS: dict[int, dict[str, Any]] = {
    16384: {"ff_chunk_size": 4096, "loss_chunk_size": 4096},
    65536: {"ff_chunk_size": 4096, "loss_chunk_size": 4096},
}
# On a GPU memory is plentiful at these sizes and loops cost launches: all at once.
GPU_KNOBS = {"attention_head_chunk": None, "ff_chunk_size": None, "loss_chunk_size": None}


# XLA:CPU flags of our cells: no XNNPACK ("ynn") fusions, which take their
# operands materialised (a per-feature broadcast becomes a full [tokens, d]
# array; see reformer_jax/memory.py).
OURS_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="


def ours_knobs(
    length: int, overrides: dict[str, dict[str, Any]] | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Our speed knobs at `length`: defaults, OURS_KNOBS, then --ours_knobs overrides."""
    if device == "gpu":
        knobs = dict(GPU_KNOBS)
    else:
        knobs = {**DEFAULT_KNOBS, **OURS_KNOBS.get(length, {})}
    return {**knobs, **(overrides or {}).get(str(length), {})}


def ours_config(length: int, **overrides):
    from reformer_jax.config import ReformerConfig

    fields = dict(
        vocab_size=VOCAB,
        max_len=length,
        d_model=D_MODEL,
        d_ff=D_FF,
        n_heads=N_HEADS,
        d_head=D_HEAD,
        n_layers=len(KINDS),
        attention_kinds=KINDS,
        chunk_len=CHUNK,
        local_chunk_len=CHUNK,
        n_hashes=N_HASHES,
        n_buckets=n_buckets(length),
        n_chunks_before=1,
        n_chunks_after=0,
        axial_shape=axial_shape(length),
        axial_dims=AXIAL_DIMS,
        dropout=0.0,
        ff_activation="relu",
        dtype="float32",
    )
    fields.update(overrides)
    return ReformerConfig(**fields)


def hf_config(length: int):
    from transformers import ReformerConfig

    buckets = n_buckets(length)
    return ReformerConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_attention_heads=N_HEADS,
        attention_head_size=D_HEAD,
        feed_forward_size=D_FF,
        attn_layers=list(KINDS),
        lsh_attn_chunk_length=CHUNK,
        local_attn_chunk_length=CHUNK,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        local_num_chunks_before=1,
        local_num_chunks_after=0,
        num_hashes=N_HASHES,
        num_buckets=buckets if isinstance(buckets, int) else list(buckets),
        axial_pos_embds=True,
        axial_pos_shape=list(axial_shape(length)),
        axial_pos_embds_dim=list(AXIAL_DIMS),
        max_position_embeddings=length,
        hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        hidden_act="relu",
        is_decoder=True,
        layer_norm_eps=1e-12,
        chunk_size_lm_head=0,
        chunk_size_feed_forward=0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
    )


def tokens_batch(length: int, tokens: int) -> int:
    return max(1, tokens // length)


# ----------------------------------------------------------------------------- cells


def warm_up_and_time(
    one_step: Callable[[], Any],
    steps: int,
    record: dict[str, Any],
    before_timed: Callable[[], None] | None = None,
) -> None:
    """The warm-up step, the RSS high-water mark reset (freed heap returned first),
    then `steps` timed steps: their figures into `record`. `before_timed()` runs
    between the reset and the timed steps."""
    (record["first_step_s"],) = profiling.time_steps(one_step, 1).times
    record["warmup_peak_rss_mib"] = profiling.peak_rss_bytes() / MIB
    record["peak_reset"] = profiling.reset_peak_rss()
    record["rss_after_trim_mib"] = profiling.rss_bytes() / MIB
    if before_timed is not None:
        before_timed()
    timed = profiling.time_steps(one_step, steps)
    record["times_s"], record["others_cpu_share"] = timed.times, timed.others_cpu_share
    record["step_peak_rss_mib"] = profiling.peak_rss_bytes() / MIB


def run_ours(
    length: int, batch: int, steps: int, knobs: dict[str, Any], device: str = "cpu"
) -> dict[str, Any]:
    """One cell of ours: compile, warm up, time `steps` training steps."""
    import jax

    from reformer_jax.config import RunSettings
    from reformer_jax.model import count_params

    cfg = ours_config(length)
    setup = profiling.train_setup(cfg, batch_size=batch, seed=SEED, run=RunSettings(**knobs))
    compile_s = setup.compile()
    mem = profiling.xla_memory(setup.fn)
    xla = {}
    if mem is not None:
        xla = {f"xla_{name}_mib": mem[name] / MIB for name in profiling.XLA_MEMORY_FIELDS}
        xla["xla_total_mib"] = mem["total"] / MIB
    record = {
        "n_params": count_params(setup.state.params),
        "compile_s": compile_s,
        "rss_before_step_mib": profiling.rss_bytes() / MIB,
        **xla,
    }
    dev = jax.devices()[0]
    if device == "gpu":
        if dev.platform != "gpu":
            raise RuntimeError(f"--device gpu, but jax's default device is {dev}")
        record["rss_before_step_mib"] = dev.memory_stats()["bytes_in_use"] / MIB

    warm_up_and_time(setup, steps, record)
    if device == "gpu":
        # No reset exists for jax's peak: it covers the whole cell.
        record["step_peak_rss_mib"] = dev.memory_stats()["peak_bytes_in_use"] / MIB
        record["rss_after_trim_mib"] = record["rss_before_step_mib"]
    record["loss"] = setup.loss()
    record["matmul_peak_tflops"] = profiling.matmul_peak_tflops("float32")
    record["framework"] = f"jax {jax.__version__}"
    record["device"] = dev.device_kind
    record["settings"] = knobs | {
        "dtype": cfg.dtype,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
    return record


def run_hf(
    length: int, batch: int, steps: int, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """One cell of HF transformers' ReformerModelWithLMHead, the same step."""
    import numpy as np
    import torch
    import transformers
    from transformers import ReformerModelWithLMHead

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    gpu = device == "gpu"
    torch_device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        # TF32 matmuls, as jax's default precision gives ours on a GPU.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = ReformerModelWithLMHead(hf_config(length)).to(torch_device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(SEED)
    ids = torch.from_numpy(rng.integers(0, VOCAB, (batch, length)).astype(np.int64)).to(
        torch_device
    )
    in_use = torch.cuda.memory_allocated() if gpu else profiling.rss_bytes()
    record: dict[str, Any] = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "rss_before_step_mib": in_use / MIB,
    }

    box = {}

    def one_step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        box["loss"] = float(loss.detach())
        if gpu:
            torch.cuda.synchronize()

    def gpu_peak_reset():
        torch.cuda.reset_peak_memory_stats()
        record["rss_after_trim_mib"] = torch.cuda.memory_allocated() / MIB

    warm_up_and_time(one_step, steps, record, before_timed=gpu_peak_reset if gpu else None)
    if gpu:
        record["step_peak_rss_mib"] = torch.cuda.max_memory_allocated() / MIB
        record["device"] = torch.cuda.get_device_name()
    record["loss"] = box["loss"]
    record["matmul_peak_tflops"] = torch_matmul_peak_tflops(device=torch_device.type)
    record["framework"] = f"torch {torch.__version__}, transformers {transformers.__version__}"
    record["settings"] = {
        "threads": threads,
        "dtype": "float32" + (" (TF32 matmuls)" if gpu else ""),
    }
    return record


def torch_matmul_peak_tflops(n: int | None = None, repeats: int = 10, device: str = "cpu") -> float:
    """reformer_jax.profiling.matmul_peak_tflops's probe in torch: one float32 n x n matmul."""
    import torch

    gpu = device == "cuda"
    n = n or (8192 if gpu else 2048)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def matmul() -> None:
        a @ b
        sync()

    matmul()
    return 2 * n**3 / profiling.time_steps(matmul, repeats).median / 1e12


def run_check(length: int) -> dict[str, Any]:
    """Same model: HF's random weights converted to ours give HF's loss (HF's buckets injected)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import ReformerModelWithLMHead

    from reformer_jax import convert
    from reformer_jax.model import ReformerLM, count_params

    jax.config.update("jax_default_matmul_precision", "highest")
    # A sibling script: importable as the check runs as `python scripts/compare_peers.py`
    # (spawn), which puts scripts/ first on sys.path.
    from make_hf_fixture import log_softmax, randomize

    torch.manual_seed(SEED)
    hf_cfg = hf_config(length)
    model = ReformerModelWithLMHead(hf_cfg).eval()
    # Weights at trained-model scales: HF's N(0, 0.02) init makes attention nearly uniform.
    randomize(model, torch.Generator().manual_seed(SEED))
    model = model.double()
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    hf_logp = log_softmax(out.logits.numpy())
    # HF's loss: position t predicts token t + 1, mean over the batch, in float64.
    hf_nll = -np.take_along_axis(hf_logp[:, :-1], ids.numpy()[:, 1:, None], axis=-1)
    buckets = {
        i: b.numpy() for i, b in enumerate(out.past_buckets_states.buckets_cache) if b.numel()
    }
    tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    cfg = convert.config_from_hf(hf_cfg.to_dict())
    params = convert.params_from_hf(tensors, cfg, source="random HF model")
    apply = lambda output: ReformerLM(cfg).apply(
        {"params": params},
        jnp.asarray(ids.numpy(), jnp.int32),
        output=output,
        buckets=convert.buckets_from_hf(buckets, cfg),
    )
    sums = apply("loss")
    ours_loss = float(sums["nll"] / sums["weight"])
    hf_loss = float(np.mean(hf_nll))
    max_logp_diff = float(np.max(np.abs(np.asarray(apply("log_probs"), np.float64) - hf_logp)))
    # The benchmark's own config of ours at this length: its parameter count.
    ours_params = count_params(
        jax.eval_shape(
            lambda: ReformerLM(ours_config(length)).init(
                jax.random.key(0), jnp.zeros((1, length), jnp.int32)
            )["params"]
        )
    )
    return {
        "hf_loss_float64": hf_loss,
        "ours_loss_converted": ours_loss,
        "abs_loss_diff": abs(ours_loss - hf_loss),
        "max_abs_log_prob_diff": max_logp_diff,
        # HF 5.x holds lm_head.bias (vocab entries) besides the decoder's bias it uses.
        "hf_params": sum(p.numel() for p in model.parameters()),
        "hf_params_used": sum(
            p.numel() for n, p in model.named_parameters() if n != "lm_head.bias"
        ),
        "converted_params": count_params(params),
        "ours_params": ours_params,
        "lsh_layers_with_hf_buckets": sorted(buckets),
    }


def run_cell(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    impl, length = spec.split(":")
    length = int(length)
    if impl == "check":
        return {"impl": impl, "length": length, **run_check(length)}
    batch = tokens_batch(length, args.tokens)
    steps = args.steps_long if length >= args.long_from else args.steps
    load = load_average()
    if impl == "ours":
        knobs = ours_knobs(length, json.loads(args.ours_knobs or "{}"), args.device)
        record = run_ours(length, batch, steps, knobs, args.device)
    elif impl == "hf":
        record = run_hf(length, batch, steps, args.threads, args.device)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    record.update(
        impl=impl,
        length=length,
        batch=batch,
        tokens=batch * length,
        load_avg_1min_before=load,
        load_avg_1min_after=load_average(),
        # Resetting the high-water mark also resets ru_maxrss: the whole cell's peak is
        # the larger of the two marks.
        process_peak_rss_mib=max(
            profiling.process_peak_rss_bytes() / MIB, record["warmup_peak_rss_mib"]
        ),
        torch_imported="torch" in sys.modules,
        jax_imported="jax" in sys.modules,
    )
    record["step_s"] = statistics.median(record["times_s"])
    record["tokens_per_s"] = record["tokens"] / record["step_s"]
    flops = model_flops(ours_config(length), batch, length)
    record["flops_train"] = flops["train"]
    record["flops_train_with_recompute"] = flops["train_with_recompute"]
    record["achieved_tflops"] = flops["train_with_recompute"] / record["step_s"] / 1e12
    return record


def spawn(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one cell in a fresh subprocess of this script; its JSON record."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cell.json")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--_cell",
            spec,
            "--_out",
            out,
            "--tokens",
            str(args.tokens),
            "--steps",
            str(args.steps),
            "--steps_long",
            str(args.steps_long),
            "--long_from",
            str(args.long_from),
            "--threads",
            str(args.threads),
            "--ours_knobs",
            args.ours_knobs or "{}",
            "--device",
            args.device,
        ]
        env = dict(os.environ)
        xla_flags = args.ours_xla_flags
        if xla_flags is None:
            xla_flags = OURS_XLA_FLAGS if args.device == "cpu" else ""
        if spec.startswith("ours:") and xla_flags:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
        if spec.startswith("check:"):
            env["JAX_PLATFORMS"] = "cpu"  # the same-model check is float64 maths on the CPU
        elif args.device == "gpu":
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        if proc.returncode != 0 or not os.path.exists(out):
            impl, length = spec.split(":")
            tail = proc.stdout.strip().splitlines()[-5:]
            print(f"[peers] {spec} failed:\n  " + "\n  ".join(tail), file=sys.stderr)
            return {
                "impl": impl,
                "length": int(length),
                "status": f"failed (exit {proc.returncode})",
                "error": "\n".join(tail),
            }
        with open(out) as f:
            record = json.load(f)
    record["status"] = "ok"
    return record


# ----------------------------------------------------------------------------- report


def machine(device: str = "cpu") -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "device": device,
    }
    if device == "gpu":
        query = [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ]
        try:
            smi = subprocess.run(query, capture_output=True, text=True)
            info["gpu"] = smi.stdout.strip() or f"unknown ({smi.stderr.strip()[:200]})"
        except OSError as err:
            info["gpu"] = f"unknown ({err})"
    return info


def where(info: dict[str, Any]) -> str:
    """The machine in words, for titles."""
    if info.get("device") == "gpu":
        return f"{info['gpu']}; {info['cpu']}"
    return f"{info['cpu']}, {info['cores']} cores"


def memory_name(info: dict[str, Any]) -> str:
    return "GPU memory" if info.get("device") == "gpu" else "RSS"


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per length: ours vs HF, ratios and MFU against the machine's larger matmul probe."""
    ok = [c for c in cells if c.get("status") == "ok" and c["impl"] in ("ours", "hf")]
    probes = [c["matmul_peak_tflops"] for c in ok]
    peak = max(probes) if probes else float("nan")
    rows = []
    for length in sorted({c["length"] for c in cells if c["impl"] in ("ours", "hf")}):
        row: dict[str, Any] = {"length": length}
        for impl in ("ours", "hf"):
            cell = next((c for c in ok if c["impl"] == impl and c["length"] == length), None)
            if cell is None:
                continue
            row[f"{impl}_tokens_per_s"] = cell["tokens_per_s"]
            row[f"{impl}_step_peak_rss_mib"] = cell["step_peak_rss_mib"]
            row[f"{impl}_rss_before_step_mib"] = cell["rss_before_step_mib"]
            if "rss_after_trim_mib" in cell:
                row[f"{impl}_step_increment_mib"] = (
                    cell["step_peak_rss_mib"] - cell["rss_after_trim_mib"]
                )
            row[f"{impl}_others_cpu_share"] = statistics.mean(cell["others_cpu_share"])
            row[f"{impl}_mfu"] = cell["achieved_tflops"] / peak
            row["batch"] = cell["batch"]
        if "ours_tokens_per_s" in row and "hf_tokens_per_s" in row:
            row["speed_ratio"] = row["ours_tokens_per_s"] / row["hf_tokens_per_s"]
            row["memory_ratio"] = row["ours_step_peak_rss_mib"] / row["hf_step_peak_rss_mib"]
        if "ours_step_increment_mib" in row and "hf_step_increment_mib" in row:
            row["increment_ratio"] = row["ours_step_increment_mib"] / row["hf_step_increment_mib"]
        rows.append(row)
    return rows, peak


def fmt(row: dict[str, Any], key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def print_table(rows: list[dict[str, Any]], peak: float, mem: str = "RSS") -> None:
    print(
        f"| L | batch | tokens/s ours | tokens/s HF | speed ours/HF | step peak {mem} ours "
        f"| step peak {mem} HF | memory ours/HF | MFU ours | MFU HF |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['length']} | {fmt(r, 'batch', 'd')} | {fmt(r, 'ours_tokens_per_s', ',.0f')} "
            f"| {fmt(r, 'hf_tokens_per_s', ',.0f')} | {fmt(r, 'speed_ratio', '.2f')}x "
            f"| {fmt(r, 'ours_step_peak_rss_mib', ',.0f')} MiB "
            f"| {fmt(r, 'hf_step_peak_rss_mib', ',.0f')} MiB | {fmt(r, 'memory_ratio', '.2f')}x "
            f"| {fmt(r, 'ours_mfu', '.1%')} | {fmt(r, 'hf_mfu', '.1%')} |"
        )
    print(f"\nMFU against the measured float32 matmul peak {peak:.3f} TFLOP/s.\n")
    print(
        f"| L | {mem} before step ours / HF | step increment ours / HF | increment ours/HF "
        "| others' CPU share ours / HF |"
    )
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['length']} | {fmt(r, 'ours_rss_before_step_mib', ',.0f')} / "
            f"{fmt(r, 'hf_rss_before_step_mib', ',.0f')} MiB "
            f"| {fmt(r, 'ours_step_increment_mib', ',.0f')} / "
            f"{fmt(r, 'hf_step_increment_mib', ',.0f')} MiB | {fmt(r, 'increment_ratio', '.2f')}x "
            f"| {fmt(r, 'ours_others_cpu_share', '.0%')} / {fmt(r, 'hf_others_cpu_share', '.0%')} |"
        )


def plot(rows: list[dict[str, Any]], path: str, title: str, mem: str = "RSS") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, label in (("ours", "reformer_jax"), ("hf", "HF transformers")):
        pts = [r for r in rows if f"{impl}_tokens_per_s" in r]
        lengths = [r["length"] for r in pts]
        ax_t.plot(lengths, [r[f"{impl}_tokens_per_s"] for r in pts], marker="o", label=label)
        ax_m.plot(
            lengths,
            [r[f"{impl}_step_peak_rss_mib"] for r in pts],
            marker="o",
            label=label,
        )
    for ax, ylabel in (
        (ax_t, "training tokens / s (higher is better)"),
        (ax_m, f"peak {mem} during a step, MiB (lower is better)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lengths", type=parse_length, nargs="+", default=[1024, 4096, 16384, 65536]
    )
    parser.add_argument(
        "--tokens",
        type=int,
        default=16384,
        help="tokens per step (batch = tokens // L)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--steps_long", type=int, default=3, help="timed steps at L >= --long_from")
    parser.add_argument("--long_from", type=parse_length, default=65536)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--impls", nargs="+", choices=["ours", "hf"], default=["ours", "hf"])
    parser.add_argument(
        "--check_length",
        type=int,
        default=128,
        help="same-model check length (0: skip)",
    )
    parser.add_argument(
        "--ours_knobs",
        default=None,
        help='JSON {"<length>": {"attention_head_chunk": .., "ff_chunk_size": .., '
        '"loss_chunk_size": ..}} overriding our per-length settings',
    )
    parser.add_argument(
        "--ours_xla_flags",
        default=None,
        help=f"XLA_FLAGS added in our cells (default on the CPU: {OURS_XLA_FLAGS!r}; GPU: none)",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where both sides run (gpu: jax's GPU and torch's cuda; see the docstring)",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PNG", help="tokens/s and memory against length")
    parser.add_argument(
        "--report",
        metavar="JSON",
        help="re-print the tables (and --plot) from a --json file",
    )
    parser.add_argument("--_cell", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._cell:
        record = run_cell(args._cell, args)
        with open(args._out, "w") as f:
            json.dump(record, f, indent=1)
        return
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        args.tokens = saved["config"]["tokens"]
        args.json = None
        report(saved["cells"], saved["check"], saved["machine"], args)
        return

    cells = []
    check = None
    info = machine(args.device)
    if args.check_length and "hf" in args.impls:
        print(
            f"[peers] same-model check at L={args.check_length} ...",
            file=sys.stderr,
            flush=True,
        )
        check = spawn(f"check:{args.check_length}", args)
        print(f"[peers]   {json.dumps(check)}", file=sys.stderr, flush=True)
    for i, length in enumerate(args.lengths):
        # Alternate which side goes first, so machine load hits both alike.
        order = args.impls if i % 2 == 0 else args.impls[::-1]
        for impl in order:
            print(
                f"[peers] {impl} L={length} (load {load_average():.2f}) ...",
                file=sys.stderr,
                flush=True,
            )
            cell = spawn(f"{impl}:{length}", args)
            cells.append(cell)
            if cell["status"] == "ok":
                print(
                    f"[peers]   {cell['tokens_per_s']:,.0f} tokens/s, step peak RSS "
                    f"{cell['step_peak_rss_mib']:,.0f} MiB (before step "
                    f"{cell['rss_before_step_mib']:,.0f}), load {cell['load_avg_1min_before']:.2f}"
                    f", settings {cell['settings']}",
                    file=sys.stderr,
                    flush=True,
                )
    report(cells, check, info, args)


def report(cells, check, info, args) -> None:
    """The tables on stdout, and --json / --plot."""
    rows, peak = summarize(cells)
    frameworks = sorted({c["framework"] for c in cells if c.get("status") == "ok"})
    print(
        f"# Training step: reformer_jax vs HF transformers ({where(info)}; "
        f"{'; '.join(frameworks)}; {args.tokens:,} tokens per step)\n"
    )
    print_table(rows, peak, memory_name(info))
    if check is not None and check.get("status") == "ok":
        print(
            f"Same model (L={check['length']}): loss HF {check['hf_loss_float64']:.6f} vs ours "
            f"{check['ours_loss_converted']:.6f} on converted weights with HF's buckets; "
            f"parameters HF {check['hf_params']:,}, ours {check['ours_params']:,}."
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                    "matmul_peak_tflops": peak,
                    "summary": rows,
                    "check": check,
                    "cells": cells,
                },
                f,
                indent=2,
            )
        print(f"\nAll figures written to {args.json}")
    if args.plot:
        plot(
            rows,
            args.plot,
            f"{args.tokens:,} tokens per step; {where(info)}",
            memory_name(info),
        )
        print(f"Plot written to {args.plot}")


if __name__ == "__main__":
    main()
