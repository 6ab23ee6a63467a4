"""The second model family end to end (ResNet-50 at 1/16 width on SynthBirds, as a user runs
it): it trains with BatchNorm statistics in the state, resumes bitwise (statistics included),
evaluates densely at several scales with flips, and fine-tunes in every mode with frozen layers
and frozen statistics left bit-identical."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, read_state, run_train

RESNET = ("--config.model.name=resnet", "--config.model.variant=resnet50")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("resnet")
    proc = run_train(wd, *RESNET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def test_statistics_train_and_resume_bitwise(trained, tmp_path):
    first, last = read_state(trained, 20), read_state(trained, 40)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first["stats"]),
                                                      jax.tree.leaves(last["stats"]))]
    assert moved and all(moved)               # every BatchNorm's running statistics moved
    # interrupted after checkpoint 20 (its checkpoints later than 20 removed), then resumed
    wd = tmp_path / "resumed"
    proc = run_train(wd, *RESNET, "--config.total_steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train(wd, *RESNET)
    assert proc.returncode == 0 and "resumed from" in proc.stderr, proc.stderr[-3000:]
    a, b = read_state(trained, 40), read_state(wd, 40)
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a),
                                 jax.tree_util.tree_leaves_with_path(b)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_dense_multiscale_flip_evaluation(trained):
    proc = subprocess.run([sys.executable, "-m", "deep_image.evaluate", f"--workdir={trained}",
                           "--config=experiments/synthetic.py:tiny", *RESNET,
                           "--config.eval.protocol=dense", "--config.eval.scales=(32,48)",
                           "--config.eval.flip=True"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(trained / "eval.json"))
    assert result["eval/examples"] == 50 and "dense, scales (32, 48) +flip" in proc.stdout


@pytest.mark.parametrize("mode", ["last", "fc", "all"])
def test_finetune_modes_freeze_layers_and_statistics(trained, tmp_path, mode):
    wd = tmp_path / mode
    proc = run_train(wd, *RESNET, f"--config.init_from={trained}", f"--config.finetune={mode}",
                     "--config.total_steps=6", "--config.eval_every_steps=6",
                     "--config.checkpoint_every_steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = read_state(trained, 40), read_state(wd, 6)
    for layer, leaves in after["params"].items():
        for name, x in leaves.items():
            trained_layer = mode == "all" or layer == "fc"
            assert np.array_equal(x, before["params"][layer][name]) != trained_layer, \
                (mode, layer, name)
    same_stats = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["stats"]),
                                                          jax.tree.leaves(before["stats"])))
    assert same_stats == (mode != "all")       # a frozen backbone keeps its statistics
