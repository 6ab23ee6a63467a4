#!/usr/bin/env bash
# Train on this machine: launch/local.sh CONFIG WORKDIR [--config.key=value ...]
# e.g. launch/local.sh experiments/synthetic.py runs/synthetic
# Rerunning the same command resumes from the latest checkpoint in WORKDIR.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
exec python -m deep_image.train --config="$config" --workdir="$workdir" "$@"
