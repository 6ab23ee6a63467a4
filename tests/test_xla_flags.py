"""deep_image's default XLA flags: added on import when the user's XLA_FLAGS does not name
them, never over the user's own setting, the CPU set on CPU and the GPU set on GPU only, each on
the jaxlib series it is known on, and said in the training log. The in-process tests pass the
platform and the jaxlib version, so they test the same on jaxlib 0.10 and 0.11; the subprocess
tests that depend on jaxlib 0.10's YNNPACK behaviour run on 0.10 only."""

import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO
from deep_image import xla_flags

YNN = "--xla_cpu_experimental_ynn_fusion_type"
OURS = "-individual_convolution"     # jaxlib's own list without convolutions
GPU = xla_flags.DEFAULTS["gpu"]
ON_010 = xla_flags.jaxlib_version().startswith("0.10.")


def test_defaults_are_added_only_where_the_user_set_nothing():
    env = {}
    assert xla_flags.apply(env, "0.10.2", "cpu") == [f"{YNN}={OURS}"]
    assert env["XLA_FLAGS"] == f"{YNN}={OURS}"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_flags.apply(env, "0.10.2", "cpu")
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {YNN}={OURS}"
    env = {"XLA_FLAGS": f"{YNN}=individual_dot --xla_force_host_platform_device_count=2"}
    assert xla_flags.apply(env, "0.10.2", "cpu") == []          # the user's own value wins
    assert env["XLA_FLAGS"] == f"{YNN}=individual_dot --xla_force_host_platform_device_count=2"
    # another jaxlib series may not know the experimental CPU flag: nothing added
    env = {}
    assert xla_flags.apply(env, "0.11.2", "cpu") == [] and env == {}


def test_the_gpu_set_only_on_gpu_and_the_users_value_wins():
    gpu = [f"{k}={v}" for k, v in GPU.items()]
    for jaxlib in ("0.10.2", "0.11.2"):
        env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
        assert xla_flags.apply(env, jaxlib, "gpu") == gpu
        assert env["XLA_FLAGS"] == " ".join(["--xla_dump_to=/tmp/x", *gpu])
    assert not any(f.startswith("--xla_gpu") for f in xla_flags.apply({}, "0.10.2", "cpu"))
    assert not any(f.startswith("--xla_cpu") for f in xla_flags.apply({}, "0.10.2", "gpu"))
    assert xla_flags.apply({}, "0.10.2", "tpu") == []
    assert xla_flags.apply({}, "0.12.0", "gpu") == []          # outside setup.py's range
    env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    added = xla_flags.apply(env, "0.11.2", "gpu")
    assert added == gpu[1:] and env["XLA_FLAGS"].split()[0].endswith("=false")


def test_the_platform_is_jax_platforms_else_a_gpu_plugin_with_a_gpu():
    p = xla_flags.platform
    assert p({"JAX_PLATFORMS": "cpu"}, gpu_plugin=True, gpu_device=True) == "cpu"
    assert p({"JAX_PLATFORMS": "cuda,cpu"}, gpu_plugin=False, gpu_device=False) == "gpu"
    assert p({"JAX_PLATFORMS": "rocm"}) == "gpu"
    assert p({}, gpu_plugin=True, gpu_device=True) == "gpu"
    assert p({}, gpu_plugin=True, gpu_device=False) == "cpu"
    assert p({}, gpu_plugin=False, gpu_device=True) == "cpu"
    assert not xla_flags._gpu_device({"CUDA_VISIBLE_DEVICES": ""})   # CUDA hides every GPU


def test_the_log_line_says_what_was_added_and_why_not():
    env = {"XLA_FLAGS": "--a=1 --b=2"}
    assert xla_flags.describe(["--b=2"], False, "gpu", "0.11.2", env) == \
        "XLA_FLAGS='--a=1 --b=2' (deep_image's gpu defaults added: --b=2)"
    assert "this process runs without them" in xla_flags.describe(["--b=2"], True, "gpu",
                                                                  "0.11.2", env)
    assert xla_flags.describe([], False, "cpu", "0.11.2", env).endswith(
        "(deep_image's cpu defaults are for jaxlib 0.10.x; this is jaxlib 0.11.2, so none "
        "were added)")
    assert xla_flags.describe([], False, "cpu", "0.10.2", env) == "XLA_FLAGS='--a=1 --b=2'"


CONV = ("import jax, jax.numpy as jnp; x = jnp.ones((2, 8, 8, 32)); w = jnp.ones((3, 3, 32, 64)); "
        "f = jax.jit(jax.grad(lambda w, x: jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME', "
        "dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum())); "
        "print('ynn' if 'ynn_fusion' in f.lower(w, x).compile().as_text() else 'eigen')")


def _run(code, **env):
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **env}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def _out(code, **env):
    out = _run(code, **env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.mark.skipif(not ON_010, reason="jaxlib 0.10's YNNPACK default and its CPU flag")
def test_importing_the_package_sets_them_before_jax_starts():
    # this convolution (and its weight gradient) goes to YNNPACK in jaxlib 0.10.2 unless the
    # flag is read: so the flag took effect, not only the environment variable
    assert _out(CONV) == ["ynn"]
    out = _out("import os, deep_image; " + CONV + "; print(os.environ['XLA_FLAGS']); "
               "print(deep_image.xla_flags.describe())")
    assert out[:2] == ["eigen", f"{YNN}={OURS}"], out
    ours = f"{YNN}={OURS}"
    assert " ".join(out[2:]) == f"XLA_FLAGS='{ours}' (deep_image's cpu defaults added: {ours})"


@pytest.mark.skipif(not ON_010, reason="jaxlib 0.10's CPU flag (nothing is added on CPU else)")
def test_a_late_import_says_the_defaults_could_not_take_effect():
    out = _out("import jax; jax.numpy.ones(2).block_until_ready(); import deep_image; "
               "print(deep_image.xla_flags.describe())")
    assert "this process runs without them" in " ".join(out), out


def test_importing_the_package_on_cpu_adds_what_this_jaxlib_gets():
    # on any jaxlib: the CPU set or nothing, never a GPU flag, and the log line says which
    out = _out("import os, deep_image; print(os.environ.get('XLA_FLAGS', '-')); "
               "print(deep_image.xla_flags.describe())")
    want = [f"{k}={v}" for k, v in xla_flags.defaults("cpu", xla_flags.jaxlib_version()).items()]
    assert out[0] == (" ".join(want) or "-"), out
    assert "xla_gpu" not in " ".join(out)


def test_the_gpu_flags_are_known_to_this_jaxlibs_xla(tmp_path):
    # XLA aborts on a flag it does not know (the check can fail) ...
    bad = _run("import jax; jax.numpy.ones(1)", XLA_FLAGS="--xla_gpu_no_such_flag=true")
    assert bad.returncode != 0 and "Unknown flag in XLA_FLAGS" in bad.stderr, bad.stderr[-500:]
    # ... and takes ours: XLA's own dump of the options differing from its defaults lists each
    gpu = " ".join(f"{k}={v}" for k, v in GPU.items())
    _out("import jax; jax.jit(lambda x: x * 2)(jax.numpy.ones(3)).block_until_ready()",
         XLA_FLAGS=f"--xla_dump_to={tmp_path} {gpu}", JAX_PLATFORMS="cpu")
    dumped = glob.glob(f"{tmp_path}/*jit__lambda.debug_options")
    assert len(dumped) == 1, os.listdir(tmp_path)
    changed = open(dumped[0]).read().splitlines()
    for k, v in GPU.items():
        assert f"{k[2:]}: {v}" in changed, (k, changed)
