"""Resume: a run stopped by Ctrl-C (SIGINT), by SIGTERM (three in a row, as SLURM may send), or
SIGKILLed after a checkpoint, and restarted reaches bitwise the same state, losses and schedule
as an uninterrupted run (CPU XLA is deterministic, data order and dropout are functions of the
step, and the Grain iterator position is checkpointed)."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import (REPO, TINY, assert_trees_equal, checkpoint_steps, logged_step, losses,
                      read_state, records, run_train, wait_for)

STEPS = 40          # the tiny config's length
LOG_EVERY = 5       # and its log interval
# The §5.1 schedule decides at every evaluation (rtol=1: nothing counts as an improvement, so
# the rate is divided at steps 10, 20, 30): a resumed run must continue it exactly.
SCHEDULE = ("--config.schedule.rtol=1.0", "--config.schedule.patience=1",
            "--config.eval_every_steps=10")


def _start(workdir, logs):
    """The run in the background, its output in files (never an unread pipe)."""
    logs.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "deep_image.train", f"--config={TINY}", f"--workdir={workdir}",
           *SCHEDULE]
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, text=True,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _schedule(workdir):
    """(step, lr) at every log point (a stop adds a record of its own, off them) and (step,
    plateau scale) of every evaluation."""
    rows = records(workdir)
    return ([(r["step"], r["train/lr"]) for r in rows
             if "train/lr" in r and r["step"] % LOG_EVERY == 0],
            [(r["step"], r["schedule/lr_scale"]) for r in rows if "schedule/lr_scale" in r])


def _resume_line(stderr):
    lines = [l for l in stderr.splitlines() if "resumed from" in l]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference every interrupted run must equal; it carries its own check that the
    schedule really moved (divided at each evaluation), so a resumed run has state to lose."""
    workdir = tmp_path_factory.mktemp("straight")
    proc = run_train(workdir, *SCHEDULE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_steps(workdir)[-1] == STEPS
    _, scales = _schedule(workdir)
    assert [s for s, _ in scales] == [10, 20, 30, 40]
    assert scales[-1][1] < scales[1][1] < scales[0][1] < 1, scales
    return workdir


def _assert_continues_exactly(reference, workdir, resumed_at):
    """Bitwise the reference's final state; its loss at every log point (but the one whose
    window the stop cut short: that point averages fewer steps), its rate at every log point,
    its plateau scale at every evaluation; each step in the metrics file once, in order."""
    assert_trees_equal(read_state(reference, STEPS), read_state(workdir, STEPS))
    ref, ours = losses(reference), losses(workdir)
    assert set(ref) <= set(ours), (sorted(ref), sorted(ours))
    same_window = [s for s in ref if s <= resumed_at or s - LOG_EVERY >= resumed_at]
    assert {s: ours[s] for s in same_window} == {s: ref[s] for s in same_window}
    assert _schedule(workdir) == _schedule(reference)
    steps = [r["step"] for r in records(workdir) if "train/loss" in r]
    assert steps == sorted(set(steps)), steps


NOTICES = {
    # README: "SIGTERM (SLURM's preemption notice) or Ctrl-C finishes the current step, saves a
    # checkpoint and exits"; train.py: exit code 75
    "ctrl_c": ((signal.SIGINT,), "received Ctrl-C"),
    # preemption.py: "repeated SIGTERMs (SLURM sends two when GraceTime is 0) are one notice":
    # the second and third arrive while the stop step runs and its checkpoint is written
    "three_sigterms": ((signal.SIGTERM,) * 3, "received SIGTERM"),
}


@pytest.mark.parametrize("notice", list(NOTICES))
def test_a_stop_notice_saves_and_resume_is_exact(uninterrupted, tmp_path, notice):
    signals, received = NOTICES[notice]
    workdir = tmp_path / "stopped"
    proc = _start(workdir, tmp_path / "logs")
    err = tmp_path / "logs" / "stderr"
    wait_for(lambda: logged_step(workdir) >= LOG_EVERY, proc)
    noticed = logged_step(workdir)
    proc.send_signal(signals[0])
    wait_for(lambda: received in err.read_text(), proc, what="the notice's log line")
    for sig in signals[1:]:      # the handler ran: these are separate deliveries, not merged
        assert proc.poll() is None, "the run exited before the repeated notices"
        proc.send_signal(sig)
    proc.wait(timeout=120)
    out, err = (tmp_path / "logs" / "stdout").read_text(), err.read_text()
    assert proc.returncode == 75, err[-3000:]          # stopped by a notice: resume later
    assert err.count(received) == 1, err[-3000:]       # one notice, however many signals
    assert "preempted at step " in out, out
    stopped = int(out.split("preempted at step ")[1].split(";")[0])
    assert noticed < stopped < STEPS
    assert checkpoint_steps(workdir)[-1] == stopped    # saved where it stopped
    assert logged_step(workdir) == stopped             # and trained no further

    resumed = run_train(workdir, *SCHEDULE)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _resume_line(resumed.stderr).endswith(f"at step {stopped}")
    _assert_continues_exactly(uninterrupted, workdir, stopped)


def test_sigkill_after_checkpoint_resumes_exactly(uninterrupted, tmp_path):
    """Killed as soon as the second checkpoint (step 20) is complete, 20 steps before the end;
    the assertions below prove the kill came before the run could finish, so the resumed run
    really resumed, and from the latest of the checkpoints kept (not merely from one that
    also ends exactly: resume is deterministic from any of them)."""
    workdir = tmp_path / "killed"
    proc = _start(workdir, tmp_path / "logs")
    wait_for(lambda: len(checkpoint_steps(workdir)) >= 2, proc, what="the second checkpoint")
    proc.kill()                     # SIGKILL: no handler runs, an async save may be cut
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = checkpoint_steps(workdir)
    assert len(kept) >= 2 and kept[-1] < STEPS and logged_step(workdir) < STEPS, (
        kept, logged_step(workdir))
    resumed = run_train(workdir, *SCHEDULE)
    line = _resume_line(resumed.stderr)
    assert line.endswith(f"at step {kept[-1]}"), f"kept {kept}, but: {line}"
    assert resumed.returncode == 0, f"exit {resumed.returncode}: {resumed.stderr[-3000:]}"
    _assert_continues_exactly(uninterrupted, workdir, kept[-1])
    assert not [n for n in os.listdir(workdir / "checkpoints") if not n.isdigit()]
