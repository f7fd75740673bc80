#!/usr/bin/env bash
# The GPU measurements, prepared to run in one call on a GPU machine that has jax
# (CUDA), flax, optax and orbax but maybe not ml-collections, clu and tensorboardX: put
# their wheels in .whl/ (pip download --no-deps --only-binary=:all: -d .whl
# ml-collections clu tensorboardX) and they are installed into .site/ first.
#
#   bash experiments/gpu_benchmark.sh OUT_DIR
#
# Appends one JSON line per measurement to OUT_DIR/benchmark.jsonl and the full log to
# OUT_DIR/benchmark.log, in this order, each part under its own time limit so that a
# slow compile cannot take the others with it:
#   0. with a PC-DARTS checkout in $PEER_DIR (default .peer/PC-DARTS, ignored by git;
#      git clone https://github.com/yuhuixu1993/PC-DARTS .peer/PC-DARTS) and torch
#      installed: our search step against the official one, pc_darts_cifar10.py at its
#      own setting (L = 8, batch 256), in one run (--what=peer)
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
  common=(--image_size=8 --steps=2 --warmup=1 --compile_cache=) depths=5,5 batches=16,8
  limits=(600 600 600 600 600) peer_batch=8
else
  search=experiments/configs/cifar10.py retrain=experiments/configs/cifar10_retrain.py
  # 560 s in all: inside one 600 s device command, the machine's start not included.
  common=(--steps=20 --warmup=3 --compile_cache=) depths=8,20 batches=256,96
  limits=(120 140 100 60 140) peer_batch=256
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
peer="${PEER_DIR:-.peer/PC-DARTS}"
if [ -f "$peer/model_search.py" ] && python3 -c "import torch" 2>/dev/null; then
  part "peer: official PC-DARTS step and ours" "${limits[4]}" \
    --config=experiments/configs/pc_darts_cifar10.py --depths=8 \
    --batch_sizes="$peer_batch" --what=peer --peer_dir="$peer"
else
  echo "== peer skipped: no PC-DARTS checkout in $peer or no torch" | tee -a "$out/benchmark.log"
fi
part "search L=$d1 float32" "${limits[0]}" --config="$search" --depths="$d1" --batch_sizes="$b1" --what=search
part "search L=$d2 float32" "${limits[1]}" --config="$search" --depths="$d2" --batch_sizes="$b2" --what=search
part "search bfloat16" "${limits[2]}" --config="$search" --config.model.dtype=bfloat16 \
  --depths="$depths" --batch_sizes="$batches" --what=search
part "retrain step, input" "${limits[3]}" --config="$search" --retrain_config="$retrain" \
  --batch_sizes="$b1" --depths="$d1" --what=train,input
cat "$out/benchmark.jsonl"
