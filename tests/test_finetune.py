"""Fine-tuning (§5): init_from another run, the classifier re-initialized for a new class count,
frozen layers bit-identical after training with no optimizer state, a stopped fine-tuning run
resumed exactly (resume wins over init_from), and the FGVC-Aircraft retrain on trainval with
the schedule its train/val run chose."""

import importlib.util
import json
import shutil
import types

import jax
import numpy as np
import pytest

from conftest import REPO, assert_trees_equal, losses, read_state, run_train
from deep_image import config as config_lib
from deep_image import paper_benchmarks
from deep_image.training import loop
from deep_image.training import state as state_lib


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pretrained")
    proc = run_train(wd, "--config.total_steps=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(wd)


FC_RUN = ("--config.finetune=fc", "--config.total_steps=20", "--config.eval_every_steps=10",
          "--config.checkpoint_every_steps=10")


@pytest.fixture(scope="module")
def fc_run(pretrained, tmp_path_factory):
    """finetune=fc from `pretrained`, 20 steps uninterrupted (checkpoints 10 and 20)."""
    wd = tmp_path_factory.mktemp("fc")
    proc = run_train(wd, f"--config.init_from={pretrained}", *FC_RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialized from" in proc.stderr
    return wd


LAYERS = {"conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1",
          "conv5_2", "fc1", "fc2", "fc3"}


@pytest.mark.parametrize("mode,trained", [("last", {"fc3"}), ("fc", {"fc1", "fc2", "fc3"}),
                                          ("all", LAYERS)])
def test_finetune_modes_train_exactly_their_layers(request, pretrained, tmp_path, mode, trained):
    """Same class count, so every layer (the classifier too) starts from the pre-trained
    weights: trained layers must move, frozen ones stay bit-identical. VGG is where the modes
    differ: fc trains fc1..fc3, last only fc3 (ResNet has one FC layer: tests/test_resnet.py)."""
    if mode == "fc":     # the fixture's first 10 steps are this run
        wd = request.getfixturevalue("fc_run")
    else:
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


def test_the_same_classes_in_another_order_reinitialize_the_classifier(tmp_path, caplog):
    """Class k of the pre-trained classifier must be class k here: a checkpoint whose class
    list names this dataset's 16 classes with two of them swapped is another labelling, so its
    classifier is re-initialized, as for other classes (in-process: weights written, as
    tools/import_weights writes them, instead of trained)."""
    import logging

    from deep_image import models
    from deep_image.data.synthetic import class_names
    from deep_image.training.checkpoint import write_weights
    from conftest import tiny_config

    names = class_names(16)
    swapped = [names[1], names[0]] + names[2:]
    config = tiny_config(total_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    model = models.build(config.model, 16, config.data.crop)
    params, stats = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(0)))
    write_weights(str(tmp_path / "pre"), params, stats, swapped)
    config.init_from = str(tmp_path / "pre")
    with caplog.at_level(logging.WARNING):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert "re-initializing the classifier fc3/kernel: the pre-trained model has other " \
           "classes than this dataset" in caplog.text


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


def test_a_stopped_finetuning_run_resumes_exactly_without_a_second_warm_start(
        pretrained, fc_run, tmp_path):
    """The fc run stopped after its checkpoint 10 (a copy, later checkpoints set aside with
    --resume_step) and rerun with the same command: it resumes from its own checkpoint, not
    from init_from again (which would put the pre-trained fc weights back over the 10 trained
    steps), and ends bitwise where the uninterrupted run ended."""
    moved = read_state(fc_run, 10)["params"]["fc1"]["kernel"]
    assert not np.array_equal(moved, read_state(pretrained, 20)["params"]["fc1"]["kernel"])
    wd = tmp_path / "resumed"
    shutil.copytree(fc_run, wd)
    proc = run_train(wd, f"--config.init_from={pretrained}", *FC_RUN, "--resume_step=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = [l for l in proc.stderr.splitlines() if "resumed from" in l]
    assert resumed and resumed[0].endswith("at step 10"), proc.stderr[-3000:]
    assert "initialized from" not in proc.stderr
    assert_trees_equal(read_state(fc_run, 20), read_state(wd, 20))
    assert losses(wd) == losses(fc_run)


# ------------------------------------------------ FGVC-Aircraft: retrain on train+val

def _aircraft_config(arg=None):
    spec = importlib.util.spec_from_file_location("aircraft_all",
                                                  f"{REPO}/experiments/aircraft_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# A train/val run's metrics.jsonl: the plateau scale of each evaluation (divided at 150 and
# at 250, then held at its floor), training records between, and a last record at step 310
# (the run stopped there). Known by hand: decays (150, 250), 310 steps.
TRAINVAL_METRICS = [
    {"step": 25, "train/loss": 2.5, "train/lr": 0.01},
    {"step": 50, "train/loss": 2.1, "train/lr": 0.01},
    {"step": 50, "val/headline": 0.30, "schedule/lr_scale": 1.0},
    {"step": 100, "val/headline": 0.40, "schedule/lr_scale": 1.0},
    {"step": 150, "val/headline": 0.40, "schedule/lr_scale": 0.1},
    {"step": 200, "val/headline": 0.45, "schedule/lr_scale": 0.1},
    {"step": 250, "val/headline": 0.45, "schedule/lr_scale": 0.01},
    {"step": 300, "val/headline": 0.45, "schedule/lr_scale": 0.01},
    {"step": 310, "train/loss": 1.2, "train/lr": 0.0001},
]


def test_retrain_on_trainval_replays_the_train_val_run(tmp_path):
    trainval_run = tmp_path / "aircraft_all"
    trainval_run.mkdir()
    (trainval_run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in TRAINVAL_METRICS))
    assert paper_benchmarks.recorded_decay_steps(str(trainval_run)) == ((150, 250), 310)

    first, retrain = _aircraft_config(), _aircraft_config(f"trainval={trainval_run}")
    # trained on train+val, no validation split (so no plateau decision), the train/val run's
    # decays and length; the reported split and everything else as the train/val run had it
    assert (first.data.train_split, first.data.val_split) == ("train", "val")
    assert retrain.data.train_split == "trainval" and retrain.data.val_split == ""
    assert tuple(retrain.schedule.decay_steps) == (150, 250) and retrain.total_steps == 310
    assert retrain.data.eval_split == first.data.eval_split == "test"
    differs = {k for k, v in _flat(retrain.to_dict()).items() if _flat(first.to_dict())[k] != v}
    assert differs == {"data.train_split", "data.val_split", "schedule.decay_steps",
                       "total_steps"}, differs
    assert loop.total_steps(retrain, train_size=6_667) == 310      # not num_epochs' count
    retrain.init_from = str(tmp_path)       # check() wants the pre-trained run to exist
    config_lib.check(retrain)
    # the rate of each step: divided by ten (§5.1) from the step after each recorded decision,
    # as the train/val run's plateau did (its scale at step 150 applied from step 151 on)
    assert retrain.schedule.factor == 0.1 and retrain.schedule.warmup_steps < 100
    base = retrain.optimizer.learning_rate
    rate = {steps_taken: float(state_lib.learning_rate(retrain, types.SimpleNamespace(
                step=np.int32(steps_taken), plateau=types.SimpleNamespace(scale=1.0))))
            for steps_taken in (149, 150, 249, 250, 309)}
    np.testing.assert_allclose([rate[s] for s in (149, 150, 249, 250, 309)],
                               [base, base / 10, base / 10, base / 100, base / 100], rtol=1e-6)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_retrain_on_trainval_needs_the_train_val_run(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="train the train/val run first"):
        _aircraft_config(f"trainval={tmp_path / 'never_ran'}")
