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
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest_plugins = ["slurm_cluster"]     # the `slurm` fixture: a one-node SLURM on localhost
TINY = f"{REPO}/experiments/synthetic.py:tiny"


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
