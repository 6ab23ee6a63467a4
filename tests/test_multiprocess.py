"""Two processes x two CPU devices on localhost (gloo collectives), started by launch/local.sh,
train exactly like one process with four devices; a run the pair stopped resumes in one process
on one device; a dead process makes the other exit with an error naming the lost peer instead
of hanging, and leaves no incomplete checkpoint. (Reduce-scatter over gloo has returned wrong
values before, jax issue 40830: the parameter comparison would catch that.)"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import (REPO, TINY, HeldPort, assert_trees_equal, checkpoint_steps, logged_step,
                      losses, read_state_on_one_device, xla_flags)
from deep_image.parallel.layout import Layout, param_key
from deep_image.training.checkpoint import Checkpointer

STEPS = 10


def _env(devices, **extra):
    """The suite's environment (its XLA_FLAGS and most optimizations off, conftest.py), one
    process with `devices` simulated devices. The float tolerances below hold there by a wide
    margin (2026-12-03, this module's four comparisons, one test at a time: the losses agree
    to 2.5e-7 of 1e-5, every state leaf to a tenth of its tolerance at most, the resumed
    parameters to 1.6e-7 of 5e-5); at XLA's default level each pair spent ~7 s more CPU
    compiling (a 60-step pair: 32.0 s of user CPU against 24.2 s)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "DEVICES_PER_PROCESS": str(devices),
            "XLA_FLAGS": xla_flags(devices),
            **extra}


def _pair_env(**extra):
    """The environment of each process of a pair: two devices, and no persistent compilation
    cache. With the suite's cache, process 0 (the only one JAX lets write it) read its
    programs back while process 1 compiled all of its own (misses seen with
    JAX_EXPLAIN_CACHE_MISSES=1); on a loaded machine process 0 then reached the first
    collective more than 30 s early and gloo's context setup timed out ("Gloo context
    initialization failed: DEADLINE_EXCEEDED: GetKeyValue() timed out"). Both compiling keeps
    them in step, and costs no wall time: the pair waited for process 1's compiles anyway."""
    return _env(2, JAX_ENABLE_COMPILATION_CACHE="false", **extra)


def _state(workdir, step=STEPS):
    state = read_state_on_one_device(workdir, step)
    return {"params": state["params"], "opt_state": state["opt_state"],
            "stats": state.get("stats") or {}}


def _canonical_state(workdir, step):
    """_state with every parameter and momentum block in its canonical (whole) shape, read
    through the layout the checkpoint's meta records: states of two meshes compare leaf for
    leaf."""
    meta = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).meta(step)
    layout = Layout.from_description(meta["layout"])

    def canonical(path, x):
        key = param_key(path)
        if key and key[0] in layout.leaves and key[1] in layout.leaves[key[0]] and np.ndim(x):
            return layout.leaves[key[0]][key[1]].from_stored(np.asarray(x))
        return x
    return jax.tree_util.tree_map_with_path(canonical, _state(workdir, step))


def _assert_close_per_leaf(a, b):
    """Same leaves (strictly), each to 1e-5, or 5e-5 of the leaf's largest value where that is
    larger (ResNet's stem gradients and momentum reach ~3: float noise of the sums is ~1e-5 of
    that, a wrong block would be off by its whole size)."""
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb], "the states have different leaves"
    for (path, x), (_, y) in zip(la, lb, strict=True):
        tol = max(1e-5, 5e-5 * float(np.max(np.abs(x), initial=0.0)))
        np.testing.assert_allclose(y, x, atol=tol, rtol=0, err_msg=jax.tree_util.keystr(path))


def _train_one_process(workdir, devices, *args):
    return subprocess.run([sys.executable, "-m", "deep_image.train", f"--config={TINY}",
                           f"--workdir={workdir}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=_env(devices))


def _train_two_processes(workdir, *args):
    """launch/local.sh with two processes, as a user runs it; the coordinator's port held for
    this test until JAX's coordinator has bound it (conftest.HeldPort)."""
    with HeldPort() as port:
        return subprocess.run(["bash", "launch/local.sh", TINY, str(workdir), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env=_pair_env(PROCESSES="2", COORDINATOR_PORT=str(port.port)))


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


def _args(mode, steps, every):
    return [*MODES[mode], f"--config.total_steps={steps}", f"--config.eval_every_steps={every}",
            f"--config.checkpoint_every_steps={every}",
            *(["--config.log_every_steps=1"] if mode == "resnet" else [])]


def _single_and_pair(base, mode, single_steps=None):
    steps = RESNET_STEPS if mode == "resnet" else STEPS
    single = _train_one_process(base / "single", 4, *_args(mode, single_steps or steps, steps))
    assert single.returncode == 0, single.stderr[-3000:]
    multi = _train_two_processes(base / "multi", *_args(mode, steps, steps))
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert "process 1 of 2, 2 local / 4 global devices" in multi.stderr
    return base / "single", base / "multi"


@pytest.fixture(scope="module")
def data_runs(tmp_path_factory):
    """Data parallel: one process with four devices for 2 x STEPS steps (the reference of the
    resume below; its first STEPS are what the pair trains), and the pair for STEPS steps."""
    return _single_and_pair(tmp_path_factory.mktemp("data"), "data", single_steps=2 * STEPS)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_equal_one_process(request, tmp_path, mode):
    single, multi = (request.getfixturevalue("data_runs") if mode == "data"
                     else _single_and_pair(tmp_path, mode))
    steps = RESNET_STEPS if mode == "resnet" else STEPS
    reference = {s: l for s, l in losses(single).items() if s <= steps}
    assert len(reference) == (steps if mode == "resnet" else steps // 5), reference  # logged
    ours = losses(multi)
    assert sorted(ours) == sorted(reference)
    np.testing.assert_allclose([ours[s] for s in sorted(ours)],
                               [reference[s] for s in sorted(ours)], rtol=1e-5)
    # every stored block (owned parts, FC slices) of the parameters and the momentum: a
    # reduce-scatter over gloo that returned wrong values would show here
    _assert_close_per_leaf(_state(single, steps), _state(multi, steps))


def test_a_run_of_two_processes_resumes_in_one(data_runs, tmp_path):
    """The pair's run (2 processes x 2 devices, STEPS steps) continued to 2 x STEPS by one
    process on one device: each process saved only its own position in the data, so the stream
    restarts at the global batch of the step; the layout is converted from the 4-device mesh.
    It must equal the one-process, four-device run of 2 x STEPS steps to float precision (the
    losses agree to ~1e-7; a stream restarted at the wrong batch moved them by 0.5%)."""
    single, multi = data_runs
    wd = tmp_path / "resumed"
    shutil.copytree(multi, wd)
    proc = _train_one_process(wd, 1, *_args("data", 2 * STEPS, STEPS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"the checkpoint was written by 2 processes, this run has 1: the data stream "
            f"restarts at global batch {STEPS}") in proc.stderr, proc.stderr[-3000:]
    assert "converted to this run's mesh" in proc.stderr
    resumed_line = [l for l in proc.stderr.splitlines() if "resumed from" in l]
    assert resumed_line and resumed_line[0].endswith(f"at step {STEPS}"), proc.stderr[-3000:]
    ref, ours = losses(single), losses(wd)
    assert sorted(ours) == sorted(ref) == [5, 10, 15, 20]
    np.testing.assert_allclose([ours[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)],
                               rtol=1e-5)
    # the parameters, whole, to float noise (here 1.6e-7 at most: one device sums the gradient in
    # another order than four; ten steps on another batch move them by ~1e-2)
    assert_trees_equal(_canonical_state(single, 2 * STEPS)["params"],
                       _canonical_state(wd, 2 * STEPS)["params"], atol=5e-5)


def _start_pair(workdir, port, logs, *args, heartbeat=10):
    """Two `deep_image.train` processes, their output in LOGS/out{i}, LOGS/err{i}."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(2):
        with open(logs / f"out{i}", "w") as out, open(logs / f"err{i}", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "deep_image.train", f"--config={TINY}",
                 f"--workdir={workdir}", "--distributed", f"--coordinator=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", f"--heartbeat_timeout={heartbeat}",
                 *args], cwd=REPO, stdout=out, stderr=err, text=True, env=_pair_env()))
    return procs


def _wait_all(procs, logs, timeout):
    """Waits for every process; (stdout, stderr) of each, read from the files."""
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"the pair did not end within {timeout} s")
    return [((logs / f"out{i}").read_text(), (logs / f"err{i}").read_text())
            for i in range(len(procs))]


def _wait_or_fail(predicate, procs, logs, timeout=240, what="the pair"):
    t0 = time.time()
    while not predicate():
        ended = [i for i, p in enumerate(procs) if p.poll() is not None]
        if ended or time.time() - t0 > timeout:
            for p in procs:
                p.kill()
            detail = (logs / f"err{ended[0]}").read_text()[-3000:] if ended else "timeout"
            pytest.fail(f"{what}: {detail}")
        time.sleep(0.01)


# What the survivor prints about its lost peer (jax 0.10 with gloo): a collective it was in
# fails ("Gloo ... Connection closed by peer"), the coordination service (in process 0) marks
# the silent task ("Task 1 heartbeat timeout ... the remote task has failed"; "unhealthy
# (stopped sending heartbeats)"), or, when the coordinator itself died, "the JAX distributed
# service detected fatal errors. This most likely indicates that another task died".
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Task 1 heartbeat timeout",
             "stopped sending heartbeats", "another task died")
HEARTBEAT = 5


def test_a_dead_process_stops_the_other(tmp_path):
    wd, logs = tmp_path / "w", tmp_path / "logs"
    with HeldPort() as port:
        procs = _start_pair(wd, port.port, logs, "--config.total_steps=100000",
                            "--config.eval_every_steps=100000", "--config.log_every_steps=5",
                            "--config.checkpoint_every_steps=5", heartbeat=HEARTBEAT)
        # two logged steps (10): checkpoint 5 written, the next one on its way
        _wait_or_fail(lambda: logged_step(wd) >= 10, procs, logs)
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.time()
    try:
        procs[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process hung for 120 s after its peer died")
    took = time.time() - t_kill
    procs[1].wait(timeout=60)
    err = (logs / "err0").read_text()
    assert procs[0].returncode != 0, err[-3000:]
    # within a few heartbeat timeouts (it takes 0.3-5 s here), not a hang
    assert took < 12 * HEARTBEAT, took
    assert any(m in err for m in PEER_GONE), err[-3000:]
    # Every checkpoint that looks complete (a step directory, not orbax's *.orbax-checkpoint-
    # tmp which the next run removes) is complete: a save cut by the dead peer is never renamed
    # into place. Each one's state, meta and both processes' data positions read back.
    steps = checkpoint_steps(wd)
    assert steps and steps[-1] <= logged_step(wd), (steps, os.listdir(wd / "checkpoints"))
    for s in steps:
        state = read_state_on_one_device(wd, s)
        assert int(state["step"]) == s
        ckpt = wd / "checkpoints" / str(s)
        assert (ckpt / "meta" / "metadata").is_file()
        assert {f"process_{i}-of-2.json" for i in range(2)} <= set(os.listdir(ckpt / "data"))


STOP_ARGS = ["--config.total_steps=60", "--config.log_every_steps=5",
             "--config.eval_every_steps=60", "--config.checkpoint_every_steps=30"]


def test_a_notice_on_both_or_one_process_stops_both_at_one_step(tmp_path):
    """SIGTERM to both processes right at a log point (where a host sync lets them drift
    apart by a step), or to one process only: both save at the same step and exit with 75,
    every time; the resumed run then equals the same pair never stopped, bit for bit."""
    wd = tmp_path / "multi"
    stopped = []
    for n, targets in enumerate(((0, 1), (1,))):
        logs = tmp_path / f"logs{n}"
        with HeldPort() as port:
            procs = _start_pair(wd, port.port, logs, *STOP_ARGS)
            start = logged_step(wd)
            _wait_or_fail(lambda: logged_step(wd) >= start + 5, procs, logs)
        for i in targets:
            procs[i].send_signal(signal.SIGTERM)
        outs = _wait_all(procs, logs, 180)
        codes = [p.returncode for p in procs]
        assert codes == [75, 75], (codes, outs[0][1][-2000:], outs[1][1][-2000:])
        steps = {int(o.split("preempted at step ")[1].split(";")[0]) for o, _ in outs}
        assert len(steps) == 1, steps                  # one stop step for all processes
        stopped.append(steps.pop())
        assert checkpoint_steps(wd)[-1] == stopped[-1]
        assert not any("mismatch" in e or "Gloo" in e for _, e in outs)
    assert stopped == sorted(stopped) and stopped[-1] < 60
    for name, workdir in (("resumed", wd), ("uninterrupted", tmp_path / "uninterrupted")):
        logs = tmp_path / f"logs_{name}"
        with HeldPort() as port:
            procs = _start_pair(workdir, port.port, logs, *STOP_ARGS)
            outs = _wait_all(procs, logs, 240)
        assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:]
    # the same two processes, never stopped: bit for bit, the whole state (a one-process,
    # four-device run is only equal to float precision, which 60 steps of this tiny net amplify
    # past 1e-5)
    assert_trees_equal(read_state_on_one_device(tmp_path / "uninterrupted", 60),
                       read_state_on_one_device(wd, 60))
