"""Which GPU each SLURM task opens, without GPUs.

JAX's rule (jax/_src/distributed.py, _src/clusters/cluster.py; xla_bridge.py hands the result to
the CUDA plugin as `visible_devices`): `local_device_ids` (else JAX_LOCAL_DEVICE_IDS, else
`[SLURM_LOCALID]` under SLURM) are the ordinals of the CUDA devices the process sees, and CUDA
numbers the entries of CUDA_VISIBLE_DEVICES 0, 1, ... in order. So the GPU task k opens is
CUDA_VISIBLE_DEVICES[ordinal], and an ordinal past its end is "invalid device ordinal".

The launch test runs the real launch/slurm/train.sbatch with a fake `srun` on PATH that starts
each task's command with the SLURM_* variables SLURM gives task k, through the real
`python -m deep_image.train --distributed` and the real `jax.distributed.initialize`, stopped by
a recorder (a sitecustomize.py) at the moment JAX would contact the coordinator: by then JAX has
resolved everything, and the recorder writes JAX's own `visible_devices` option down.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from deep_image.parallel import distributed

# ---------------------------------------------------------------------------------------------
# The SLURM environment of task `local` on node `node` of a job (what srun sets for a task).


def slurm_task(*, node, local, tasks_per_node, nodes, visible, step_gpus, gpus_on_node,
               job_id=4242):
    nodelist = "gpu01" if nodes == 1 else f"gpu[01-{nodes:02d}]"
    env = {"SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": nodelist,
           "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_NUM_NODES": str(nodes),
           "SLURM_NNODES": str(nodes), "SLURM_NODEID": str(node),
           "SLURMD_NODENAME": f"gpu{node + 1:02d}", "SLURM_STEP_ID": "0",
           "SLURM_NTASKS": str(nodes * tasks_per_node),
           "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
           "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})" if nodes > 1
           else str(tasks_per_node),
           "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})" if nodes > 1
           else str(tasks_per_node),
           "SLURM_PROCID": str(node * tasks_per_node + local), "SLURM_LOCALID": str(local),
           "SLURM_GPUS_ON_NODE": str(gpus_on_node), "SLURM_STEP_GPUS": step_gpus}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def opened(ordinals, environ):
    """The physical GPUs a process opens for these CUDA ordinals (CUDA's numbering of
    CUDA_VISIBLE_DEVICES); an ordinal past its end fails."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(o) for o in ordinals]
    entries = visible.split(",")
    bad = [o for o in ordinals if not 0 <= o < len(entries)]
    assert not bad, f"invalid device ordinal {bad} with CUDA_VISIBLE_DEVICES={visible}"
    return [entries[o] for o in ordinals]


def jax_ordinals(ids, environ):
    """JAX's choice when deep_image passes `ids` as local_device_ids (None: not passed)."""
    if ids is not None:
        return list(ids)
    if environ.get("JAX_LOCAL_DEVICE_IDS"):
        return [int(i) for i in environ["JAX_LOCAL_DEVICE_IDS"].split(",")]
    return [int(environ["SLURM_LOCALID"])]       # JAX's SLURM default (cluster.py)


def node_tasks(**shape):
    return [slurm_task(local=k, **shape) for k in range(shape["tasks_per_node"])]


FULL = dict(nodes=2, node=1, gpus_on_node=8, visible="0,1,2,3,4,5,6,7",
            step_gpus="0,1,2,3,4,5,6,7")
HALF = dict(nodes=1, node=0, gpus_on_node=4, visible="4,5,6,7", step_gpus="4,5,6,7")
# the same half node where cgroups hide the other GPUs: CUDA numbers the job's four from 0
HALF_CGROUP = dict(HALF, visible="0,1,2,3")

SHAPES = {   # shape -> (tasks on the node, the GPUs each task must open, by position)
    "full node, one task per GPU": (dict(FULL, tasks_per_node=8), [[str(g)] for g in range(8)]),
    "GPUs 4-7, one task per GPU": (dict(HALF, tasks_per_node=4), [[str(g)] for g in range(4, 8)]),
    "GPUs 4-7 under cgroups": (dict(HALF_CGROUP, tasks_per_node=4), [["0"], ["1"], ["2"], ["3"]]),
    "full node, one task": (dict(FULL, tasks_per_node=1), [[str(g) for g in range(8)]]),
    "GPUs 4-7, one task": (dict(HALF, tasks_per_node=1), [["4", "5", "6", "7"]]),
    "full node, 2 tasks of 4 GPUs": (dict(FULL, tasks_per_node=2),
                                     [["0", "1", "2", "3"], ["4", "5", "6", "7"]]),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_task_opens_its_own_gpus_of_the_job(shape):
    spec, want = SHAPES[shape]
    got = []
    for env in node_tasks(**spec):
        mine = distributed.local_devices(env)
        got.append(opened(jax_ordinals(mine.ids, env), env))
    assert got == want


def test_tasks_bound_to_one_gpu_each_open_that_gpu():
    # --gpus-per-task=1 (implies --gpu-bind=per_task:1) or --gpu-bind=single:1: each task sees
    # only its own GPU (SLURM_GPUS_ON_NODE still counts the step's)
    for k in range(4):
        env = slurm_task(**dict(HALF, visible=str(4 + k)), local=k, tasks_per_node=4)
        mine = distributed.local_devices(env)
        assert opened(jax_ordinals(mine.ids, env), env) == [str(4 + k)], (k, mine)


def test_what_jax_alone_would_do_is_wrong_on_a_part_of_a_node_and_one_task_per_node():
    # the faults this replaces: narrowing CUDA_VISIBLE_DEVICES to SLURM_LOCALID (task k sees
    # one GPU and JAX asks for ordinal k), and JAX's [SLURM_LOCALID] with one task per node
    env = slurm_task(**dict(HALF, visible="1"), local=1, tasks_per_node=4)
    with pytest.raises(AssertionError, match="invalid device ordinal"):
        opened(jax_ordinals(None, env), env)
    env = slurm_task(**FULL, local=0, tasks_per_node=1)
    assert opened(jax_ordinals(None, env), env) == ["0"]       # 1 of the node's 8 GPUs


def test_the_users_choice_wins():
    env = slurm_task(**FULL, local=3, tasks_per_node=8)
    assert distributed.local_devices(env, ["5", "6"]).ids == [5, 6]
    assert distributed.local_devices({**env, "JAX_LOCAL_DEVICE_IDS": "2"}).ids == [2]


def test_cpu_and_non_slurm_processes_are_left_to_jax():
    env = slurm_task(**FULL, local=3, tasks_per_node=8)
    assert distributed.local_devices({**env, "JAX_PLATFORMS": "cpu"}).ids is None
    assert distributed.local_devices({**env, "CUDA_VISIBLE_DEVICES": ""}).ids is None
    no_gpu = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    assert distributed.local_devices({**no_gpu, "SLURM_GPUS_ON_NODE": "0"}).ids is None
    assert distributed.local_devices({"CUDA_VISIBLE_DEVICES": "0,1"}).ids is None


def test_shapes_that_cannot_work_are_errors_that_say_why():
    # 8 tasks on 4 GPUs (jax-ml/jax#29669), 3 tasks on 8 GPUs
    for spec, tasks in ((HALF, 8), (FULL, 3)):
        env = slurm_task(**spec, local=1, tasks_per_node=tasks)
        with pytest.raises(ValueError, match=f"SLURM started {tasks} tasks on this node"):
            distributed.local_devices(env)


def test_tasks_per_node_follow_slurms_compressed_lists():
    env = {"SLURM_STEP_TASKS_PER_NODE": "8(x2),4", "SLURM_NODEID": "2"}
    assert distributed.tasks_on_this_node(env) == 4
    assert distributed.tasks_on_this_node({**env, "SLURM_NODEID": "1"}) == 8
    assert distributed.tasks_on_this_node({"SLURM_NTASKS_PER_NODE": "2"}) == 2


# ---------------------------------------------------------------------------------------------
# The real train.sbatch, the real train main and the real jax.distributed.initialize.

RECORDER = textwrap.dedent("""
    # Test recorder: stops jax.distributed.initialize when it would contact the coordinator
    # and writes down what JAX resolved by then.
    import json, os
    _out = os.environ.get("GPU_LAUNCH_RECORD")
    if _out:
        import jax
        import jax._src.distributed as _dist
        from jax._src import xla_bridge as _xb
        _calls = []
        _real_initialize = jax.distributed.initialize

        def _initialize(*args, **kwargs):
            _calls.append({"args": list(args), "kwargs": kwargs})
            return _real_initialize(*args, **kwargs)
        jax.distributed.initialize = _initialize

        def _stop(**what):
            rec = {"initialize": _calls,
                   "visible_devices": _xb._options_from_jax_configs("cuda").get(
                       "visible_devices"),
                   "env": {k: v for k, v in os.environ.items()
                           if k.startswith(("SLURM_", "CUDA_", "JAX_"))}, **what}
            path = os.path.join(_out, os.environ.get("SLURM_PROCID", "x") + ".json")
            with open(path, "w") as f:
                json.dump(rec, f)
            os._exit(0)

        class _Runtime:
            def __init__(self, real):
                self._real = real
            def __getattr__(self, name):
                return getattr(self._real, name)
            def get_distributed_runtime_service(self, address, num_processes, **kw):
                _stop(process_id=0, num_processes=num_processes, service=address)
            def get_distributed_runtime_client(self, address, process_id, **kw):
                _stop(process_id=process_id, coordinator=address)
        _dist._jax = _Runtime(_dist._jax)
""")

FAKE_SRUN = textwrap.dedent(f"""\
    #!{sys.executable}
    # srun for one node's tasks: each runs the command with its own SLURM_* variables
    import json, os, subprocess, sys
    args = sys.argv[1:]
    while args and args[0].startswith("-"):
        args.pop(0)
    with open(os.environ["FAKE_SRUN_CALLS"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    tasks = json.load(open(os.environ["FAKE_SRUN_TASKS"]))
    procs = [subprocess.Popen(args, env={{**os.environ, **t}}) for t in tasks]
    sys.exit(max(p.wait() for p in procs))
""")

FAKE_SLURM_CLIENT = textwrap.dedent("""\
    #!/bin/sh
    echo "$(basename "$0") $*" >> "$FAKE_SRUN_CALLS"
    exit 1
""")


def _executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


LAUNCHES = {   # name -> (the batch step's SLURM variables, the node's tasks, GPUs they must open)
    "full node of a 2-node job, one task per GPU":
        (dict(FULL, tasks_per_node=8), {str(g) for g in range(8)}),
    "GPUs 4-7 of a node, one task per GPU": (dict(HALF, tasks_per_node=4), {"4", "5", "6", "7"}),
    "full node of a 2-node job, one task": (dict(FULL, tasks_per_node=1),
                                            {str(g) for g in range(8)}),
    "GPUs 4-7 of a node, one task": (dict(HALF, tasks_per_node=1), {"4", "5", "6", "7"}),
}


@pytest.mark.parametrize("launch", LAUNCHES)
def test_train_sbatch_starts_every_task_on_its_own_gpus(launch, tmp_path):
    spec, job_gpus = LAUNCHES[launch]
    tasks = node_tasks(**spec)
    bin_dir, site, record = tmp_path / "bin", tmp_path / "site", tmp_path / "record"
    for d in (bin_dir, site, record):
        d.mkdir()
    (site / "sitecustomize.py").write_text(RECORDER)
    _executable(bin_dir / "srun", FAKE_SRUN)
    for name in ("scontrol", "scancel"):
        _executable(bin_dir / name, FAKE_SLURM_CLIENT)
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    # the batch step: the job's variables (no per-task ones), no JAX_PLATFORMS (a GPU node)
    batch = {k: v for k, v in tasks[0].items() if k not in
             ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_STEP_GPUS",
              "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES", "SLURM_STEP_TASKS_PER_NODE")}
    batch["SLURM_JOB_GPUS"] = spec["step_gpus"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "CUDA_", "JAX_PLATFORMS", "JAX_LOCAL_DEVICE_IDS"))}
    env.update(batch, FAKE_SRUN_TASKS=str(tmp_path / "tasks.json"),
               FAKE_SRUN_CALLS=str(tmp_path / "calls"), GPU_LAUNCH_RECORD=str(record),
               PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}:{env['PATH']}",
               PYTHONPATH=os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p))
    with open(tmp_path / "job.out", "w") as out:
        proc = subprocess.run(["bash", "launch/slurm/train.sbatch", "experiments/synthetic.py:tiny",
                               str(tmp_path / "run")], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=300)
    log = (tmp_path / "job.out").read_text()
    assert proc.returncode == 0 and "=== finished" in log, log[-3000:]
    calls = (tmp_path / "calls").read_text().splitlines()
    # srun once (a JSON line); no scontrol or scancel (their lines are plain text)
    assert len(calls) == 1 and isinstance(json.loads(calls[0]), list), calls

    nodes, per_node = spec["nodes"], spec["tasks_per_node"]
    first = spec["node"] * per_node
    recs = {int(p.stem): json.loads(p.read_text()) for p in record.glob("*.json")}
    assert sorted(recs) == list(range(first, first + per_node)), log[-3000:]
    opens = {pid: opened(rec["visible_devices"], rec["env"]) for pid, rec in recs.items()}
    gpus = [g for pid in sorted(opens) for g in opens[pid]]
    assert len(gpus) == len(set(gpus)) and set(gpus) == job_gpus, opens
    for pid, rec in sorted(recs.items()):
        # JAX's own resolution: the process id it detected, and the ordinals it hands CUDA
        assert rec["process_id"] == pid
        assert rec.get("num_processes", nodes * per_node) == nodes * per_node
        if "coordinator" in rec:         # SLURM's first node, port from the job id (cluster.py)
            assert rec["coordinator"] == f"gpu01:{4242 % 4096 + 65536 - 4096}"
        assert rec["env"]["CUDA_VISIBLE_DEVICES"] == spec["visible"]   # as SLURM set it
        ids = rec["visible_devices"]
        assert (f"process {pid} of {nodes * per_node}: local devices {ids} (GPUs "
                f"{','.join(opens[pid])} of CUDA_VISIBLE_DEVICES={spec['visible']};") in log
