"""Fine-tuning (§5): init_from another run, the classifier re-initialized for a new class count,
and frozen layers bit-identical after training with no optimizer state."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_train


def _state(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                           "state"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pretrained")
    proc = run_train(wd, "--config.total_steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(wd)


@pytest.mark.parametrize("mode,trained", [("last", {"fc3"}), ("fc", {"fc1", "fc2", "fc3"})])
def test_frozen_layers_stay_bit_identical(pretrained, tmp_path, mode, trained):
    wd = tmp_path / mode
    # 4 classes instead of 16: the classifier is re-initialized, the log says so.
    proc = run_train(wd, f"--config.init_from={pretrained}", f"--config.finetune={mode}",
                     "--config.data.synthetic.num_classes=4", "--config.total_steps=10",
                     "--config.eval_every_steps=10", "--config.checkpoint_every_steps=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "re-initializing the classifier fc3/kernel" in proc.stderr
    before, after = _state(pretrained, 20)["params"], _state(wd, 10)["params"]
    assert after["fc3"]["kernel"].shape[-1] == 4
    for layer in after:
        for name in after[layer]:
            same = np.array_equal(before[layer][name], after[layer][name])
            if layer in trained:
                assert not same, (layer, name)
            else:
                assert same, (layer, name)
    # Frozen layers carry no optimizer state: the momentum trace covers trained layers only.
    opt_leaves = jax.tree_util.tree_flatten_with_path(_state(wd, 10)["opt_state"])[0]
    layers_with_state = {str(p[-2].key) for p, _ in opt_leaves if len(p) >= 2
                         and hasattr(p[-2], "key")}
    assert layers_with_state == trained


def test_finetune_all_loads_every_layer(pretrained, tmp_path):
    proc = run_train(tmp_path / "all", f"--config.init_from={pretrained}",
                     "--config.total_steps=5", "--config.eval_every_steps=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized from" in proc.stderr and "re-initializing" not in proc.stderr


@pytest.mark.parametrize("overrides,message", [
    (("--config.finetune=last",), "needs config.init_from"),
    (("--config.init_from=/no/such/run",), "is not a directory"),
    (("--config.finetune=some",), "config.finetune='some'"),
])
def test_bad_finetune_settings(tmp_path, overrides, message):
    proc = run_train(tmp_path / "w", *overrides)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_init_from_a_different_model_is_a_clear_error(pretrained, tmp_path):
    proc = run_train(tmp_path / "w", f"--config.init_from={pretrained}",
                     "--config.model.width=0.125")
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 2 and lines and "has shape" in lines[0], proc.stderr[-2000:]
