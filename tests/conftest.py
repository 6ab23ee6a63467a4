"""Test setup: CPU only, one device unless a test asks for more (in a subprocess)."""

import os
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session: the many tiny runs (in this process
# and in subprocesses, which inherit the environment) compile the same programs; a hit halves
# a tiny run's time. Fresh per session, so every CI run starts cold.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="deep_image_jit_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA without LLVM's optimizations (JAX's `jax_disable_most_optimizations`, as Flax's own tests
# of long-compiling models use it): the suite's tiny programs spend more time compiling than
# running. Subprocesses inherit it; comparisons are between programs compiled alike, or against
# numpy to float tolerance. One place keeps XLA's defaults: the initializer's bitwise test
# (test_models.py).
# One test at a time, fresh caches (2026-12-02,
# `bash docs/test_speed/ab.sh`, docs/test_speed/ab.txt): test_parallel[data] 103.3 -> 81.4 s,
# test_experiments[cub_resnet50_448] 172.6 -> 141.5 s, a device-cache resume 61.1 -> 62.1 s.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def _suite_xla_flags() -> str:
    """XLA:CPU's elemental fusion emitters in place of its newer MLIR ones
    (`--xla_cpu_use_fusion_emitters=false`): half the compile time of the suite's programs
    (2026-12-02, one 8-device equivalence run, no cache: XLA's compiles 12.44 s -> 5.74 s,
    `python docs/test_speed/compile_time.py`; a fresh-clone suite 1,024.4 s -> 866.9 s, with
    test_parallel.py at XLA's own emitters; it now keeps them for one mode only). The
    initial weights are bitwise those of a user's run either way (checked for VGG-11 and ResNet-18); the training
    programs compare against programs compiled alike, or numpy to float tolerance. Only on the
    jaxlib series it was measured on: XLA aborts on a flag it does not know."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        jaxlib = version("jaxlib")
    except PackageNotFoundError:
        return ""
    return "--xla_cpu_use_fusion_emitters=false" if jaxlib.startswith("0.10.") else ""


SUITE_XLA_FLAGS = _suite_xla_flags()
if SUITE_XLA_FLAGS and SUITE_XLA_FLAGS.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()


# the suite's XLA flags undone, as DebugOptions for `jax.jit(..., compiler_options=)`: what a
# user's program compiles with
USERS_XLA_OPTIONS = {"xla_cpu_use_fusion_emitters": True} if SUITE_XLA_FLAGS else {}


def xla_flags(devices: int, *, suite: bool = True) -> str:
    """XLA_FLAGS for a subprocess with `devices` simulated CPU devices: the suite's flags kept,
    or, with suite=False, undone by name (XLA's own emitters, as a user's run compiles; named,
    so that a child importing this module does not add them back)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if not suite and SUITE_XLA_FLAGS:
        flags = [f for f in flags if f != SUITE_XLA_FLAGS] + ["--xla_cpu_use_fusion_emitters=true"]
    return " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest_plugins = ["slurm_cluster"]     # the `slurm` fixture: a one-node SLURM on localhost
TINY = f"{REPO}/experiments/synthetic.py:tiny"
# The modules that take longest run first (a fresh-clone run, 2026-12-01: experiments
# 523 s of one worker, parallel 521, multiprocess 508, slurm 281): pytest-xdist hands each
# worker its next module when it has fewer than two queued, so long ones started last leave the
# other worker idle at the end (pytest.ini turns off xdist's own order, by number of tests,
# which put the SLURM module, 4 tests, last). In this order the two modules of two-process runs
# go to one worker, one after the other.
# The study module (163 s) fifth: started 14th, it ended one worker 125 s after the other
# (2026-12-04, DEEP_IMAGE_TEST_CPU's record: docs/test_speed/cpu_2026-12-04.jsonl).
LONGEST_FIRST = ("test_slurm.py", "test_experiments.py", "test_multiprocess.py",
                 "test_parallel.py", "test_study.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable otherwise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With DEEP_IMAGE_TEST_CPU=FILE, appends each test's wall and CPU seconds (this process
    and the subprocesses it waited for; module fixtures count to the first test using them) to
    FILE as JSON lines: where the suite's CPU goes (docs/test_speed)."""
    out = os.environ.get("DEEP_IMAGE_TEST_CPU")
    if not out:
        yield
        return
    import json
    import resource
    import time

    def cpu():
        s, c = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime
    t0, (s0, c0) = time.time(), cpu()
    yield
    t1, (s1, c1) = time.time(), cpu()
    with open(out, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER"),
                            "start": t0, "wall": t1 - t0, "cpu_self": s1 - s0,
                            "cpu_children": c1 - c0}) + "\n")


def run_train(workdir, *overrides, config=TINY, timeout=300, **popen):
    """Runs `python -m deep_image.train` as a user would; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "deep_image.train", f"--config={config}",
           f"--workdir={workdir}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, **popen)


def cli(module: str, *args, timeout: int = 300):
    """Runs `python -m MODULE ARGS` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def read_state(workdir, step):
    """The train state a run saved at `step`, as a plain tree of arrays."""
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state"))


@pytest.fixture
def repo():
    return REPO


def tiny_config(**overrides):
    """The tiny synthetic config, in-process, with `a__b=value` overrides for `a.b`."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("synthetic_cfg", f"{REPO}/experiments/synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        if isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return config


def build_model(variant: str, num_classes: int, *, width: float, input_size: int,
                dtype: str = "float32", dropout_rate: float = 0.5, head_init: str = "he"):
    """A model of the family `variant` belongs to (vgg*, resnet*), through models.build."""
    from deep_image import config as config_lib
    from deep_image import models
    c = config_lib.base().model
    c.name = "resnet" if variant.startswith("resnet") else "vgg"
    c.variant, c.width, c.dtype = variant, width, dtype
    c.dropout_rate, c.head_init = dropout_rate, head_init
    return models.build(c, num_classes, input_size)


def init_params(model, seed: int = 0):
    """A model's fresh parameters (its statistics dropped)."""
    import jax
    return model.init(jax.random.PRNGKey(seed))[0]


# ---------------------------------------------------------------- shared helpers of the suite

def records(workdir):
    """Every record of a run's metrics.jsonl, in order."""
    import json
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(workdir) -> dict:
    """{step: train/loss} at every logged step of a run."""
    return {r["step"]: r["train/loss"] for r in records(workdir) if "train/loss" in r}


def logged_step(workdir) -> int:
    """The last step a (possibly running) run has logged; 0 before its first record."""
    try:
        return max((r["step"] for r in records(workdir)), default=0)
    except (OSError, ValueError):      # not there yet, or a line being written
        return 0


def checkpoint_steps(workdir) -> list[int]:
    """The steps of the complete checkpoints in WORKDIR/checkpoints."""
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def read_state_on_one_device(workdir, step):
    """A saved train state as plain host arrays, whatever mesh or process count wrote it."""
    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as r:
        tree = r.metadata(path).item_metadata
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                              tree)
        return jax.device_get(r.restore(path, target))


def restore_weights(workdir, step, *, ema=False):
    """A run's parameters at `step` in their canonical shapes (its moving average with `ema`),
    whatever mesh wrote them: the library's own reader (training/checkpoint.py)."""
    from deep_image.training.checkpoint import Checkpointer, checkpoint_dir
    ckpt = Checkpointer(checkpoint_dir(str(workdir)), read_only=True)
    try:
        return ckpt.restore_weights(step, ema=ema)[0]
    finally:
        ckpt.close()


class StopAt:
    """A stop notice (training/preemption.py's interface) that fires at one step: what SIGTERM
    does, without the signal, for in-process runs (`train_and_evaluate(..., notice=)`)."""

    def __init__(self, step):
        self.step = step

    def pending(self):
        return False

    def stop_at(self, step):
        return step == self.step


def assert_trees_equal(a, b, *, atol=None, rtol=0.0):
    """Same paths, leaf for leaf (nothing dropped: zip is strict); bitwise unless atol is given."""
    import jax
    import numpy as np
    la, lb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    assert [p for p, _ in la] == [p for p, _ in lb], "the trees have different leaves"
    for (path, x), (_, y) in zip(la, lb, strict=True):
        if atol is None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol,
                                       err_msg=str(path))


def wait_for(predicate, proc=None, *, timeout=240, what="the run"):
    """Polls `predicate` (an event: a file, a log line) until true; fails at once if `proc`
    ends first, or after `timeout` seconds. Give `proc` its output in files, not pipes."""
    import time
    t0 = time.time()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} ended (exit {proc.returncode}) before the event")
        if time.time() - t0 > timeout:
            if proc is not None:
                proc.kill()
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class HeldPort:
    """A localhost TCP port bound (not listening) with SO_REUSEPORT and held until closed, so no
    other process can take it in between, while a child that also sets SO_REUSEPORT (gRPC
    servers do by default, JAX's coordinator among them) binds it. Use as a context manager."""

    def __init__(self):
        import socket
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def reference_plateau(errors, *, factor, patience, cooldown, rtol, min_scale):
    """optax.contrib.reduce_on_plateau's rule as a loop: the scale after each evaluation
    (test_update_rule.py and test_schedule.py check the code against it)."""
    scale, best, bad, cool, out = 1.0, float("inf"), 0, 0, []
    for e in errors:
        if e < (1.0 - rtol) * best:
            best, bad = e, 0
        else:
            bad += 1
        if cool > 0:                       # cooling down: bad evaluations are not counted
            bad, cool = 0, cool - 1
        elif bad == patience:
            scale, bad, cool = scale * factor, 0, cooldown
        scale = max(scale, min_scale)
        out.append(scale)
    return out
