"""The second model family end to end (ResNet-18 at 1/16 width on SynthBirds, as a user runs
it): it trains with BatchNorm statistics in the state, resumes bitwise (statistics included),
evaluates densely at several scales with flips, and fine-tunes with frozen layers and frozen
statistics left bit-identical. ResNet has one FC layer, its classifier, so finetune=fc and
finetune=last train the same layer (VGG is where they differ: tests/test_finetune.py).
ResNet-18, not 50: half the compile time (this module alone, one after the other, 2026-12-03:
107.6 s with ResNet-50, 57.1 s with ResNet-18); ResNet-50's bottleneck blocks train and
evaluate in test_experiments.py (cub_resnet50_448, in bfloat16) and test_models.py."""

import json
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from conftest import REPO, assert_trees_equal, build_model, read_state, run_train
from deep_image.training import state as state_lib
from deep_image.training import step as step_lib

RESNET = ("--config.model.name=resnet", "--config.model.variant=resnet18")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("resnet")
    proc = run_train(wd, *RESNET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def test_statistics_train_and_resume_bitwise(trained, tmp_path):
    first, last = read_state(trained, 20), read_state(trained, 40)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first["stats"]),
                                                      jax.tree.leaves(last["stats"]),
                                                      strict=True)]
    assert moved and all(moved)               # every BatchNorm's running statistics moved
    # stopped after checkpoint 20 (a copy of the run, its later checkpoints set aside with
    # --resume_step), then resumed: bitwise the uninterrupted run's state, statistics included
    wd = tmp_path / "resumed"
    shutil.copytree(trained, wd)
    proc = run_train(wd, *RESNET, "--resume_step=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = [l for l in proc.stderr.splitlines() if "resumed from" in l]
    assert resumed and resumed[0].endswith("at step 20"), proc.stderr[-3000:]
    assert_trees_equal(read_state(trained, 40), read_state(wd, 40))


def test_dense_multiscale_flip_evaluation(trained):
    proc = subprocess.run([sys.executable, "-m", "deep_image.evaluate", f"--workdir={trained}",
                           "--config=experiments/synthetic.py:tiny", *RESNET,
                           "--config.eval.protocol=dense", "--config.eval.scales=(32,48)",
                           "--config.eval.flip=True"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(trained / "eval.json"))
    assert result["eval/examples"] == 50 and "dense, scales (32, 48) +flip" in proc.stdout


def test_fc_and_last_are_the_same_mode_for_resnet_not_for_vgg():
    """What each mode trains (state.trained_layers, the only place the optimizer reads the mode;
    the statistics freeze for every mode but `all`: step.updates_stats). ResNet's one layer
    with a 2-D kernel, its one FC layer, is its classifier `fc`: fc and last are one set, so
    the subprocess test below runs `last` for both. VGG's fc1..fc3 against fc3 alone."""
    resnet = build_model("resnet50", 16, width=1 / 16, input_size=32)
    dense = {layer for layer, leaves in resnet.abstract_params.items()
             if len(leaves.get("kernel", np.zeros((1, 1, 1))).shape) == 2}
    assert dense == {"fc"}
    assert state_lib.trained_layers(resnet, "fc") == state_lib.trained_layers(resnet, "last") \
        == {"fc"}
    vgg = build_model("vgg11", 16, width=1 / 16, input_size=32)
    assert state_lib.trained_layers(vgg, "fc") == {"fc1", "fc2", "fc3"}
    assert state_lib.trained_layers(vgg, "last") == {"fc3"}
    for mode in ("all", "fc", "last"):
        assert step_lib.updates_stats(types.SimpleNamespace(finetune=mode)) == (mode == "all")


@pytest.mark.parametrize("mode,trained_layers", [("last", {"fc"}), ("all", None)])
def test_finetune_modes_freeze_layers_and_statistics(trained, tmp_path, mode, trained_layers):
    """last (= fc, above): only fc moves, every other layer and every BatchNorm statistic stays
    bit-identical; all: every layer and every statistic moves."""
    wd = tmp_path / mode
    proc = run_train(wd, *RESNET, f"--config.init_from={trained}", f"--config.finetune={mode}",
                     "--config.total_steps=6", "--config.eval_every_steps=6",
                     "--config.checkpoint_every_steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = read_state(trained, 40), read_state(wd, 6)
    assert set(after["params"]) == set(before["params"])
    for layer, leaves in after["params"].items():
        for name, x in leaves.items():
            trained_layer = trained_layers is None or layer in trained_layers
            assert np.array_equal(x, before["params"][layer][name]) != trained_layer, \
                (mode, layer, name)
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["stats"]),
                                                 jax.tree.leaves(before["stats"]), strict=True)]
    assert same and all(same) == (mode != "all") and any(same) == (mode != "all")
