#!/bin/bash
# deep_image's CPU default (YNNPACK's convolutions off) against jaxlib's own setting, side by
# side in one script: bench.step with PyTorch and the real pipeline, one run of each, the
# settings alternated. Writes docs/xla_cpu/step_<setting>_<width>_<crop>.json.
#   bash docs/xla_cpu/ab.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
YNN=--xla_cpu_experimental_ynn_fusion_type
for cfg in "0.25 64" "0.125 56"; do
  set -- $cfg
  for setting in jaxlib ours; do
    # jaxlib's own list: naming the flag (adding a type it already has) keeps our default out
    if [ "$setting" = jaxlib ]; then flags="$YNN=+individual_convolution"; else flags=""; fi
    XLA_FLAGS="$flags" python -m deep_image.bench.step --variant=vgg11 --width="$1" --crop="$2" \
      --batch=32 --dtype=float32 --steps=40 \
      --json="docs/xla_cpu/step_${setting}_${1}_${2}.json" 2>&1 | grep -v -i warning
  done
done
