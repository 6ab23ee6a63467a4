#!/usr/bin/env bash
# Every GPU figure the README quotes, from one run of at most ~8 minutes on one H100/H200:
#   bash launch/gpu_figures.sh [OUT]            (default OUT=gpu_figures)
# 1. VGG-16 at 224 in bfloat16, batch 64 and 256: JAX images/s and MFU with the batch on the
#    device and fed by the real input pipeline, and PyTorch on the same GPU (bfloat16 autocast,
#    channels_last, torch.compile where it compiles), with the ratio;
# 2. a profile of 5 steps (jax.profiler, OUT/profile) to see where the time goes and how much
#    of the lazy update's all-gathers overlap compute;
# 3. the input pipeline on the host's cores (can it feed the step rate?);
# 4. the README's main job end to end.
# Each step has its own time limit; results: OUT/*.json, OUT/*.txt, OUT/log.txt.
set -uo pipefail
OUT=${1:-gpu_figures}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
run() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  echo "--- $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
  tail -n 12 "$OUT/$name.txt" | tee -a "$OUT/log.txt"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
} > "$OUT/env.txt" 2>&1
run step_vgg16_b64 110 python -m deep_image.bench.step --variant=vgg16 --crop=224 --batch=64 \
  --dtype=bfloat16 --steps=20 --json="$OUT/step_vgg16_b64.json"
run step_vgg16_b256 130 python -m deep_image.bench.step --variant=vgg16 --crop=224 --batch=256 \
  --dtype=bfloat16 --steps=10 --json="$OUT/step_vgg16_b256.json" --profile="$OUT/profile"
run pipeline 80 python -m deep_image.bench.pipeline --json "$OUT/pipeline.json" --images 200 \
  --seconds 1
run main_job 140 python -m deep_image.train --config=experiments/synthetic.py \
  --workdir="$OUT/main_job"
ls -la "$OUT"
