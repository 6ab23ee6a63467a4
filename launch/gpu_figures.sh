#!/usr/bin/env bash
# Every GPU figure the README asks for, from one run of at most 8.5 minutes on one H100/H200 with
# the device's own image (Python 3.12, jax 0.11 + CUDA, torch + CUDA; grain, ml_collections and
# the other pure-Python wheels in ./.whl: ../shared/gpu/prepare_wheels.sh):
#   bash launch/gpu_figures.sh [OUT]            (default OUT=gpu_figures)
#   SMALL=1 bash launch/gpu_figures.sh OUT      every phase at toy sizes (a CPU check, ~2 min)
# Phases, each under its own time limit (LIMIT_<phase>=seconds overrides one):
#   step_b128  VGG-16 at 224, bfloat16, batch 128: PyTorch first in its own process (bf16
#              autocast, channels_last, cudnn.benchmark, torch.compile), then JAX: setup +
#              compile + first step, median and p90 step, images/s, MFU, peak memory; a
#              5-step profile summarised per op class; the step fed by the real pipeline
#              (512x512 q90 JPEGs -> 224 crops, all six augmentations, Grain workers from the
#              host's CPUs, batches put on the GPU 2 ahead)
#   step_b256  the same at batch 256, without profile and pipeline
#   remat_b256 the same with config.model.remat=blocks (peak memory and images/s against
#              step_b256: what recomputing each block costs and saves on a GPU)
#   pipeline   the input pipeline alone: the device augmentation (data/device_augment.py,
#              placement 'device') on the GPU in images/s at batch 256 (written first), then
#              per-stage host images/s per core, and the Grain pipeline against worker
#              counts, with the host cores one GPU needs
# bench.step writes its JSON after every phase (atomically), so a phase killed by its limit
# keeps what it had measured. Results (<= 8 files, as the device tool returns them): OUT/log.txt
# (environment + every phase's tail), OUT/<phase>.json, OUT/phases.txt (every phase's whole
# output, one after another). The compilation cache
# and the profile trace live under /tmp (a rerun on the same machine compiles nothing).
set -uo pipefail
OUT=${1:-gpu_figures}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/deep_image_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}
PY=${PYTHON:-python3}
LOG="$OUT/log.txt"
if ls .whl/*.whl >/dev/null 2>&1; then      # the device image lacks grain, ml_collections, ...
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/deep_image_site .whl/*.whl >>"$LOG" 2>&1 || echo "wheels failed" >>"$LOG"
  export PYTHONPATH=/tmp/deep_image_site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{ echo "=== environment $(date '+%F %T')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
  echo "cpus: $(nproc)"
  $PY -c "import sys, jax, flax, optax, grain; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'grain', grain.__version__, jax.devices())" 2>&1 | tail -1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -1
} >>"$LOG"
cat "$LOG"

run() {  # phase, default seconds, command...
  local name=$1 secs=$2; shift 2
  local var="LIMIT_$name"; secs=${!var:-$secs}
  echo "=== $name (limit ${secs} s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" >"/tmp/deep_image_$name.txt" 2>&1; local rc=$?
  { echo "=== $name"; cat "/tmp/deep_image_$name.txt"; } >>"$OUT/phases.txt"
  grep -v -E '^[IW][0-9]{4} ' "/tmp/deep_image_$name.txt" | tail -n 16 | tee -a "$LOG"
  echo "--- $name: exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (time limit)')" \
    | tee -a "$LOG"
}

if [ -n "${SMALL:-}" ]; then   # the same phases at toy sizes
  NET=(--variant=vgg11 --width=0.0625 --crop=32); B1=8; B2=16; STEPS=3
  IN=(--jpegs=32 --jpeg_scale=64)
  PIPE=(--images=16 --seconds=0.3 --grain_workers=0,1 --device_batch=8)
else
  NET=(--variant=vgg16 --crop=224); B1=128; B2=256; STEPS=20
  IN=(--jpegs=256 --jpeg_scale=512)
  PIPE=(--images=200 --seconds=1 --grain_workers=0,4,8,15 --device_batch=256)
fi
run step_b128 190 $PY -m deep_image.bench.step "${NET[@]}" --batch=$B1 --dtype=bfloat16 \
  --steps=$STEPS --torch_timeout=120 --profile=/tmp/deep_image_profile "${IN[@]}" \
  --json="$OUT/step_b128.json"
run step_b256 120 $PY -m deep_image.bench.step "${NET[@]}" --batch=$B2 --dtype=bfloat16 \
  --steps=$((STEPS / 2 + 1)) --torch_timeout=90 --nopipeline --json="$OUT/step_b256.json"
run remat_b256 80 $PY -m deep_image.bench.step "${NET[@]}" --batch=$B2 --dtype=bfloat16 \
  --steps=$((STEPS / 2 + 1)) --notorch --nopipeline --remat=blocks --json="$OUT/remat_b256.json"
run pipeline 100 $PY -m deep_image.bench.pipeline "${PIPE[@]}" --json="$OUT/pipeline.json"
echo "=== done $(date '+%F %T')" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
