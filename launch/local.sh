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
# the coordinator's port: COORDINATOR_PORT, else one the OS reports free now (a random pick
# could be a port already in use; the tests pass a port they hold: tests/conftest.py HeldPort)
free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=${COORDINATOR_PORT:-$(free_port)}
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
