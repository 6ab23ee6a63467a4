#!/usr/bin/env bash
# Train on this machine, in one process or P processes (multi-process JAX on localhost).
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local.sh CONFIG WORKDIR ...   (CPU: simulated devices)
# Rerunning the same command resumes from the latest checkpoint in WORKDIR.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [PROCESSES=P] $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1; workdir=$2; shift 2
P=${PROCESSES:-1}
if [ "$P" = 1 ]; then
  exec python -m deep_image.train --config="$config" --workdir="$workdir" "$@"
fi
port=${COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
if [ -n "${DEVICES_PER_PROCESS:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi
pids=()
for ((i = 0; i < P; i++)); do
  python -m deep_image.train --config="$config" --workdir="$workdir" --distributed \
    --coordinator="127.0.0.1:$port" --num_processes="$P" --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
