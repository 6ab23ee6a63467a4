#!/bin/bash
# 6 main-job runs: placement host vs device, seeds 10-12, one after another (resumable: a finished run returns at once)
cd /work/main
for seed in 10 11 12; do
  for placement in host device; do
    wd=runs/placement/${placement}_s${seed}
    python -m deep_image.train --config=experiments/synthetic.py --workdir=$wd \
      --config.seed=$seed --config.data.placement=$placement --config.progress_bar=False \
      > runs/placement/${placement}_s${seed}.log 2>&1
  done
done
echo done > runs/placement/ALL_DONE
