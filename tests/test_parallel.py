"""§3.1 data parallelism on 8 simulated CPU devices (in a subprocess, so the rest of the suite
keeps one device): butterfly synchronization + lazy update equals single-device training."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "butterfly_equivalence.py")],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_loss_and_parameters_as_one_device(result):
    assert result["devices"] == 8
    # float32 sums in another order (8 partial sums, then the reduce-scatter): agreement to
    # ~1e-6 relative; a wrong gradient part, scaling or dropout mask would be off by >1e-2.
    for ours, ref in zip(result["losses"], result["ref_losses"]):
        assert ours == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert max(result["max_param_diff"]) < 1e-5, result["max_param_diff"]


def test_gradients_sync_by_reduce_scatter_and_all_gather(result):
    assert result["reduce_scatter"] >= 1 and result["all_gather"] >= 1
    # no all-reduce of a gradient: only the scalar loss and accuracy are all-reduced
    assert all(s.endswith("[]") or s.endswith("[]{}") for s in result["all_reduce_shapes"]), \
        result["all_reduce_shapes"]


def test_each_device_owns_one_eighth(result):
    (count, size), = result["shard_sizes"].items()
    assert count == "8" and size > 0
