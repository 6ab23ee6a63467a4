"""The one place that decides whether and how to call `jax.distributed.initialize()`.

Only when the launch asks for it (`--distributed`, set by launch/local.sh and launch/slurm/):
- under SLURM (`srun`) JAX detects the coordinator, process count and id from the SLURM
  environment, and `local_devices()` below says which of the GPUs this task can see are its
  own (one task per GPU, one task per node, a whole node or the part of one SLURM gave the job);
- otherwise `--coordinator=HOST:PORT --num_processes=P --process_id=I` (what launch/local.sh
  passes to P processes on one machine).
On CPU, processes talk through gloo collectives. A process that dies is noticed by the others
through missed heartbeats: they fail with an error within `--heartbeat_timeout` seconds instead
of hanging.

Which GPU a process opens, by JAX's rules (jax/_src/distributed.py, _src/clusters/cluster.py,
slurm_cluster.py; the same in jax 0.10 and 0.11): `local_device_ids` (or, when it is not passed,
`JAX_LOCAL_DEVICE_IDS`) become `jax_cuda_visible_devices`, the ordinals of the CUDA devices the
process can see, i.e. positions in CUDA_VISIBLE_DEVICES, not GPU numbers. When neither is given
and JAX detects SLURM, it uses `[SLURM_LOCALID]`: right only when every task of a node sees all of
the node's GPUs (jax-ml/jax#23452, #28194, #29669). We never change CUDA_VISIBLE_DEVICES (SLURM
sets it: `4,5,6,7` on the half of a node it gave the job, a single GPU under `--gpus-per-task` /
`--gpu-bind`, ordinals from 0 where cgroups hide the other GPUs) and always pass the positions
of this task's own GPUs in it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from absl import flags

flags.DEFINE_bool("distributed", False, "Initialize multi-process JAX (set by the launchers).")
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (not needed under SLURM).")
flags.DEFINE_integer("num_processes", None, "Process count (not needed under SLURM).")
flags.DEFINE_integer("process_id", None, "This process's index (not needed under SLURM).")
flags.DEFINE_list("local_device_ids", None, "Ordinals of this process's GPUs among the visible "
                  "ones (positions in CUDA_VISIBLE_DEVICES); SLURM's tasks work them out.")
flags.DEFINE_integer("heartbeat_timeout", 30, "Seconds before a silent process counts as dead.")

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID")     # what JAX's SlurmCluster.is_env_present() requires


@dataclasses.dataclass(frozen=True)
class LocalDevices:
    """This process's devices: `ids` to pass as `local_device_ids` (None: let JAX decide, which
    on CPU changes nothing), and where they came from, for the log."""
    ids: list[int] | None
    why: str

    def describe(self, environ=os.environ) -> str:
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if self.ids is None:
            return f"local devices: JAX's default ({self.why})"
        if visible is None:
            gpus, of = self.ids, "all GPUs (CUDA_VISIBLE_DEVICES unset)"
        else:
            entries = [v.strip() for v in visible.split(",")]
            gpus = [entries[i] if 0 <= i < len(entries) else f"{i}?" for i in self.ids]
            of = f"CUDA_VISIBLE_DEVICES={visible}"
        return (f"local devices {self.ids} (GPUs {','.join(map(str, gpus))} of {of}; "
                f"{self.why})")


def _ids(text: str) -> list[int]:
    return [int(i) for i in str(text).replace(",", " ").split()]


def tasks_on_this_node(environ) -> int | None:
    """SLURM's task count on this node: SLURM_STEP_TASKS_PER_NODE (e.g. `8(x2),4`) at
    SLURM_NODEID, else SLURM_TASKS_PER_NODE, else SLURM_NTASKS_PER_NODE."""
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        spec = environ.get(name)
        if not spec:
            continue
        counts = []
        for part in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
            if not m:
                counts = []
                break
            counts += [int(m[1])] * int(m[2] or 1)
        node = int(environ.get("SLURM_NODEID", 0))
        if 0 <= node < len(counts):
            return counts[node]
    per_node = environ.get("SLURM_NTASKS_PER_NODE")
    return int(per_node) if per_node else None


def local_devices(environ=os.environ, requested: list[str] | None = None) -> LocalDevices:
    """Which of the GPUs this process can see are its own, as JAX's `local_device_ids`.

    The user's `--local_device_ids` or `JAX_LOCAL_DEVICE_IDS` win. Under SLURM with GPUs, with
    G GPUs visible to the task (CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE), T tasks on the
    node and local id L:
    - the task sees fewer GPUs than the step has on the node (`--gpus-per-task`, `--gpu-bind`):
      all it sees are its own;
    - one task on the node: all G;
    - G = T x k: the k GPUs at positions L*k .. L*k+k-1 (one task per GPU: position L).
    Anything else (more tasks than GPUs, G not a multiple of T) is an error: JAX would open a
    GPU twice or one that does not exist. No SLURM, or no GPU: None (JAX's default).
    """
    if requested:
        return LocalDevices(_ids(",".join(requested)), "--local_device_ids")
    if environ.get("JAX_LOCAL_DEVICE_IDS"):
        return LocalDevices(_ids(environ["JAX_LOCAL_DEVICE_IDS"]), "JAX_LOCAL_DEVICE_IDS")
    if not all(v in environ for v in SLURM_VARS):
        return LocalDevices(None, "not a SLURM task")
    platforms = environ.get("JAX_PLATFORMS", "")
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    on_node = int(environ.get("SLURM_GPUS_ON_NODE") or 0)
    if platforms.split(",")[0].strip() == "cpu":
        return LocalDevices(None, "JAX_PLATFORMS=cpu")
    if visible is not None:
        entries = [v for v in visible.split(",") if v.strip()]
        count = 0 if entries in ([], ["-1"]) else len(entries)
    else:
        count = on_node
    if count == 0:
        return LocalDevices(None, "no GPU visible to this SLURM task")
    local = int(environ["SLURM_LOCALID"])
    tasks = tasks_on_this_node(environ) or 1
    if on_node and count < on_node:
        return LocalDevices(list(range(count)), f"SLURM bound {count} of the step's {on_node} "
                            "GPUs on this node to this task")
    if tasks == 1:
        return LocalDevices(list(range(count)), "one task on this node: all its GPUs")
    if count % tasks:
        raise ValueError(
            f"SLURM started {tasks} tasks on this node and each sees {count} GPUs "
            f"(CUDA_VISIBLE_DEVICES={visible}): the GPUs do not divide among the tasks; use "
            "one task per GPU (--ntasks-per-node = GPUs per node) or one task per node")
    k = count // tasks
    return LocalDevices(list(range(local * k, local * k + k)),
                        f"task {local} of {tasks} on this node, {k} GPU(s) each")


def initialize() -> None:
    f = flags.FLAGS
    if not f.distributed:
        return
    mine = local_devices(os.environ, f.local_device_ids)
    # before JAX starts: a task that fails to start still said which GPU it was given
    logging.info("process %s of %s: %s", f.process_id if f.coordinator else
                 os.environ.get("SLURM_PROCID", "?"), f.num_processes if f.coordinator else
                 os.environ.get("SLURM_NTASKS", "?"), mine.describe())
    import jax
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms == "cpu" or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(heartbeat_timeout_seconds=f.heartbeat_timeout,
                  initialization_timeout=max(60, 4 * f.heartbeat_timeout))
    if mine.ids is not None:
        kwargs["local_device_ids"] = mine.ids
    if f.coordinator:
        jax.distributed.initialize(f.coordinator, f.num_processes, f.process_id, **kwargs)
    else:   # SLURM (or another cluster JAX detects)
        jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices: %s", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.local_devices())


def _has_accelerator() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES")) or os.path.exists("/dev/nvidia0")
