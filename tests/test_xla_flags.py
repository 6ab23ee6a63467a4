"""deep_image's default XLA flags: added on import when the user's XLA_FLAGS does not name
them, never over the user's own setting, and said in the training log."""

import os
import subprocess
import sys

from conftest import REPO
from deep_image import xla_flags

YNN = "--xla_cpu_experimental_ynn_fusion_type"
OURS = "-individual_convolution"     # jaxlib's own list without convolutions


def test_defaults_are_added_only_where_the_user_set_nothing():
    env = {}
    assert xla_flags.apply(env) == [f"{YNN}={OURS}"] and env["XLA_FLAGS"] == f"{YNN}={OURS}"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_flags.apply(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {YNN}={OURS}"
    env = {"XLA_FLAGS": f"{YNN}=individual_dot --xla_force_host_platform_device_count=2"}
    assert xla_flags.apply(env) == []                          # the user's own value wins
    assert env["XLA_FLAGS"] == f"{YNN}=individual_dot --xla_force_host_platform_device_count=2"
    # another jaxlib series may not know the flag (XLA aborts on an unknown one): nothing added
    env = {}
    assert xla_flags.apply(env, jaxlib="0.11.0") == [] and env == {}
    assert xla_flags.apply(env, jaxlib=xla_flags.jaxlib_version()) != []


CONV = ("import jax, jax.numpy as jnp; x = jnp.ones((2, 8, 8, 32)); w = jnp.ones((3, 3, 32, 64)); "
        "f = jax.jit(jax.grad(lambda w, x: jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME', "
        "dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum())); "
        "print('ynn' if 'ynn_fusion' in f.lower(w, x).compile().as_text() else 'eigen')")


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_importing_the_package_sets_them_before_jax_starts():
    # this convolution (and its weight gradient) goes to YNNPACK in jaxlib 0.10.2 unless the
    # flag is read: so the flag took effect, not only the environment variable
    assert _run(CONV) == ["ynn"]
    out = _run("import os, deep_image; " + CONV + "; print(os.environ['XLA_FLAGS']); "
               "print(deep_image.xla_flags.describe())")
    assert out[:2] == ["eigen", f"{YNN}={OURS}"], out
    ours = f"{YNN}={OURS}"
    assert " ".join(out[2:]) == f"XLA_FLAGS='{ours}' (deep_image's defaults added: {ours})"


def test_a_late_import_says_the_defaults_could_not_take_effect():
    out = _run("import jax; jax.numpy.ones(2).block_until_ready(); import deep_image; "
               "print(deep_image.xla_flags.describe())")
    assert "this process runs without them" in " ".join(out), out
