#!/usr/bin/env bash
# The performance measurements of issue 6, prepared to run in one call on a GPU machine
# that has jax (CUDA), flax, optax and orbax but not ml-collections, clu, tensorboardX
# (carried as wheels in .whl/: bash ../shared/device/fetch-wheels.sh).
#
#   bash experiments/gpu_benchmark.sh OUT_DIR
#
# Appends one JSON line per measurement to OUT_DIR/benchmark.jsonl and the full log to
# OUT_DIR/benchmark.log, in this order, each part under its own time limit so that a
# slow compile cannot take the others with it:
#   1. search step, L = 8, batch 256, float32     (target: >= 2,400 images/s)
#   2. search step, L = 20, batch 96, float32     (target: >= 1,000 images/s)
#   3. both again in bfloat16
#   4. the retraining step (cifar10_retrain.py) and the input pipeline
# Every line carries compile_s (target: < 60 s). For a quick check on a CPU, set
# GPU_BENCH_SMOKE=1: the test config, 8×8 images, 2 steps.
set -u
out="${1:?usage: gpu_benchmark.sh OUT_DIR}"
mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import ml_collections, clu, tensorboardX" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target .site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD/.site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1
# No persistent compilation cache: a rerun on a warm machine must compile again, or
# its compile_s would time a cache read.
unset JAX_COMPILATION_CACHE_DIR

if [ "${GPU_BENCH_SMOKE:-0}" = 1 ]; then
  search=experiments/configs/test.py retrain=experiments/configs/test_retrain.py
  common=(--image_size=8 --steps=2 --warmup=1) depths=5,5 batches=16,8 limits=(600 600 600 600)
else
  search=experiments/configs/cifar10.py retrain=experiments/configs/cifar10_retrain.py
  # 560 s in all: inside one 600 s device command, the machine's start not included.
  common=(--steps=20 --warmup=3) depths=8,20 batches=256,96 limits=(150 150 180 80)
fi

part() {  # part NAME SECONDS ARGS...: one benchmark invocation under its own limit
  local name=$1 seconds=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${seconds}s)" | tee -a "$out/benchmark.log"
  timeout "$seconds" python3 -m experiments.benchmark "$@" "${common[@]}" \
    > >(tee -a "$out/benchmark.jsonl" >> "$out/benchmark.log") 2>> "$out/benchmark.log"
  echo "== $name exit $?" | tee -a "$out/benchmark.log"
}

python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$out/benchmark.log"
IFS=, read -r d1 d2 <<< "$depths"
IFS=, read -r b1 b2 <<< "$batches"
part "search L=$d1 float32" "${limits[0]}" --config="$search" --depths="$d1" --batch_sizes="$b1" --what=search
part "search L=$d2 float32" "${limits[1]}" --config="$search" --depths="$d2" --batch_sizes="$b2" --what=search
part "search bfloat16" "${limits[2]}" --config="$search" --config.model.dtype=bfloat16 \
  --depths="$depths" --batch_sizes="$batches" --what=search
part "retrain step, input" "${limits[3]}" --config="$search" --retrain_config="$retrain" \
  --batch_sizes="$b1" --depths="$d1" --what=train,input
cat "$out/benchmark.jsonl"
