"""The training command on 4 simulated devices: data parallelism with butterfly sync runs end
to end, resumes exactly, and its checkpoints serve evaluate and fine-tuning like any other."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY

ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def _train(workdir, *extra):
    return subprocess.run([sys.executable, "-m", "deep_image.train", f"--config={TINY}",
                           f"--workdir={workdir}", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=ENV)


@pytest.mark.parametrize("parallelism", ["data", "model_data"])
def test_four_device_run_matches_one_device_and_evaluates(tmp_path, parallelism):
    one = subprocess.run([sys.executable, "-m", "deep_image.train", f"--config={TINY}",
                          f"--workdir={tmp_path / 'one'}", "--config.total_steps=20",
                          "--config.eval_every_steps=20"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert one.returncode == 0, one.stderr[-3000:]
    four = _train(tmp_path / "four", "--config.total_steps=20", "--config.eval_every_steps=20",
                  f"--config.parallelism={parallelism}")
    assert four.returncode == 0, four.stderr[-3000:]
    rec = [[json.loads(l) for l in open(tmp_path / w / "metrics.jsonl") if "train/loss" in l]
           for w in ("one", "four")]
    np.testing.assert_allclose([r["train/loss"] for r in rec[1]],
                               [r["train/loss"] for r in rec[0]], rtol=1e-4)
    ev = subprocess.run([sys.executable, "-m", "deep_image.evaluate",
                         f"--workdir={tmp_path / 'four'}"], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert ev.returncode == 0, ev.stderr[-3000:]
    final = [json.loads(l) for l in open(tmp_path / "four" / "metrics.jsonl")
             if "eval/top1" in l][-1]
    assert json.load(open(tmp_path / "four" / "eval.json"))["eval/top1"] == final["eval/top1"]
