#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md ("GPU") in one go, for a short lease of
# one GPU: every part has its own time limit and writes its JSON as soon as it
# ends, so a part that runs out of time loses only itself.
#
#     bash scripts/gpu_benchmarks.sh OUT_DIR [SECONDS_SCALE]
#
# OUT_DIR receives step_enwik8_{xla,pallas}.json, attention_{xla,pallas}.json
# (+ .png), step_long_1m_pallas.json, step_imagenet64_pallas.json and
# peers_gpu.json + peers_gpu.png; the log is on stdout. The limits add up to
# 600 s, for a 15-minute lease that includes the machine's start.
# SECONDS_SCALE (default 1) multiplies every part's time limit.
# Needs the package importable (pip install -e . or PYTHONPATH=.), and torch +
# transformers for the peer comparison (pip install -e '.[peers]'). On a GPU
# machine without network, download the wheels it lacks here first,
#     pip download -d gpu_wheels gin-config tensorboardX sentencepiece sacrebleu
# (and tensorflow-datasets with its dependencies), carry gpu_wheels/ (ignored by
# git) with the tree: the script installs from it when it is there.
set -u
out=${1:?usage: bash scripts/gpu_benchmarks.sh OUT_DIR [SECONDS_SCALE]}
scale=${2:-1}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...: run COMMAND under a time limit, log its end
  local name=$1 limit
  limit=$(awk -v s="$2" -v k="$scale" 'BEGIN { printf "%d", s * k }')
  shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - t0))s"
}

if [ -d gpu_wheels ]; then
  "$py" -m pip install --quiet --no-index --find-links gpu_wheels gin-config tensorboardX \
    sentencepiece sacrebleu || echo "warning: installing from gpu_wheels failed"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'

# The fused kernel against the jnp path, side by side in one lease (the ratio
# is the figure; absolute times drift between machines). "Budgeted" runs set
# every execution knob to "auto" and let the planner choose them for the
# device's memory (benchmark.py step --fit device = memory --fit=device).
kernel="--gin_param=RunSettings.attention_impl='pallas'"
budgeted=(--fit device
  "--gin_param=RunSettings.ff_chunk_size='auto'" "--gin_param=RunSettings.loss_chunk_size='auto'"
  "--gin_param=RunSettings.attention_head_chunk='auto'" "--gin_param=train.grad_accum_steps='auto'")

# 1. The paper's enwik8 step (one 64K sequence), bf16, budgeted knobs: the jnp
# path, then the kernel. (As shipped, chunked to fit 8 GiB, the jnp path ran at
# 0.919 s on an H200: docs/benchmarks.md.)
part enwik8_xla 150 "$py" scripts/benchmark.py step --gin_file=configs/enwik8.gin \
  "${budgeted[@]}" --steps 3 --json "$out/step_enwik8_xla.json"
part enwik8_pallas 150 "$py" scripts/benchmark.py step --gin_file=configs/enwik8.gin \
  "$kernel" "${budgeted[@]}" --steps 3 --json "$out/step_enwik8_pallas.json"
# 2. The attention sweep of the paper's Figure 5, both implementations.
for impl in xla pallas; do
  part "attention_$impl" 40 "$py" scripts/benchmark.py attention --lengths 1K 4K 16K 64K \
    --tokens 65536 --hashes 1 2 4 8 --dtype bfloat16 --repeats 3 --impl "$impl" \
    --json "$out/attention_$impl.json" --plot "$out/attention_$impl.png"
done
# 3. A million tokens and Imagenet64 with the kernel and budgeted knobs: the
# planner's total against the real peak, and MFU.
part long_1m_pallas 90 "$py" scripts/benchmark.py step --gin_file=configs/long_1m.gin \
  "$kernel" "${budgeted[@]}" --steps 1 --json "$out/step_long_1m_pallas.json"
part imagenet64_pallas 50 "$py" scripts/benchmark.py step --gin_file=configs/imagenet64.gin \
  "$kernel" "${budgeted[@]}" --steps 3 --json "$out/step_imagenet64_pallas.json"
# 4. Ours (kernel) against HF's Reformer at 16K, where the target is 5x HF's
# tokens/s (float32 with TF32 matmuls on both sides).
part peers 80 "$py" scripts/compare_peers.py --device gpu --check_length 0 --steps 3 \
  --lengths 16K --ours_knobs '{"16384": {"attention_impl": "pallas"}}' \
  --json "$out/peers_gpu.json" --plot "$out/peers_gpu.png"
