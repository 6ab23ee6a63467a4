"""A one-node SLURM on localhost for tests: munged, slurmctld and slurmd started here, with
their files in a temporary folder and all traffic on 127.0.0.1; stopped (exactly those
processes) at the end, pass or fail.

    from slurm_cluster import slurm          # the fixture (module scope)
    def test_x(slurm):
        job = slurm.sbatch("launch/slurm/train.sbatch", ...)
        slurm.wait(job, "COMPLETED")

The node has this machine's cores. Two partitions: `main` (the default; its jobs are
preempted by requeue, with GraceTime=60 s of notice) and `urgent` (a higher PriorityTier: its
jobs preempt those of `main`). Needs the Debian packages slurmctld, slurmd, slurm-client and
munge (slurm-wlm 22.05 on Debian 12); when they are missing the fixture installs them with
apt-get (as root), and skips the tests, saying why, only when that is impossible.

Run as a script it starts a cluster and prints how to use it, until Ctrl-C or SIGTERM:
    python tests/slurm_cluster.py
"""

from __future__ import annotations

import datetime
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
            "sbatch": "slurm-client"}
SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    """80% of the memory free now (MiB): the node's RealMemory."""
    with open("/proc/meminfo") as f:
        info = {l.split(":")[0]: int(l.split()[1]) for l in f}
    return max(256, int(info.get("MemAvailable", info["MemFree"]) / 1024 * 0.8))


class SlurmError(RuntimeError):
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
    def start(self, timeout: float = 60) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f", self.conf])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", self.conf])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops exactly the daemons this object started (jobs first: their steps are
        slurmstepd processes that slurmd started)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--signal=KILL", "--user=" +
                            pwd.getpwuid(os.getuid()).pw_name], env=self.env,
                           capture_output=True, timeout=30)
            t0 = time.time()
            while time.time() - t0 < 20 and self.squeue():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
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
        time.sleep(0.2)
        if self.procs[name].poll() is not None:
            raise SlurmError(f"{name} exited at once: {self.log(name)[-2000:]}")

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

    def _write_conf(self):
        r = self.root
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(r, sub), exist_ok=True)
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        user = pwd.getpwuid(os.getuid()).pw_name
        text = f"""\
ClusterName=test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
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
                    raise SlurmError(f"{name} exited with {p.returncode}: "
                                     f"{self.log(name)[-3000:]}")
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env,
                                 capture_output=True, text=True)
            if out.returncode == 0 and set(out.stdout.split()) == {"idle"}:
                return
            time.sleep(0.3)
        raise SlurmError(f"the node did not become idle in {timeout} s: "
                         f"{self.log('slurmctld')[-2000:]}\n{self.log('slurmd')[-2000:]}")

    def log(self, name: str) -> str:
        """A daemon's log (slurmctld, slurmd: their log files; munged: its stdout)."""
        for path in (os.path.join(self.root, "log", f"{name}.log"),
                     os.path.join(self.root, f"{name}.stdout")):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    return f.read()
        return ""

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

    def before_time_limit_check(self, seconds: float) -> None:
        """Sleeps until slurmctld's next time limit check (every 30 s: the only moment it
        sends a job's --signal notice) is `seconds` away."""
        t0 = time.time()
        while True:
            checks = re.findall(r"^\[(\S+)\] debug2: Testing job time limits", self.log("slurmctld"),
                                re.M)
            if checks:
                break
            if time.time() - t0 > 40:
                raise SlurmError("slurmctld logged no time limit check in 40 s")
            time.sleep(0.5)
        last = datetime.datetime.fromisoformat(checks[-1]).timestamp()
        now = time.time()
        target = last + PERIODIC_CHECK - seconds
        while target < now:
            target += PERIODIC_CHECK
        time.sleep(target - now)

    def node_completing(self) -> bool:
        """Whether a node is still ending a job (sinfo's COMPLETING flag) or runs a step, or
        an srun or step daemon of the last run is still alive on this host (an old srun's
        late cancel of step J.0 would hit the restarted run's step J.0)."""
        states = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.lower()
        steps = self.run("squeue", "-h", "-s", check=False).stdout.strip()
        alive = subprocess.run(["pgrep", "-f", r"^(srun|slurmstepd: \[[0-9]+\.[0-9]+\])"],
                               capture_output=True, text=True).stdout.strip()
        return "comp" in states or bool(steps) or bool(alive)

    def release(self, job_id: str) -> None:
        """A requeued job waits (BeginTime, 120 s here): let it start now."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def wait(self, job_id: str, *states: str, timeout: float = 240, release: bool = False,
             poll: float = 0.2) -> dict:
        """Polls until the job's state is one of `states` (default: any final state);
        `release` lets a requeued job start soon instead of after SLURM's hold. Returns
        `job()`."""
        states = states or FINAL
        t0, released, held_since = time.time(), 0, None
        while True:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            restarts = int(info.get("Restarts", 0))
            if release and info["JobState"] == "PENDING" and info.get("Reason") == "BeginTime" \
                    and restarts > released:
                # not in the second it was requeued: slurmd refuses a job whose credential
                # was revoked in the same second ("Job credential revoked", job FAILED)
                held_since = held_since or time.time()
                # and not while the node still cleans up the last run: a kill of its step
                # that arrives late would hit the new run's step (the same id, JOB.0)
                if time.time() - held_since > 1.5 and not self.node_completing():
                    self.release(job_id)
                    released, held_since = restarts, None
            if time.time() - t0 > timeout:
                raise SlurmError(f"job {job_id} not in {states} after {timeout} s: {info}")
            time.sleep(poll)


PERIODIC_CHECK = 30.2     # slurmctld tests time limits every 30 s (PERIODIC_TIMEOUT)
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED")


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
