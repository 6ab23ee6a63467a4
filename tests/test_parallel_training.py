"""The training command on 4 simulated devices: data, model_data and the hybrid (2 x 2 mesh) run
end to end like one device; their checkpoints serve evaluate like any other, and a run resumes
on another mesh or device count."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY, losses, records, xla_flags

ONE = {**os.environ, "JAX_PLATFORMS": "cpu"}
FOUR = {**ONE, "XLA_FLAGS": xla_flags(4)}
STEPS = ["--config.total_steps=20", "--config.eval_every_steps=20"]
MODES = {"data": ["--config.parallelism=data"],
         "model_data": ["--config.parallelism=model_data"],
         "hybrid": ["--config.parallelism=model_data",
                    "--config.mesh=(('data', 2), ('model', 2))"]}


def _run(module, env, *args):
    proc = subprocess.run([sys.executable, "-m", f"deep_image.{module}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _train(workdir, env, *extra):
    return _run("train", env, f"--config={TINY}", f"--workdir={workdir}", *extra)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    _train(workdir, ONE, *STEPS)
    return losses(workdir)


@pytest.mark.parametrize("mode", list(MODES))
def test_four_device_run_matches_one_device_and_evaluates(tmp_path, one_device, mode):
    four = _train(tmp_path, FOUR, *STEPS, *MODES[mode])
    if mode == "hybrid":
        assert "head layers split over model" in four.stderr
    ours = losses(tmp_path)
    assert sorted(ours) == sorted(one_device)
    np.testing.assert_allclose([ours[s] for s in sorted(ours)],
                               [one_device[s] for s in sorted(ours)], rtol=1e-4)
    _run("evaluate", ONE, f"--workdir={tmp_path}")     # on one device
    final = [r for r in records(tmp_path) if "eval/top1" in r][-1]
    assert json.load(open(tmp_path / "eval.json"))["eval/top1"] == final["eval/top1"]


def test_resume_on_another_mesh_continues_the_run(tmp_path, one_device):
    # 10 steps as the hybrid on 4 devices, then 10 more on one device: the same losses as
    # 20 steps on one device (float32 sums in another order: ~1e-6 relative)
    _train(tmp_path, FOUR, "--config.total_steps=10", "--config.eval_every_steps=20",
           *MODES["hybrid"])
    resumed = _train(tmp_path, ONE, *STEPS)
    assert "converted to this run's" in resumed.stderr
    ours = losses(tmp_path)
    assert sorted(ours) == sorted(one_device)
    np.testing.assert_allclose([ours[s] for s in sorted(ours)],
                               [one_device[s] for s in sorted(ours)], rtol=1e-4)
