"""A one-node SLURM on localhost for tests: munged, slurmctld and slurmd started here, with
their files in a private temporary folder and all traffic on 127.0.0.1; stopped (exactly
those processes, and what their jobs left behind) at the end, pass or fail.

    from slurm_cluster import slurm          # the fixture (module scope)
    def test_x(slurm):
        job = slurm.sbatch("launch/slurm/train.sbatch", ...)
        slurm.wait(job, "COMPLETED")

The node has this machine's cores. Two partitions: `main` (the default; its jobs are
preempted by requeue, with GraceTime=60 s of notice) and `urgent` (a higher PriorityTier: its
jobs preempt those of `main`). Needs the Debian packages slurmctld, slurmd, slurm-client and
munge (slurm-wlm 22.05 on Debian 12); when they are missing the fixture installs them with
apt-get (as root), and skips the tests, saying why, only when that is impossible.

Several clusters can run on one host at once (pytest-xdist workers, two sessions):
- ports: slurmctld and slurmd bind their own ports (SLURM cannot be given port 0), so the
  cluster picks two at random below the kernel's ephemeral range and, when a daemon exits
  because its port is taken ("Address already in use" in its log), starts again on new ones;
- processes: `processes()` finds this cluster's job processes by the environment they all
  carry (SLURM_CONF=<this cluster's private slurm.conf>; slurmd passes it to every step
  daemon and task), never by matching command names over the host.
Job ids start at 1 in every cluster: JAX's SLURM detection derives the coordinator port from
the job id (61440 + id % 4096), so concurrent clusters' jobs would share ports; submit with
JAX_COORDINATOR_PORT set (a port this process holds, conftest.HeldPort) as test_slurm does.

Run as a script it starts a cluster and prints how to use it, until Ctrl-C or SIGTERM:
    python tests/slurm_cluster.py
"""

from __future__ import annotations

import datetime
import math
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
            "sbatch": "slurm-client"}
SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED")
PORT_IN_USE = "Address already in use"


def _which(name):
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not _which(b)]


def ensure_installed() -> str | None:
    """Installs the Debian packages if a binary is missing; returns why not, or None."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return (f"SLURM is not installed ({', '.join(missing_binaries())} missing) and cannot "
                f"be installed here (needs root and apt-get: apt-get install -y "
                f"{' '.join(PACKAGES)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    out = subprocess.run(install, capture_output=True, text=True, env=env)
    if out.returncode != 0:       # a fresh machine: no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        out = subprocess.run(install, capture_output=True, text=True, env=env)
    if missing_binaries():
        return (f"SLURM is not installed and `{' '.join(install)}` failed: "
                f"{(out.stderr or out.stdout).strip()[-500:]}")
    return None


def _candidate_ports(count: int) -> list[int]:
    """`count` distinct ports below the ephemeral range (where no client's outgoing
    connection takes them, nor JAX's job-id ports above it); taken ones are found by the
    daemons' failing bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        low = 32768
    return random.sample(range(10000, max(10000 + count, low)), count)


def _mem_mb() -> int:
    """80% of the memory free now (MiB): the node's RealMemory."""
    with open("/proc/meminfo") as f:
        info = {l.split(":")[0]: int(l.split()[1]) for l in f}
    return max(256, int(info.get("MemAvailable", info["MemFree"]) / 1024 * 0.8))


def signal_pending(proc: psutil.Process, sig: int) -> bool:
    """Whether `sig` is pending for the process (sent, not yet delivered: it is stopped)."""
    with open(f"/proc/{proc.pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    mask = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(mask & (1 << (sig - 1)))


def signal_caught(proc: psutil.Process, sig: int) -> bool:
    """Whether the process has a handler installed for `sig` (SigCgt)."""
    with open(f"/proc/{proc.pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return bool(int(fields["SigCgt"], 16) & (1 << (sig - 1)))


def environ(pid: int) -> dict:
    """A process's environment from /proc/PID/environ. Not psutil's environ(): slurmstepd writes
    its title (`slurmstepd: [J.S]`) over its argv and the start of its environment area, and
    psutil stops reading at the first empty entry that leaves."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        entries = f.read().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)


class SlurmError(RuntimeError):
    pass


class PortInUse(SlurmError):
    pass


class SlurmCluster:
    """munged + slurmctld + slurmd on 127.0.0.1, configured in `root` (a temporary folder)."""

    def __init__(self, root: str | None = None, grace_time: int = 60):
        self.root = root or tempfile.mkdtemp(prefix="slurm_test_")
        self.grace_time = grace_time
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = os.path.join(self.root, "slurm.conf")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_",
                                                                              "SRUN_"))}
        self.env["SLURM_CONF"] = self.conf
        # jobs run `python`: this interpreter, as the tests' own subprocesses do
        self.env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable),
                                            self.env.get("PATH", ""), *SBIN])

    # -- start / stop ------------------------------------------------------------------------
    def start(self, timeout: float = 60, attempts: int = 8) -> "SlurmCluster":
        """Starts the daemons and waits until the node is idle; a port another process holds
        (a daemon exits saying so) means a new pair of ports and another try."""
        try:
            self._start_munge()
            for attempt in range(attempts):
                self._write_conf(*_candidate_ports(2))
                try:
                    self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f",
                                              self.conf])
                    self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f",
                                           self.conf])
                    self._wait_idle(timeout)
                    return self
                except PortInUse:
                    if attempt == attempts - 1:
                        raise
                    self._stop_daemons(("slurmd", "slurmctld"))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops exactly the daemons this object started, jobs first (their steps are
        slurmstepd processes that slurmd started); then ends any process of this cluster's
        jobs that outlived them (found by SLURM_CONF in its environment)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--signal=KILL", "--user=" +
                            pwd.getpwuid(os.getuid()).pw_name], env=self.env,
                           capture_output=True, timeout=30)
            t0 = time.time()
            while time.time() - t0 < 30 and (self.squeue() or self.processes()):
                time.sleep(0.2)
        self._stop_daemons(("slurmd", "slurmctld", "munged"))
        for p in self.processes():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def _stop_daemons(self, names) -> None:
        for name in names:
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, name, cmd, user=None):
        log = open(os.path.join(self.root, f"{name}.stdout"), "wb")
        kwargs = {}
        if user is not None:
            pw = pwd.getpwnam(user)
            kwargs = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True, **kwargs)
        log.close()

    def _start_munge(self):
        """A private munged: its own key and socket in root/munge (munged refuses to run as
        root and wants its files owned by its user, not writable by others)."""
        d = os.path.join(self.root, "munge")
        os.makedirs(d)
        os.chmod(d, 0o711)   # the socket must be reachable by every user
        os.chmod(self.root, 0o755)
        pw = pwd.getpwnam("munge")
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        for p in (d, key):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        self.munge_socket = os.path.join(d, "munge.socket")
        self._spawn("munged", [_which("munged"), "--foreground", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--log-file={d}/munged.log",
                               f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"],
                    user="munge")
        t0 = time.time()
        while not os.path.exists(self.munge_socket):
            if self.procs["munged"].poll() is not None or time.time() - t0 > 20:
                raise SlurmError(f"munged did not start: {self.log('munged')[-2000:]}"
                                 f"{open(f'{d}/munged.log').read()[-2000:] if os.path.exists(f'{d}/munged.log') else ''}")
            time.sleep(0.1)

    def _write_conf(self, ctld_port: int, slurmd_port: int):
        r = self.root
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(r, sub), exist_ok=True)
        for name in ("slurmctld", "slurmd"):      # a retry's logs tell only of that try
            for path in (f"{r}/log/{name}.log", f"{r}/{name}.stdout"):
                if os.path.exists(path):
                    os.remove(path)
        self.ctld_port, self.slurmd_port = ctld_port, slurmd_port
        user = pwd.getpwuid(os.getuid()).pw_name
        # The hold of a requeued job is AuthInfo's cred_expire + 1 s (120 s by default; slurm.conf
        # AuthInfo, src/slurmctld/job_mgr.c _job_requeue_op). It stays at the default: the tests
        # release a held job themselves once its last run has fully ended (wait(release=True)).
        # Time limits are checked every 30 s, a compiled-in constant (PERIODIC_TIMEOUT,
        # src/slurmctld/slurmctld.h), not a slurm.conf parameter.
        text = f"""\
ClusterName=test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser={user}
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=debug2
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
InactiveLimit=0
SlurmdTimeout=300
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} CPUs={self.cpus} RealMemory={_mem_mb()} State=UNKNOWN
PartitionName=main Nodes={self.node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime={self.grace_time}
PartitionName=urgent Nodes={self.node} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def _wait_idle(self, timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    log = self.log(name, stdout=True)
                    error = PortInUse if PORT_IN_USE in log else SlurmError
                    raise error(f"{name} exited with {p.returncode}: {log[-3000:]}")
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env,
                                 capture_output=True, text=True)
            if out.returncode == 0 and set(out.stdout.split()) == {"idle"}:
                return
            time.sleep(0.3)
        raise SlurmError(f"the node did not become idle in {timeout} s: "
                         f"{self.log('slurmctld')[-2000:]}\n{self.log('slurmd')[-2000:]}")

    def log(self, name: str, stdout: bool = False) -> str:
        """A daemon's log (slurmctld, slurmd: their log file; munged: its stdout); with
        `stdout`, followed by its stdout and stderr (what it said before opening its log)."""
        paths = [os.path.join(self.root, "log", f"{name}.log")]
        if stdout or not os.path.exists(paths[0]):
            paths.append(os.path.join(self.root, f"{name}.stdout"))
        text = ""
        for path in paths:
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    # -- clients -----------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        out = subprocess.run(list(cmd), env={**self.env, **kwargs.pop("env", {})},
                             capture_output=True, text=True, timeout=60, **kwargs)
        if check and out.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
        return out

    def sbatch(self, *args: str, cwd: str | None = None, env: dict | None = None) -> str:
        """Submits; returns the job id."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd, env=env or {})
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", out.stdout))

    def state(self, job_id: str) -> str:
        return self.job(job_id)["JobState"]

    def squeue(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i", check=False)
        return out.stdout.split()

    def elapsed(self, job_id: str) -> float:
        """Seconds since the job's (current run's) start, by SLURM's StartTime."""
        start = datetime.datetime.fromisoformat(self.job(job_id)["StartTime"]).timestamp()
        return time.time() - start

    # -- the processes of this cluster's jobs --------------------------------------------------
    def processes(self, job_id: str | None = None) -> list[psutil.Process]:
        """The live processes of this cluster's jobs (of job `job_id` if given): step daemons
        (`slurmstepd: [JOB.STEP]`), batch shells, srun, tasks and anything they started, all
        of which carry SLURM_CONF=<this cluster's slurm.conf> in their environment."""
        found = []
        for p in psutil.process_iter():
            try:
                env = environ(p.pid)
                if env.get("SLURM_CONF") != self.conf or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                step = re.match(r"slurmstepd: \[(\d+)\.", " ".join(p.cmdline()))
                job = env.get("SLURM_JOB_ID") or (step.group(1) if step else None)
                if job is not None and (job_id is None or job == str(job_id)):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                pass
        return found

    def tasks(self, job_id: str) -> list[psutil.Process]:
        """The job's tasks: the processes srun launched (children of `slurmstepd: [J.N]`) once
        they have exec'd their program. Before that a task is a forked `slurmstepd` that SLURM
        does not yet signal as a task: one paused there never gets scancel's notice."""
        out = []
        for p in psutil.process_iter():
            try:    # the command line first: cheap enough to poll often
                if not re.match(rf"slurmstepd: \[{job_id}\.\d+\]", " ".join(p.cmdline())) \
                        or environ(p.pid).get("SLURM_CONF") != self.conf:
                    continue
                out += [c for c in p.children()
                        if c.status() != psutil.STATUS_ZOMBIE and c.name() != "slurmstepd"]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                pass
        return out

    def pause(self, job_id: str, count: int, timeout: float = 120) -> list[psutil.Process]:
        """SIGSTOPs the job's `count` tasks as soon as they all exist and returns them once all
        are stopped: a paused training run cannot end (or reach its next step) before a notice
        that the test sends or waits for. SLURM sends SIGCONT before the notices of a requeue,
        a preemption and the time limit; `resume()` sends one in any case."""
        t0 = time.time()
        while True:
            tasks = self.tasks(job_id)
            if len(tasks) >= count:
                break
            state = self.state(job_id)
            if state not in ("PENDING", "CONFIGURING", "RUNNING") or time.time() - t0 > timeout:
                raise SlurmError(f"job {job_id} ({state}) has {len(tasks)} of {count} tasks "
                                 f"after {time.time() - t0:.0f} s")
            time.sleep(0.02)
        for t in tasks:
            t.send_signal(signal.SIGSTOP)
        t0 = time.time()
        while not all(t.status() == psutil.STATUS_STOPPED for t in tasks):
            if time.time() - t0 > 30:
                raise SlurmError(f"tasks of job {job_id} not stopped: "
                                 f"{[(t.pid, t.status()) for t in tasks]}")
            time.sleep(0.01)
        return tasks

    def resume(self, tasks: list[psutil.Process], after_signal: int | None = None,
               timeout: float = 120) -> None:
        """SIGCONTs paused tasks; with `after_signal`, first waits until each has that signal
        pending or has been continued already (SLURM sends SIGCONT before its own notices)."""
        t0 = time.time()
        while after_signal is not None:
            try:
                if all(t.status() != psutil.STATUS_STOPPED or signal_pending(t, after_signal)
                       for t in tasks):
                    break
            except (psutil.NoSuchProcess, FileNotFoundError):
                break
            if time.time() - t0 > timeout:
                raise SlurmError(f"signal {after_signal} did not reach the paused tasks in "
                                 f"{timeout} s")
            time.sleep(0.02)
        for t in tasks:
            try:
                t.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass

    def last_run_ended(self, job_id: str) -> bool:
        """Whether nothing of the job's last run is left: no process of the job on this host
        (step daemons, batch shell, srun, tasks, a `scancel` the batch script started), no
        step, and no node COMPLETING (slurmd has processed the job's termination, which
        revokes the last run's credentials)."""
        if self.processes(job_id):
            return False
        if self.run("squeue", "-h", "-s", "-j", job_id, check=False).stdout.strip():
            return False
        return "comp" not in self.run("sinfo", "-h", "-o", "%T", check=False).stdout.lower()

    def release(self, job_id: str) -> None:
        """A requeued job waits (BeginTime, 121 s here): let it start now."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait(self, job_id: str, *states: str, timeout: float = 400, release: bool = False,
             restarts: int = 0, poll: float = 0.2) -> dict:
        """Polls until the job's state is one of `states` (default: any final state), and it has
        been restarted at least `restarts` times; `release` lets a requeued job start as soon
        as its last run has ended on the node instead of after SLURM's hold. Returns `job()`.

        Why not earlier: a process of the last run still alive can signal the new run, whose
        steps have the same ids (J.0 again): the batch script's forwarding `scancel
        --signal=TERM J` retries for up to 10 s while the job is COMPLETING, and an srun's
        cancel of J.0 arriving late would hit the new J.0. And not in the second slurmd revoked
        the last run's credentials (a launch credential of the same second is refused: "Job
        credential revoked", the job FAILS): after the node has left COMPLETING, the next
        whole second."""
        states = states or FINAL
        t0, released, ended_at = time.time(), 0, None
        while True:
            info = self.job(job_id)
            count = int(info.get("Restarts", 0))
            if info["JobState"] in states and count >= restarts:
                return info
            if release and info["JobState"] == "PENDING" and info.get("Reason") == "BeginTime" \
                    and count > released:
                if ended_at is None and self.last_run_ended(job_id):
                    ended_at = time.time()
                if ended_at is not None and time.time() >= math.floor(ended_at) + 1:
                    self.release(job_id)
                    released, ended_at = count, None
            if info["JobState"] in FINAL:
                raise SlurmError(f"job {job_id} ended {info['JobState']}, not in {states}: "
                                 f"{info}")
            if time.time() - t0 > timeout:
                raise SlurmError(f"job {job_id} not in {states} after {timeout} s: {info}")
            time.sleep(poll)

    def cancel(self, job_id: str, timeout: float = 90) -> None:
        """Kills the job if it has not ended and waits until nothing of it is left."""
        if self.state(job_id) not in FINAL:
            self.run("scancel", "--full", "--signal=KILL", job_id, check=False)
            self.run("scancel", job_id, check=False)       # a pending (held) job
        t0 = time.time()
        while self.state(job_id) not in FINAL or not self.last_run_ended(job_id):
            if time.time() - t0 > timeout:
                raise SlurmError(f"job {job_id} still there {timeout} s after scancel: "
                                 f"{self.job(job_id)}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm():
    why = ensure_installed()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


if __name__ == "__main__":
    why = ensure_installed()
    if why:
        raise SystemExit(why)
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # stop the daemons on TERM too
    cluster = SlurmCluster()
    with cluster as c:
        print(f"export SLURM_CONF={c.conf}   # then sinfo, sbatch, squeue ...; Ctrl-C or "
              f"kill {os.getpid()} stops", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    shutil.rmtree(cluster.root, ignore_errors=True)
