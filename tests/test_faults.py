"""Faults on one host end cleanly: divergence never reaches a checkpoint, a non-finite checkpoint
is refused with the name of a good one, an exception while a save is pending still leaves a
complete checkpoint, a full disk is one line, a finished run rerun says so, and the messages a
user reads are ours."""

import errno
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import REPO, TINY, checkpoint_steps, read_state, run_train
from deep_image import errors
from deep_image.training.checkpoint import Checkpointer


def _error_line(proc):
    """The command's one error line; nothing of a traceback reached the terminal."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1]


def _finite(state):
    """Parameters and momentum all finite (the plateau's initial best error is +inf)."""
    return all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves((state["params"], state["opt_state"]))
               if np.issubdtype(np.asarray(x).dtype, np.floating))


def _no_tmp(workdir):
    return not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in n]


# A rate that grows with the warm-up until training blows up (at step 8 here), saving every step
DIVERGING = ("--config.optimizer.learning_rate=3", "--config.schedule.warmup_steps=20",
             "--config.checkpoint_every_steps=1", "--config.log_every_steps=5",
             "--config.keep_checkpoints=100")


def test_divergence_never_checkpoints_a_non_finite_state(tmp_path):
    wd = tmp_path / "run"
    line = _error_line(run_train(wd, *DIVERGING))
    assert "training diverged at step" in line and "the last good checkpoint is step" in line
    diverged = int(line.split("diverged at step ")[1].split()[0])
    steps = checkpoint_steps(wd)
    assert steps and max(steps) < diverged
    assert f"step {max(steps)} in" in line and "learning_rate" in line
    assert all(_finite(read_state(wd, s)) for s in steps) and _no_tmp(wd)
    assert "training diverged" in (wd / "error.log").read_text()
    # the advice works: a sane rate from the oldest kept checkpoint finishes the run (the
    # newest one, a step before the NaN, already holds weights that are far too large)
    assert f"--resume_step={min(steps)}" in line
    proc = run_train(wd, *DIVERGING, "--config.optimizer.learning_rate=0.01",
                     f"--resume_step={min(steps)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"at step {min(steps)}" in proc.stderr and "final test top-1" in proc.stdout


def _write_nan_copy(workdir, step):
    """Checkpoint `step` rewritten with NaN parameters (as the unguarded code could write)."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    state = read_state(workdir, step)
    kernel = np.array(state["params"]["conv1_1"]["kernel"])
    kernel[0, 0, 0, 0] = np.nan
    state["params"]["conv1_1"]["kernel"] = kernel
    meta = Checkpointer(ckpt_dir, read_only=True).meta(step)
    scratch = os.path.join(workdir, "scratch")
    writer = Checkpointer(scratch, async_save=False)
    writer.save(step, state, meta=meta, wait=True)
    writer.close()
    shutil.copytree(os.path.join(ckpt_dir, str(step), "data"),
                    os.path.join(scratch, str(step), "data"))
    shutil.rmtree(os.path.join(ckpt_dir, str(step)))
    shutil.move(os.path.join(scratch, str(step)), os.path.join(ckpt_dir, str(step)))
    shutil.rmtree(scratch)


def test_non_finite_or_mismatched_checkpoints_are_refused_and_finished_runs_say_so(tmp_path):
    wd = tmp_path / "run"
    assert run_train(wd, "--config.total_steps=30").returncode == 0
    assert checkpoint_steps(wd) == [10, 20, 30]
    _write_nan_copy(wd, 30)
    line = _error_line(run_train(wd))
    assert "checkpoint 30" in line and "non-finite" in line and "--resume_step=20" in line
    proc = run_train(wd, "--resume_step=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and checkpoint_steps(wd) == [20, 30, 40]
    assert _finite(read_state(wd, 40)) and os.listdir(wd / "discarded_checkpoints")
    # resuming with a config that builds another state is one line, not orbax's traceback
    line = _error_line(run_train(wd, "--config.optimizer.weight_decay=0"))
    assert "checkpoint 40" in line and "config.json" in line
    # a finished run rerun says so, prints its result and exits 0
    again = run_train(wd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished (step 40)" in again.stdout
    final = [l for l in proc.stdout.splitlines() if l.startswith("final test")]
    assert final and final[-1] in again.stdout


def test_an_exception_while_a_save_is_pending_leaves_a_complete_checkpoint(tmp_path):
    """The step after an async save raises; the interpreter then shuts down. Before, the
    queued save died with it ("cannot schedule new futures after shutdown")."""
    wd = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        from deep_image.training import step as step_lib
        build = step_lib.build_train_step
        def failing(*args, **kwargs):
            inner, calls = build(*args, **kwargs), [0]
            def train_step(state, batch):
                calls[0] += 1
                if calls[0] == 11:
                    raise RuntimeError("injected fault after the step-10 save was queued")
                return inner(state, batch)
            return train_step
        step_lib.build_train_step = failing
        from deep_image import train
        sys.argv = ["train", "--config={TINY}", "--workdir={wd}"]
        train.run()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0 and "injected fault" in proc.stderr, proc.stderr[-3000:]
    assert "cannot schedule new futures" not in proc.stderr
    assert checkpoint_steps(wd) == [10] and _no_tmp(wd) and _finite(read_state(wd, 10))
    resumed = run_train(wd)
    assert resumed.returncode == 0 and "at step 10" in resumed.stderr, resumed.stderr[-3000:]


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs: room for one checkpoint of the tiny model (~1 MiB), not for two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays_good(small_disk):
    wd = small_disk / "run"
    line = _error_line(run_train(wd, "--config.checkpoint_every_steps=5",
                                 "--config.keep_checkpoints=10", "--config.progress_bar=False"))
    assert "No space left on device" in line and "rerun the same command" in line
    steps = checkpoint_steps(wd)
    assert steps, "the first checkpoint fits"
    assert _finite(read_state(wd, max(steps)))


def test_environment_errors_are_found_behind_library_exceptions():
    class StoreError(RuntimeError):
        pass
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/20")
        except OSError as e:
            raise StoreError("async save failed") from e
    except StoreError as e:
        found = errors.environment_error(e)
    assert found.errno == errno.ENOSPC and found.filename == "/w/checkpoints/20"
    text = ValueError("tensorstore: Error writing \"x\": [OS error 28] No space left on device")
    assert errors.environment_error(text).errno == errno.ENOSPC
    assert errors.environment_error(ValueError("shapes differ")) is None


def test_injected_enospc_during_a_save_ends_as_one_line(tmp_path):
    script = textwrap.dedent(f"""
        import errno, sys
        from deep_image.training import checkpoint
        save = checkpoint.Checkpointer.save
        def full(self, step, *args, **kwargs):
            if step >= 20:
                raise OSError(errno.ENOSPC, "No space left on device", self.directory)
            return save(self, step, *args, **kwargs)
        checkpoint.Checkpointer.save = full
        from deep_image import train
        sys.argv = ["train", "--config={TINY}", "--workdir={tmp_path / 'run'}"]
        train.run()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    line = _error_line(proc)
    assert line.startswith("error: No space left on device at ") and "error.log" in line
    assert checkpoint_steps(tmp_path / "run") == [10] and _no_tmp(tmp_path / "run")
