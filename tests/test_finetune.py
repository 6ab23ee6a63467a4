"""Fine-tuning (§5): init_from another run, the classifier re-initialized for a new class count,
and frozen layers bit-identical after training with no optimizer state."""


import jax
import numpy as np
import pytest

from conftest import read_state, run_train




@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pretrained")
    proc = run_train(wd, "--config.total_steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(wd)


LAYERS = {"conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1",
          "conv5_2", "fc1", "fc2", "fc3"}


@pytest.mark.parametrize("mode,trained", [("last", {"fc3"}), ("fc", {"fc1", "fc2", "fc3"}),
                                          ("all", LAYERS)])
def test_finetune_modes_train_exactly_their_layers(pretrained, tmp_path, mode, trained):
    """Same class count, so every layer (the classifier too) starts from the pre-trained
    weights: trained layers must move, frozen ones stay bit-identical."""
    wd = tmp_path / mode
    proc = run_train(wd, f"--config.init_from={pretrained}", f"--config.finetune={mode}",
                     "--config.total_steps=10", "--config.eval_every_steps=10",
                     "--config.checkpoint_every_steps=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized from" in proc.stderr and "re-initializing" not in proc.stderr
    before, after = read_state(pretrained, 20)["params"], read_state(wd, 10)["params"]
    assert set(after) == LAYERS
    for layer in after:
        for name in after[layer]:
            a, b = after[layer][name], before[layer][name]
            assert a.shape == b.shape
            assert np.array_equal(a, b) != (layer in trained), (mode, layer, name)
            # trained layers moved from the pre-trained weights, not from a fresh init
            assert np.linalg.norm(a - b) < 0.5 * np.linalg.norm(b) + 1e-3, (layer, name)
    # Frozen layers carry no optimizer state: the momentum trace covers trained layers only.
    opt_leaves = jax.tree_util.tree_flatten_with_path(read_state(wd, 10)["opt_state"])[0]
    layers_with_state = {str(p[-2].key) for p, _ in opt_leaves if len(p) >= 2
                         and hasattr(p[-2], "key")}
    assert layers_with_state == trained


def test_new_class_count_reinitializes_only_the_classifier(pretrained, tmp_path):
    wd = tmp_path / "four"
    proc = run_train(wd, f"--config.init_from={pretrained}", "--config.finetune=last",
                     "--config.data.synthetic.num_classes=4", "--config.total_steps=10",
                     "--config.eval_every_steps=10", "--config.checkpoint_every_steps=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "re-initializing the classifier fc3/kernel" in proc.stderr
    before, after = read_state(pretrained, 20)["params"], read_state(wd, 10)["params"]
    assert after["fc3"]["kernel"].shape == (before["fc3"]["kernel"].shape[0], 4)
    assert all(np.array_equal(before[l][n], after[l][n]) for l in after if l != "fc3"
               for n in after[l])


def test_other_classes_of_the_same_count_reinitialize_the_classifier(pretrained, tmp_path):
    proc = run_train(tmp_path / "b", f"--config.init_from={pretrained}",
                     "--config.data.synthetic.species=B", "--config.total_steps=2",
                     "--config.eval_every_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "re-initializing the classifier fc3/kernel: the pre-trained model has other " \
           "classes" in proc.stderr


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
