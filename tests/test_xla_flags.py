"""deep_image's default XLA flags: added on import when the user's XLA_FLAGS does not name
them, never over the user's own setting, and said in the training log."""

import os
import subprocess
import sys

from conftest import REPO
from deep_image import xla_flags

YNN = "--xla_cpu_experimental_ynn_fusion_type"


def test_defaults_are_added_only_where_the_user_set_nothing():
    env = {}
    assert xla_flags.apply(env) == [f"{YNN}="] and env["XLA_FLAGS"] == f"{YNN}="
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    xla_flags.apply(env)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {YNN}="
    env = {"XLA_FLAGS": f"{YNN}=individual_dot --xla_force_host_platform_device_count=2"}
    assert xla_flags.apply(env) == []                          # the user's own value wins
    assert env["XLA_FLAGS"] == f"{YNN}=individual_dot --xla_force_host_platform_device_count=2"


def test_importing_the_package_sets_them_before_jax_starts():
    code = ("import os, deep_image, jax; jax.numpy.ones(2).block_until_ready(); "
            "print(os.environ['XLA_FLAGS'])")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [f"{YNN}="]
