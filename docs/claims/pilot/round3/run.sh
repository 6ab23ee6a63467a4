#!/usr/bin/env bash
# Pilot round 3 (2026-12-02): how fine-tuned validation accuracy grows with the target's
# training images, on pilot seeds only (pre-training 102, fine-tuning 100; never in the study).
# Everything else is the study's full recipe (experiments/claims.py, budget=full).
#   bash docs/claims/pilot/round3/run.sh [WORK]      (WORK: default /tmp/pilot3)
# Prints one line per run and writes docs/claims/pilot/round3/summary.jsonl; a finished run
# is not run again.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
work=${1:-/tmp/pilot3}
out=docs/claims/pilot/round3
mkdir -p "$work"
source docs/claims/pilot/pilot_run.sh
run pretrain_p102 stage=pretrain,seed=102,budget=full
for n in 480 1920 3200; do
  run "all6_p102_f100_n$n" stage=finetune,aug=all6,seed=100,budget=full \
    --config.init_from="$work/pretrain_p102" --config.data.synthetic.train_size=$n
done
# second step, after seeing the first three: longer fine-tuning of the larger targets
# (three times the steps, the divisions at the same fractions: 2/3 and 13/15)
for n in 1920 3200; do
  run "all6_p102_f100_n${n}_s1800" stage=finetune,aug=all6,seed=100,budget=full \
    --config.init_from="$work/pretrain_p102" --config.data.synthetic.train_size=$n \
    --config.total_steps=1800 "--config.schedule.decay_steps=(1200,1560)" \
    --config.eval_every_steps=180 --config.checkpoint_every_steps=180
done
