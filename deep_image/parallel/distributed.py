"""The one place that decides whether and how to call `jax.distributed.initialize()`.

Only when the launch asks for it (`--distributed`, set by launch/local.sh and launch/slurm/):
- under SLURM (`srun`, one task per GPU) JAX detects the coordinator, process count and id
  from the SLURM environment; with one task per node instead, pass `--local_device_ids` as the
  GPUs of the node (e.g. 0,1,2,3) or leave it to CUDA_VISIBLE_DEVICES;
- otherwise `--coordinator=HOST:PORT --num_processes=P --process_id=I` (what launch/local.sh
  passes to P processes on one machine).
On CPU, processes talk through gloo collectives. A process that dies is noticed by the others
through missed heartbeats: they fail with an error within `--heartbeat_timeout` seconds instead
of hanging.
"""

from __future__ import annotations

import logging
import os

from absl import flags

flags.DEFINE_bool("distributed", False, "Initialize multi-process JAX (set by the launchers).")
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (not needed under SLURM).")
flags.DEFINE_integer("num_processes", None, "Process count (not needed under SLURM).")
flags.DEFINE_integer("process_id", None, "This process's index (not needed under SLURM).")
flags.DEFINE_list("local_device_ids", None, "Devices of this process (one task per node).")
flags.DEFINE_integer("heartbeat_timeout", 30, "Seconds before a silent process counts as dead.")


def initialize() -> None:
    f = flags.FLAGS
    if not f.distributed:
        return
    import jax
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms == "cpu" or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(heartbeat_timeout_seconds=f.heartbeat_timeout,
                  initialization_timeout=max(60, 4 * f.heartbeat_timeout))
    if f.local_device_ids:
        kwargs["local_device_ids"] = [int(i) for i in f.local_device_ids]
    if f.coordinator:
        jax.distributed.initialize(f.coordinator, f.num_processes, f.process_id, **kwargs)
    else:   # SLURM (or another cluster JAX detects)
        jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def _has_accelerator() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or os.path.exists("/dev/nvidia0")
