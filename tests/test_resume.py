"""Resume: a run stopped by SIGTERM, or SIGKILLed after a checkpoint, and restarted reaches
bitwise the same state as an uninterrupted run (CPU XLA is deterministic, data order and
dropout are functions of the step, and the Grain iterator position is checkpointed)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, TINY, run_train

STEPS = 40
# The §5.1 schedule decides at every evaluation (rtol=1: nothing counts as an improvement, so
# the rate is divided at steps 10, 20, 30): a resumed run must continue it exactly.
SCHEDULE = ("--config.schedule.rtol=1.0", "--config.schedule.patience=1",
            "--config.eval_every_steps=10")


def _start(workdir):
    cmd = [sys.executable, "-m", "deep_image.train", f"--config={TINY}", f"--workdir={workdir}",
           *SCHEDULE]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _wait_for(predicate, proc, timeout=240):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _logged_step(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return max((json.loads(l)["step"] for l in f if l.strip()), default=0)
    except (OSError, ValueError):
        return 0


def _final_state(workdir):
    path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
    return ocp.StandardCheckpointer().restore(path)


def _schedule(workdir):
    """(step, lr) at every log point (a stop adds a record of its own, off them) and (step,
    plateau scale) of every evaluation."""
    rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    return ([(r["step"], r["train/lr"]) for r in rows if "train/lr" in r and r["step"] % 5 == 0],
            [(r["step"], r["schedule/lr_scale"]) for r in rows if "schedule/lr_scale" in r])


def _assert_same(a, b):
    import jax
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    proc = run_train(workdir, *SCHEDULE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_sigterm_saves_and_resume_is_exact(uninterrupted, tmp_path):
    workdir = tmp_path / "preempted"
    proc = _start(workdir)
    _wait_for(lambda: _logged_step(workdir) >= 15, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]          # stopped by a notice: resume later
    assert "preempted at step" in out
    stopped = int(out.split("preempted at step ")[1].split(";")[0])
    assert 15 <= stopped < STEPS
    assert str(stopped) in os.listdir(workdir / "checkpoints")

    resumed = run_train(workdir, *SCHEDULE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    _assert_same(_final_state(uninterrupted), _final_state(workdir))
    lrs, scales = _schedule(uninterrupted)
    assert [s for s, _ in scales] == [10, 20, 30, 40] and scales[-1][1] < scales[0][1] < 1
    assert _schedule(workdir) == (lrs, scales)
    # Each step is in the metrics file once, in order (the stop adds its own record).
    steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl") if "train/loss" in l]
    assert steps == sorted(set(steps)) and set(range(5, STEPS + 1, 5)) <= set(steps)


def test_sigkill_after_checkpoint_resumes_exactly(uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    proc = _start(workdir)
    ckpts = workdir / "checkpoints"
    _wait_for(lambda: ckpts.exists() and "20" in os.listdir(ckpts), proc)
    proc.kill()                     # SIGKILL: no handler runs, an async save may be cut
    proc.communicate()
    resumed = run_train(workdir, *SCHEDULE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(_final_state(uninterrupted), _final_state(workdir))
    assert not [n for n in os.listdir(ckpts) if "tmp" in n]
