"""Two processes x two CPU devices on localhost (gloo collectives), started by launch/local.sh,
train exactly like one process with four devices; a dead process makes the other exit with an
error instead of hanging. (Reduce-scatter over gloo has returned wrong values before, jax issue
40830: the parameter comparison would catch that.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, TINY

STEPS = 10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices, **extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "DEVICES_PER_PROCESS": str(devices),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **extra}


def _state(workdir, step=STEPS):
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as r:
        tree = r.metadata(path).item_metadata
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                              tree)
        state = jax.device_get(r.restore(path, target))
    return {"params": state["params"], "opt_state": state["opt_state"],
            "stats": state.get("stats") or {}}


def _losses(workdir):
    return [json.loads(l)["train/loss"] for l in open(os.path.join(workdir, "metrics.jsonl"))
            if "train/loss" in l]


MODES = {"data": ["--config.parallelism=data"],
         # data across the two processes, FC layers split inside each (as across nodes)
         "hybrid": ["--config.parallelism=model_data",
                    "--config.mesh=(('data', 2), ('model', 2))"],
         # the second family, with BatchNorm over the global batch across the processes and
         # its fc split by columns over all four devices (model_data across the processes).
         # ResNet-18 at 1/8 width and a tenth of the rate, for 2 steps, each logged: the second
         # reads the momentum and statistics the first wrote. Its trajectory over 16 tiny images
         # is chaotic (docs/xla_cpu/chaos.py: weights scaled by 1 + 1e-6 noise are 8.6e-3 away
         # after three steps at the full rate), so 10 steps compared float summation order, not
         # the collectives; local statistics would change the first loss.
         "resnet": ["--config.parallelism=model_data", "--config.model.name=resnet",
                    "--config.model.variant=resnet18", "--config.model.width=0.125",
                    "--config.optimizer.learning_rate=0.001",
                    "--config.sharding_rules=(('^fc/kernel$', (None, 'model')), "
                    "('^fc/bias$', ('model',)))"]}
RESNET_STEPS = 2


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_equal_one_process(tmp_path, mode):
    steps = RESNET_STEPS if mode == "resnet" else STEPS
    args = [*MODES[mode], f"--config.total_steps={steps}", f"--config.eval_every_steps={steps}",
            f"--config.checkpoint_every_steps={steps}",
            *(["--config.log_every_steps=1"] if mode == "resnet" else [])]
    single = subprocess.run([sys.executable, "-m", "deep_image.train", f"--config={TINY}",
                             f"--workdir={tmp_path / 'single'}", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=_env(4))
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(["bash", "launch/local.sh", TINY, str(tmp_path / "multi"), *args],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=_env(2, PROCESSES="2", COORDINATOR_PORT=str(_free_port())))
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert "process 1 of 2, 2 local / 4 global devices" in multi.stderr
    losses = _losses(tmp_path / "single")
    assert len(losses) == (steps if mode == "resnet" else steps // 5), losses   # logged steps
    np.testing.assert_allclose(_losses(tmp_path / "multi"), losses, rtol=1e-5)
    # every stored block (owned parts, FC slices) of the parameters and the momentum: a
    # reduce-scatter over gloo that returned wrong values would show here
    a, b = _state(tmp_path / "single", steps), _state(tmp_path / "multi", steps)
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                                 jax.tree_util.tree_leaves_with_path(b)):
        # to 1e-5, or 5e-5 of the leaf's largest value where that is larger (ResNet's stem
        # gradients and momentum reach ~3: float noise of the sums is ~1e-5 of that, a wrong
        # block would be off by its whole size)
        tol = max(1e-5, 5e-5 * float(np.max(np.abs(x), initial=0.0)))
        np.testing.assert_allclose(y, x, atol=tol, rtol=0, err_msg=jax.tree_util.keystr(path))


def test_a_dead_process_stops_the_other(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "deep_image.train", f"--config={TINY}",
         f"--workdir={tmp_path / 'w'}", "--distributed", f"--coordinator=127.0.0.1:{port}",
         "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout=5",
         "--config.total_steps=100000", "--config.eval_every_steps=100000",
         "--config.checkpoint_every_steps=100000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(2))
        for i in range(2)]
    metrics = tmp_path / "w" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and metrics.read_text().count("train/loss") >= 2):
        assert time.time() - t0 < 240 and all(p.poll() is None for p in procs), \
            procs[0].stderr.read()[-3000:] if procs[0].poll() is not None else "timeout"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.time()
    try:
        _, err = procs[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process hung for 120 s after its peer died")
    assert procs[0].returncode != 0
    assert time.time() - t_kill < 120


def _start_pair(workdir, port, *args):
    return [subprocess.Popen(
        [sys.executable, "-m", "deep_image.train", f"--config={TINY}", f"--workdir={workdir}",
         "--distributed", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", "--heartbeat_timeout=10", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(2))
        for i in range(2)]


def _logged(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    return max((json.loads(l)["step"] for l in open(path) if "train/loss" in l), default=0)


STOP_ARGS = ["--config.total_steps=60", "--config.log_every_steps=5",
             "--config.eval_every_steps=60", "--config.checkpoint_every_steps=30"]


def test_a_notice_on_both_or_one_process_stops_both_at_one_step(tmp_path):
    """SIGTERM to both processes right at a log point (where a host sync lets them drift
    apart by a step), or to one process only: both save at the same step and exit with 75,
    every time; the resumed run then equals the same pair never stopped, bit for bit."""
    wd = tmp_path / "multi"
    stopped = []
    for targets in ((0, 1), (1,)):
        procs = _start_pair(wd, _free_port(), *STOP_ARGS)
        t0, start = time.time(), _logged(wd)
        while _logged(wd) < start + 5:
            assert time.time() - t0 < 240 and all(p.poll() is None for p in procs), \
                procs[0].communicate()[1][-3000:] if procs[0].poll() is not None else "slow"
            time.sleep(0.01)
        for i in targets:
            procs[i].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=180) for p in procs]
        codes = [p.returncode for p in procs]
        assert codes == [75, 75], (codes, outs[0][1][-2000:], outs[1][1][-2000:])
        steps = {int(o.split("preempted at step ")[1].split(";")[0]) for o, _ in outs}
        assert len(steps) == 1, steps                  # one stop step for all processes
        stopped.append(steps.pop())
        assert str(stopped[-1]) in os.listdir(wd / "checkpoints")
        assert not any("mismatch" in e or "Gloo" in e for _, e in outs)
    assert stopped == sorted(stopped) and stopped[-1] < 60
    procs = _start_pair(wd, _free_port(), *STOP_ARGS)
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:]
    # the same two processes, never stopped: bit for bit (a one-process, four-device run is
    # only equal to float precision, which 60 steps of this tiny net amplify past 1e-5)
    procs = _start_pair(tmp_path / "uninterrupted", _free_port(), *STOP_ARGS)
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:]
    a, b = _state(tmp_path / "uninterrupted", 60), _state(wd, 60)
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                                 jax.tree_util.tree_leaves_with_path(b)):
        np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(path))
