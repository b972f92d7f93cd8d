#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md ("GPU") in one go, for a short lease of
# one GPU: every part has its own time limit and writes its JSON as soon as it
# ends, so a part that runs out of time loses only itself.
#
#     bash scripts/gpu_benchmarks.sh OUT_DIR [SECONDS_SCALE]
#
# OUT_DIR receives step_long_1m.json, step_enwik8.json, step_imagenet64.json,
# peers_gpu.json + peers_gpu.png and sample_imagenet64.json; the log is on
# stdout. SECONDS_SCALE (default 1) multiplies every part's time limit.
# Needs the package importable (pip install -e . or PYTHONPATH=.), and torch +
# transformers for the peer comparison (pip install -e '.[peers]').
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

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'

# 1. A million tokens: the planner's total against the real peak of one step.
part long_1m 170 "$py" scripts/benchmark.py step --gin_file=configs/long_1m.gin \
  --steps 1 --json "$out/step_long_1m.json"
# 2. The paper's enwik8 step (one 64K sequence) and Imagenet64 step, bf16.
part enwik8 110 "$py" scripts/benchmark.py step --gin_file=configs/enwik8.gin \
  --steps 3 --json "$out/step_enwik8.json"
# 3. The peer comparison on the GPU (float32 with TF32 matmuls on both sides).
part peers 150 "$py" scripts/compare_peers.py --device gpu --check_length 0 --steps 3 \
  --json "$out/peers_gpu.json" --plot "$out/peers_gpu.png"
part imagenet64 60 "$py" scripts/benchmark.py step --gin_file=configs/imagenet64.gin \
  --steps 3 --json "$out/step_imagenet64.json"
# 4. Completing a 12,288-pixel image from its top half: 6,144 cached decode steps.
part sample 80 "$py" scripts/benchmark.py sample --gin_file=configs/imagenet64.gin \
  --lengths 12288 --new_tokens 6144 --repeats 1 --recompute_repeats 1 \
  --json "$out/sample_imagenet64.json"
