"""launch/slurm/train.sbatch on a real one-node SLURM (tests/slurm_cluster.py), two tasks on
CPU: a run completes; a failing run fails; a plain scancel stays a cancel; and one job is
stopped once by each of SLURM's ways of stopping it, in turn: a notice that arrives before
Python handles SIGTERM kills the processes (exit 143), the job is requeued and starts over;
then a requeue, a preemption with grace time, `scancel --signal=TERM` and the time limit's
notice each reach the training processes mid-run, which save, and the job is requeued and
resumes. The finished job ends bitwise equal (parameters, momentum, schedule state, step, rng)
to the uninterrupted one: same process count, same programs, same data order. The log is
appended across requeues. What each way of stopping a job does: the header of train.sbatch.
(One job for the five stops: each run of two tasks compiles everything, ~30 s, and one job
needs six runs where one job per stop needed ten.)

Timing is taken out of the outcomes: the tests pause the training processes (SIGSTOP) once
they have logged the step of their notice (or, for the exit-143 case, before they handle SIGTERM), send
or wait for the notice, and let them continue once it is pending (or SLURM has continued them:
it sends SIGCONT before its own notices), so a run cannot finish, or get further, before its
notice, however slow this machine is. A requeued job is released from SLURM's 121 s hold as
soon as nothing of its last run is left (SlurmCluster.wait(release=True)), not after a delay.
"""

import os
import re
import signal

import pytest

from conftest import (REPO, HeldPort, assert_trees_equal, checkpoint_steps, logged_step,
                      read_state_on_one_device, wait_for)
from slurm_cluster import SlurmError, signal_caught

# the cluster fixture is module-scoped: under pytest-xdist (--dist loadgroup) every test of
# this module runs in one worker, on one cluster
pytestmark = pytest.mark.xdist_group("slurm")

# Four mid-run stops, each at least a logged step (5) past the last one and up to ~11 steps
# later still (SLURM continues a paused run, SIGCONT, a few seconds before its SIGTERM): 80
# steps leave the last run steps to train whatever the timing.
STEPS = 80
ARGS = [f"--config.total_steps={STEPS}", "--config.log_every_steps=5",
        "--config.checkpoint_every_steps=20", f"--config.eval_every_steps={STEPS}",
        # a paused run (up to one time-limit check, 30 s) must not count as a dead process
        "--heartbeat_timeout=120"]
# a node without GPUs: the script's GPU defaults overridden on the sbatch command line
CPU = ["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1"]
TASKS = 2


def _sbatch(cluster, workdir, port, *options, train_args=()):
    """train.sbatch on the tiny config. JAX's coordinator on `port` (held by this process:
    JAX's default port comes from the job id, which other clusters on this host share). No
    persistent compilation cache (the suite's, which the job would inherit): JAX writes entries
    from process 0 only, so with a warm cache process 0 would start training 30-50 s before
    process 1 (which compiles everything) and their first collective, whose gloo rendezvous
    waits 30 s at most, would fail on a loaded machine."""
    os.makedirs(workdir)
    return cluster.sbatch(*CPU, f"--output={workdir}/slurm-%j.out", *options,
                          "launch/slurm/train.sbatch", "experiments/synthetic.py:tiny",
                          str(workdir), *ARGS, *train_args, cwd=REPO,
                          env={"JAX_COORDINATOR_PORT": str(port.port),
                               "JAX_ENABLE_COMPILATION_CACHE": "false"})


@pytest.fixture
def submit(slurm):
    """submit(workdir, *sbatch_options, train_args=()) -> job id; at the end of the test, pass or fail, its
    jobs are killed and gone from the node (a failed test leaves nothing to the next)."""
    jobs, ports = [], []

    def _submit(workdir, *options, train_args=()):
        ports.append(HeldPort())
        jobs.append(_sbatch(slurm, workdir, ports[-1], *options, train_args=train_args))
        return jobs[-1]

    yield _submit
    try:
        for job in jobs:
            slurm.cancel(job)
    finally:
        for port in ports:
            port.close()


def _log(workdir, job):
    path = os.path.join(workdir, f"slurm-{job}.out")
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def _wait_for_step(cluster, job, workdir, step, timeout=400):
    def reached():
        state = cluster.state(job)
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), (state, _log(workdir, job))
        return logged_step(workdir) >= step
    wait_for(reached, timeout=timeout, what=f"step {step} of job {job}")


def _assert_same_state(reference, workdir):
    assert checkpoint_steps(workdir)[-1] == STEPS
    assert_trees_equal(read_state_on_one_device(reference, STEPS),
                       read_state_on_one_device(workdir, STEPS))


def _completed(cluster, job, workdir):
    """Waits until the job is COMPLETED, releasing it from each requeue's hold once its last
    run has ended; a job that ends otherwise fails the test with its log."""
    try:
        return cluster.wait(job, "COMPLETED", release=True)
    except SlurmError as e:
        raise AssertionError(f"{e}\n{_log(workdir, job)}") from None


def _pause_at_step(cluster, job, workdir, step):
    """The job's tasks stopped (SIGSTOP) once `step` is logged: the run is mid-training and
    stays there until a notice continues it."""
    _wait_for_step(cluster, job, workdir, step)
    return cluster.pause(job, TASKS)


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory):
    """An uninterrupted run: the one every interrupted run must equal."""
    workdir = tmp_path_factory.mktemp("slurm") / "reference"
    with HeldPort() as port:
        job = _sbatch(slurm, workdir, port)
        try:
            info = slurm.wait(job)
        finally:
            slurm.cancel(job)
    return workdir, job, info


def test_a_run_completes(slurm, reference):
    workdir, job, info = reference
    log = _log(workdir, job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == \
        ("COMPLETED", "0:0", "0"), (info, log)
    assert "2 tasks, 0 GPUs per node" in log and "process 1 of 2" in log, log
    assert "=== finished" in log and log.count("=== job") == 1, log
    assert "SIGTERM" not in log and "requeue" not in log, log
    assert checkpoint_steps(workdir)[-1] == STEPS


def test_a_failing_run_fails_and_is_not_requeued(slurm, submit, tmp_path):
    """An error (here a bad config: exit 2 on every task) would recur: the job FAILS with the
    error in its log, and the script does not requeue it."""
    job = submit(tmp_path / "w", train_args=["--config.total_steps=-1"])
    info = slurm.wait(job)
    wait_for(lambda: slurm.last_run_ended(job), timeout=120,
             what=f"the end of job {job}'s processes")
    log = _log(tmp_path / "w", job)
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), (info, log)
    assert "error: config.total_steps=-1" in log, log
    assert "=== training failed (exit 2): not requeued" in log, log
    assert "requeueing" not in log and "SLURM decides" not in log, log


def test_plain_scancel_cancels(slurm, submit, tmp_path):
    """A plain scancel stays a cancel: SLURM ends the job, and the script, whose training
    processes it stops mid-run, does not requeue it but says SLURM decides. The job is paused
    at a logged step first, and continued once SLURM's SIGTERM is pending, so the cancel always
    finds the processes mid-run. A cancel that comes before srun has started the step is
    not tested: SLURM may then kill the batch shell outright (CI, 2026-12-02: "Job credential
    revoked" and no line of the script after it), so its words cannot be asserted."""
    workdir = tmp_path / "w"
    job = submit(workdir)
    tasks = _pause_at_step(slurm, job, workdir, 5)
    slurm.run("scancel", job)
    slurm.resume(tasks, after_signal=signal.SIGTERM)
    info = slurm.wait(job)       # CANCELLED at once, while the batch script still runs:
    wait_for(lambda: slurm.last_run_ended(job), timeout=120,    # its last lines come after
             what=f"the end of job {job}'s processes")
    log = _log(workdir, job)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), (info, log)
    assert "SLURM decides" in log and "requeueing" not in log, log
    assert "training failed" not in log, log


def _requeue_by_scontrol(cluster, job, tmp_path):
    """SLURM requeues the job itself (SIGCONT, SIGTERM to the steps and the batch shell): the
    processes save, the script sees the job COMPLETING and leaves it to SLURM."""
    cluster.run("scontrol", "requeue", job)
    return "the job is COMPLETING: SLURM decides", None


def _preempt(cluster, job, tmp_path):
    """A job of the higher-tier partition needs the node: ours gets SIGTERM (GraceTime 60 s),
    saves, exits 75 and the script requeues it; it resumes once the urgent job is done."""
    urgent = cluster.sbatch("--partition=urgent", "--ntasks=2", "--cpus-per-task=1",
                            f"--output={tmp_path}/urgent-%j.out", "--wrap", "echo urgent ran")
    return "stopped by a notice, checkpoint saved: requeueing", urgent


def _scancel_term(cluster, job, tmp_path):
    cluster.run("scancel", "--signal=TERM", job)
    return "stopped by a notice, checkpoint saved: requeueing", None


def _time_limit(cluster, job, tmp_path):
    """The script's --signal=TERM@120: SLURM sends it at a time limit check (slurmctld tests
    limits every 30 s, a compiled-in constant) once the job's end is less than 120 + 30 s
    away. The job runs with a long limit; paused mid-training, it gets one that makes the
    notice due (end - now in (90, 150] s, so the run still has more than a minute to save),
    and SLURM's next check sends it (SIGCONT first, then SIGTERM). The limit is then
    lengthened again, so no later run reaches it."""
    limit = int((cluster.elapsed(job) + 150) // 60)
    cluster.run("scontrol", "update", f"JobId={job}", f"TimeLimit={limit}")
    notice = f"send_job_warn_signal: warning signal 15 to JobId={job}"
    wait_for(lambda: notice in cluster.log("slurmctld"), timeout=120,
             what="slurmctld's time-limit notice")
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    return "stopped by a notice, checkpoint saved: requeueing", None


# The four mid-run notices, in the order one job gets them, each to a run that has trained past
# the step it resumed from. Each sends its notice and returns the line the log must show for
# it, and the job it started (the urgent one) or None.
NOTICES = (_requeue_by_scontrol, _preempt, _scancel_term, _time_limit)


def _runs(log, job, count):
    """The log split at each run's start line: one part per run, in order (all present:
    --open-mode=append loses nothing)."""
    starts = [f"=== job {job} start {k} " for k in range(1, count + 1)]
    assert all(s in log for s in starts) and f"=== job {job} start {count + 1} " not in log, log
    positions = [log.index(s) for s in starts]
    assert positions == sorted(positions), log
    return [log[a:b] for a, b in zip(positions, positions[1:] + [len(log)], strict=True)]


def test_every_way_of_stopping_a_job_requeues_it_and_it_ends_exactly(slurm, submit, reference,
                                                                     tmp_path):
    """One job, stopped five times, once by each of SLURM's notices, and finished: every run
    after a mid-run notice resumes from the step its processes saved at, the one killed before
    Python handled SIGTERM starts over, and the last run ends bitwise equal to the
    uninterrupted one (so no stop lost or repeated a step, an update or a batch).

    First, a notice while the processes start (before JAX installs its SIGTERM handler)
    kills them (exit 143); the script counts that as a notice and requeues, and the job starts
    over from the last periodic checkpoint (none yet: step 0). Then the four notices of
    NOTICES, each to a run paused mid-training at its step."""
    wd = tmp_path / "w"
    job = submit(wd, "--time=10")
    tasks = slurm.pause(job, TASKS)      # as soon as srun has started them
    assert not any(signal_caught(t, signal.SIGTERM) for t in tasks), \
        "the tasks handle SIGTERM already: paused too late for this case"
    slurm.run("scancel", "--signal=TERM", job)
    slurm.resume(tasks, after_signal=signal.SIGTERM)
    expected, started = ["killed (exit 143) by a notice: requeueing"], []
    for n, notify in enumerate(NOTICES, start=1):
        try:
            slurm.wait(job, "RUNNING", release=True, restarts=n)
        except SlurmError as e:
            raise AssertionError(f"{e}\n{_log(wd, job)}") from None
        # the new run is training (so it handles SIGTERM) once it logs a step past the one it
        # resumed from (the last checkpoint: the last stop's; records after it were dropped)
        tasks = _pause_at_step(slurm, job, wd, max(checkpoint_steps(wd), default=0) + 1)
        line, other = notify(slurm, job, tmp_path)
        expected.append(line)
        started += [other] if other else []
        slurm.resume(tasks, after_signal=signal.SIGTERM)
    info = _completed(slurm, job, wd)
    log = _log(wd, job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == \
        ("COMPLETED", "0:0", str(len(NOTICES) + 1)), (info, log)
    runs = _runs(log, job, len(NOTICES) + 2)
    assert "=== finished" in runs[-1] and not any("=== finished" in r for r in runs[:-1]), log
    # the first run was killed before it could save, the second started over
    assert expected[0] in runs[0] and "preempted at step" not in runs[0], log
    assert "resumed from" not in runs[1], log
    previous = 0
    for n, (run, after) in enumerate(zip(runs[1:-1], runs[2:], strict=True), start=1):
        assert expected[n] in run, (NOTICES[n - 1].__name__, log)
        stopped = {int(s) for s in re.findall(r"preempted at step (\d+)", run)}
        # both processes at the same step, past the one they resumed from
        assert len(stopped) == 1 and previous < min(stopped) < STEPS, log
        previous = min(stopped)
        resumed = re.findall(r"resumed from \S+ at step (\d+)", after)
        assert resumed == [str(previous)] * TASKS, log
    (urgent,) = [slurm.job(j) for j in started]      # the preemption's job, the only one
    assert urgent["JobState"] == "COMPLETED"
    assert urgent["EndTime"] <= re.search(rf"=== job {job} start 4 on \S+ at (\S+ \S+)",
                                          log).group(1).replace(" ", "T")
    notice = f"send_job_warn_signal: warning signal 15 to JobId={job}"
    assert slurm.log("slurmctld").count(notice) == 1
    _assert_same_state(reference[0], wd)
