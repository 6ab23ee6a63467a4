"""Which split the §5.1 schedule reads, and when it starts deciding: real training runs
(training.loop.train_and_evaluate, in-process) on a test-only source whose splits carry their
own answer, the logged decisions (schedule/lr_scale in metrics.jsonl) replayed in numpy.

The source `wired` (registered in sources.SOURCES for the test only) serves:
- CONSTANT: 48 copies of one image with labels 0..15 three times each. Every image gets the
  same prediction, so top-1 is exactly 3/48 = 1/16 whatever the model: its error never
  improves after the first evaluation, and on it reduce-on-plateau with patience 1 divides
  the rate at every evaluation after the first.
- the 32 training images themselves, with their true labels, as a split the model memorizes:
  its accuracy rises during training.
"""

import numpy as np
import pytest

from conftest import records, reference_plateau, tiny_config
from deep_image.data import sources, synthetic
from deep_image.training import loop

NUM_CLASSES = 16
CONSTANT_SIZE = 48


class ConstantSplit:
    """One image, repeated; labels cycle over every class (top-1 is 1/16 for any model)."""

    def __init__(self, image, class_names):
        self.image, self.class_names = image, class_names

    def __len__(self):
        return CONSTANT_SIZE

    def __getitem__(self, i):
        return {"image": self.image, "label": int(i) % NUM_CLASSES}

    def labels(self):
        return np.arange(CONSTANT_SIZE) % NUM_CLASSES


def _register(monkeypatch, roles):
    """sources.SOURCES['wired']: split name -> 'train' (the training images) or 'constant'."""
    def make(data_config, split):
        spec = sources.synthetic_spec(data_config)
        if roles[split] == "constant":
            image = synthetic.SynthBirds(spec, "val")[0]["image"]
            return ConstantSplit(image, synthetic.class_names(spec.num_classes, spec.species))
        return synthetic.SynthBirds(spec, roles[split])
    monkeypatch.setitem(sources.SOURCES, "wired", make)


def _config(**overrides):
    return tiny_config(data__source="wired", data__synthetic__train_size=32,
                       data__augment__crop=False, data__augment__flip=False,
                       model__dropout_rate=0.0, checkpoint_every_steps=1000,
                       schedule=dict(patience=1, cooldown=0, rtol=1e-4, min_scale=1e-4,
                                     factor=0.1), **overrides)


PLATEAU = dict(patience=1, cooldown=0, rtol=1e-4, min_scale=1e-4, factor=0.1)


def _evaluations(workdir):
    return [r for r in records(workdir) if "schedule/lr_scale" in r]


def test_plateau_decisions_follow_the_validation_split_not_the_reported_one(monkeypatch,
                                                                           tmp_path):
    """val = the memorized training images (error falls), reported = CONSTANT (error never
    improves): the logged scales are the replay of the val errors, which differs from the
    replay of the reported errors."""
    _register(monkeypatch, {"train": "train", "val": "train", "test": "constant"})
    config = _config(total_steps=50, eval_every_steps=10, optimizer__learning_rate=0.03)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    evals = _evaluations(tmp_path / "run")
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50]
    assert all(r["eval/top1"] == pytest.approx(1 / NUM_CLASSES) for r in evals)   # its answer
    assert all(r["eval/examples"] == CONSTANT_SIZE for r in evals)
    from_val = reference_plateau([1 - r["val/top1"] for r in evals], **PLATEAU)
    from_reported = reference_plateau([1 - r["eval/top1"] for r in evals], **PLATEAU)
    assert from_reported == pytest.approx([1, 0.1, 0.01, 1e-3, 1e-4])
    assert from_val != pytest.approx(from_reported), (
        "the splits did not disagree: val never improved", [r["val/top1"] for r in evals])
    assert [r["schedule/lr_scale"] for r in evals] == pytest.approx(from_val)
    # and the rate of the next steps is the base rate times the scale just decided
    lr = {r["step"]: r["train/lr"] for r in records(tmp_path / "run") if "train/lr" in r}
    for r in evals[:-1]:
        assert lr[r["step"] + 5] == pytest.approx(0.03 * r["schedule/lr_scale"], rel=1e-5)


def test_no_decision_at_or_before_decide_after_step(monkeypatch, tmp_path):
    """val = CONSTANT: every decision after the first divides, so the logged scales show
    exactly which evaluations decided. decide_after_step=10, evaluations at 5, 10, 15, 20:
    only 15 and 20 decide."""
    _register(monkeypatch, {"train": "train", "val": "constant", "test": "constant"})
    config = _config(total_steps=20, eval_every_steps=5, curves_on_eval_split=False,
                     schedule__decide_after_step=10)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    evals = _evaluations(tmp_path / "run")
    steps = [r["step"] for r in evals]
    assert steps == [5, 10, 15, 20]
    errors = [1 - r["val/top1"] for r in evals]
    assert errors == pytest.approx([1 - 1 / NUM_CLASSES] * 4)
    want = [1.0] * 2 + reference_plateau(errors[2:], **PLATEAU)
    assert want == pytest.approx([1, 1, 1, 0.1])
    # deciding from step 10 on (>=), or from the start, would give other scales
    assert want != pytest.approx([1.0] + reference_plateau(errors[1:], **PLATEAU))
    assert want != pytest.approx(reference_plateau(errors, **PLATEAU))
    assert [r["schedule/lr_scale"] for r in evals] == pytest.approx(want)


def test_plateau_off_keeps_validation_logged_and_the_rate_on_its_fixed_steps(monkeypatch,
                                                                             tmp_path):
    """val = CONSTANT, which would divide at every evaluation after the first: with
    schedule.plateau=False nothing divides on it, validation is still evaluated and logged,
    and the rate is the base rate divided by ten at each of decay_steps (by hand)."""
    _register(monkeypatch, {"train": "train", "val": "constant", "test": "constant"})
    config = _config(total_steps=20, eval_every_steps=5, curves_on_eval_split=False,
                     optimizer__learning_rate=0.03)
    config.schedule.plateau = False
    config.schedule.decay_steps = (8, 14)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    evals = _evaluations(tmp_path / "run")
    assert [r["step"] for r in evals] == [5, 10, 15, 20]
    assert all(r["val/top1"] == pytest.approx(1 / NUM_CLASSES) for r in evals)
    assert [r["schedule/lr_scale"] for r in evals] == [1.0] * 4
    lr = {r["step"]: r["train/lr"] for r in records(tmp_path / "run") if "train/lr" in r}
    # a logged rate is the mean over the steps since the last log; the update that makes step
    # t is taken at state.step = t - 1, divided once per decay step it has reached
    expected, previous = {}, 0
    for step in sorted(lr):
        window = range(previous + 1, step + 1)
        expected[step] = np.mean([0.03 * 0.1 ** sum(t - 1 >= d for d in (8, 14))
                                  for t in window])
        previous = step
    assert lr == pytest.approx(expected, rel=1e-5)
    assert lr[max(lr)] == pytest.approx(0.03 * 0.01, rel=1e-5)       # both divisions
