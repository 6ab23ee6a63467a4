"""Validation discipline: no decision sees the reported split. Every experiment config keeps its
validation, training and reported splits apart; the stratified holdout is disjoint, stratified
and the same on every process; the §5.1 plateau schedule divides the rate exactly when it
should, on the benchmark's own metric, and only from the validation split."""

import glob
import json
import hashlib
import importlib.util
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_train, tiny_config
from deep_image import paper_benchmarks
from deep_image import config as config_lib
from deep_image.data import pipeline, sources, splits
from deep_image.data.errors import DataError
from deep_image.evaluation import metrics
from deep_image.training import state as state_lib


def _experiments():
    out = []
    for path in sorted(glob.glob(f"{REPO}/experiments/*.py")):
        name = os.path.basename(path)[:-3]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.append((name, module.get_config()))
    return out


def _members(split_name, labels):
    """The example indices a split name selects, read here from data/splits.py's documented
    rule without its code: SPLIT is every example; per class (its examples in index order,
    shuffled by numpy's permutation seeded with (20150506, class id)), SPLIT[:N] keeps the
    first min(N, n), SPLIT[:P%] the first round(n P / 100) but at least one and all but one
    (a class of one: round(P / 100)), and SPLIT[N:], SPLIT[P%:] the rest."""
    m = re.fullmatch(r"[^\[\]]+\[([0-9.]*%?):([0-9.]*%?)\]", split_name)
    if m is None:
        return set(range(len(labels)))
    head, text = (True, m[2]) if m[2] else (False, m[1])
    labels = list(labels)
    out = set()
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        n = len(members)
        shuffled = [members[j] for j in np.random.default_rng((20150506, c)).permutation(n)]
        if text.endswith("%"):
            k = round(n * float(text[:-1]) / 100)
            k = min(max(k, 1), n - 1) if n >= 2 else k
        else:
            k = min(int(text), n)
        out |= set(shuffled[:k] if head else shuffled[k:])
    return out


EXPERIMENTS = _experiments()


@pytest.mark.parametrize("name,config", EXPERIMENTS, ids=[n for n, _ in EXPERIMENTS])
def test_no_experiment_decides_on_or_trains_on_its_reported_split(name, config, tmp_path):
    d = config.data
    assert d.eval_split, name
    # On a dataset's own splits, with every class of 50 examples, as sets of examples: the
    # reported split shares nothing with the split the schedule watches or the one trained on.
    labels = np.repeat(np.arange(5), 50)
    base = {splits.parse(n).base for n in (d.train_split, d.val_split or d.train_split,
                                           d.eval_split)}
    assert splits.parse(d.eval_split).base not in {splits.parse(d.train_split).base} | (
        {splits.parse(d.val_split).base} if d.val_split else set()), name
    if len(base) < 3:   # a holdout of the training split: check the examples themselves
        train = _members(d.train_split, labels)
        val = _members(d.val_split, labels) if d.val_split else set()
        assert not train & val, name
        assert val, f"{name}: the holdout is empty"
    if name in ("aircraft_all",):
        assert (d.train_split, d.val_split) == ("train", "val")   # official split, not trainval
    if name != "synthetic":
        # every paper benchmark has a validation split for the §5.1 schedule
        assert d.val_split, name
    if config.init_from:
        config.init_from = str(tmp_path)     # the pre-trained run does not exist here
    config_lib.check(config)


def test_benchmark_table_names_its_validation_splits():
    for name, (_, train, val, test, headline) in paper_benchmarks.BENCHMARKS.items():
        assert val and not splits.overlaps(val, test) and not splits.overlaps(val, train), name
        assert headline in metrics.HEADLINE_NAMES


@pytest.mark.parametrize("overrides,words", [
    ({"data__val_split": "test"}, "overlaps the reported eval_split"),
    ({"data__val_split": "test[:50%]"}, "overlaps the reported eval_split"),
    ({"data__train_split": "test"}, "the reported split must be unseen"),
    ({"data__val_split": "train[:10%]"}, "overlaps train_split='train'"),
    ({"data__val_split": "train[:10%]", "data__train_split": "train[5%:]"}, "overlaps"),
    ({"data__eval_split": "validation", "data__val_split": "validation"}, "overlaps"),
    ({"data__val_split": "train[:1.2.3]"}, "is not a number"),
    ({"data__val_split": "train[:x]"}, "write SPLIT[:N]"),
    ({"data__val_split": "train[5:10]"}, "write SPLIT[:N]"),
])
def test_a_config_that_decides_on_the_wrong_split_is_refused(overrides, words):
    with pytest.raises((config_lib.ConfigError, DataError), match=words.replace("[", r"\[")):
        config_lib.check(tiny_config(**overrides))


def test_refusal_is_one_line_and_writes_nothing(tmp_path):
    proc = run_train(tmp_path / "w", "--config.data.val_split=test")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: config.data.val_split='test'")
    assert not (tmp_path / "w").exists()


def test_overlaps_of_slices():
    assert not splits.overlaps("train[:10%]", "train[10%:]")
    assert splits.overlaps("train[:10%]", "train[5%:]")
    assert not splits.overlaps("train[:10]", "train[10:]")
    assert splits.overlaps("train[:10]", "train[10%:]")          # other units: assume so
    assert splits.overlaps("train", "train[:10%]")
    assert splits.overlaps("trainval", "val") and splits.overlaps("train", "trainval")
    assert not splits.overlaps("train", "test")


# Classes 0-4 of 3, 7, 2, 1 and 16 examples, in no order; per class, how many of them each
# prefix holds, by hand: 10%: 0.3, 0.7, 0.2 -> 0 -> at least 1, 1 example -> round(0.1) = 0,
# 1.6 -> 2; 40%: 1.2, 2.8, 0.8 -> 1 (and all but one of 2), 0.4 -> 0, 6.4; 60%: 1.8, 4.2, 1.2,
# 0.6 -> 1 (the class of one goes to the head), 9.6; 2: two, but the one of class 3.
HAND_LABELS = [4, 1, 0, 4, 2, 1, 4, 4, 3, 1, 4, 0, 4, 1, 4, 4, 2, 1, 4, 4, 1, 0, 4, 4, 4, 1,
               4, 4, 4]
HAND_HEADS = {"train[:10%]": [1, 1, 1, 0, 2], "train[:40%]": [1, 3, 1, 0, 6],
              "train[:60%]": [2, 4, 1, 1, 10], "train[:2]": [2, 2, 2, 1, 2]}


@pytest.mark.parametrize("head", sorted(HAND_HEADS))
def test_holdout_slices_of_a_hand_written_label_list(head):
    labels = np.array(HAND_LABELS)
    assert np.bincount(labels).tolist() == [3, 7, 2, 1, 16]
    tail = head.replace("[:", "[").replace("]", ":]")            # train[:10%] -> train[10%:]
    got = {n: splits.stratified_indices(labels, splits.parse(n)) for n in (head, tail)}
    assert np.bincount(labels[got[head]], minlength=5).tolist() == HAND_HEADS[head]
    for name, indices in got.items():         # the very examples the rule, written out, picks
        assert indices.tolist() == sorted(_members(name, labels)), name
        assert list(indices) == sorted(set(indices.tolist()))  # ascending, no repeats
    assert sorted(got[head].tolist() + got[tail].tolist()) == list(range(len(labels)))
    # a source's slice serves those examples, with their labels
    class Listed:
        class_names = [str(c) for c in range(5)]

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"index": i, "label": int(labels[i])}

        def labels(self):
            return labels
    sliced = splits.select(Listed(), head)
    assert [sliced[j]["index"] for j in range(len(sliced))] == sorted(_members(head, labels))
    assert sliced.labels().tolist() == [sliced[j]["label"] for j in range(len(sliced))]


def test_holdout_is_disjoint_stratified_and_fixed():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 1000)
    head = splits.stratified_indices(labels, splits.parse("train[:10%]"))
    tail = splits.stratified_indices(labels, splits.parse("train[10%:]"))
    assert set(head.tolist()) == _members("train[:10%]", labels)
    assert set(tail.tolist()) == _members("train[10%:]", labels)
    assert not set(head) & set(tail) and len(head) + len(tail) == 1000
    for c in range(7):
        n = int((labels == c).sum())
        assert int((labels[head] == c).sum()) == round(n * 0.1)      # stratified, per class
    counted = splits.stratified_indices(labels, splits.parse("train[:10]"))
    assert np.bincount(labels[counted]).tolist() == [10] * 7
    # a function of the labels alone: the same again, whatever the run's seed
    assert np.array_equal(head, splits.stratified_indices(labels, splits.parse("train[:10%]")))
    # and a permutation, not the first examples of each class
    assert not np.array_equal(head, np.sort(np.concatenate(
        [np.flatnonzero(labels == c)[:round((labels == c).sum() * 0.1)] for c in range(7)])))


def _digests(data):
    return sorted(hashlib.sha1(img.tobytes()).hexdigest() for b in data
                  for img, keep in zip(b["image"], b["mask"]) if keep)


def test_holdout_is_the_same_on_every_process_count():
    config = tiny_config(data__synthetic__train_size=120, eval_batch_size=8)
    val = sources.get_source(config.data, "train[:10%]")
    train = sources.get_source(config.data, "train[10%:]")
    assert len(val) + len(train) == 120
    labels = sources.get_source(config.data, "train").labels()
    assert np.array_equal(val.labels(), [val[i]["label"] for i in range(len(val))])
    # 10% per class, but at least one of every class that has two or more
    assert np.bincount(val.labels(), minlength=16).tolist() == [
        min(max(round(n * 0.1), 1), n - 1) if n >= 2 else 0
        for n in np.bincount(labels, minlength=16)]
    one = _digests(pipeline.EvalData(val, config, cache=False))
    two = sorted(sum((_digests(pipeline.EvalData(
        sources.get_source(config.data, "train[:10%]"), config, process_index=p,
        process_count=2, cache=False)) for p in range(2)), []))
    assert one == two and len(one) == len(val)
    assert not set(one) & set(_digests(pipeline.EvalData(train, config, cache=False)))


# ----------------------------------------------------------------------------- §5.1 schedule

def _reference_schedule(errors, *, factor, patience, cooldown, rtol, min_scale):
    """Reduce-on-plateau written out by hand: an evaluation improves when its error is below
    best * (1 - rtol); after `patience` evaluations without improvement the scale is
    multiplied by `factor` (never below `min_scale`), then `cooldown` evaluations are ignored."""
    scale, best, bad, cool, out = 1.0, float("inf"), 0, 0, []
    for e in errors:
        improved = e < (1 - rtol) * best
        if improved:
            best, bad = e, 0
        else:
            bad += 1
        if cool > 0:
            cool, bad = cool - 1, 0
        elif bad == patience:
            scale, bad, cool = max(scale * factor, min_scale), 0, cooldown
        out.append(scale)
    return out


def _schedule(errors, **kw):
    config = tiny_config(schedule=kw)
    plateau_tx = state_lib.make_plateau(config.schedule)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params={}, stats={},
                                 opt_state=(), plateau=plateau_tx.init({}),
                                 rng=jnp.zeros(2, jnp.uint32))
    out = []
    for e in errors:
        state = state_lib.update_plateau(plateau_tx, state, e)
        out.append(float(state.plateau.scale))
    return out


def test_rate_divided_by_ten_after_patience_evaluations_without_improvement():
    errors = [0.50, 0.40, 0.45, 0.41, 0.30, 0.31, 0.32, 0.33, 0.29]
    got = _schedule(errors, patience=2, cooldown=0, rtol=1e-4, min_scale=1e-3)
    # evals 3-4 do not improve on 0.40 -> divided at eval 4; 6-7 not on 0.30 -> at eval 7
    assert got == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


@pytest.mark.parametrize("kw", [
    dict(patience=1, cooldown=2, rtol=1e-4, min_scale=1e-3),
    dict(patience=2, cooldown=1, rtol=0.1, min_scale=0.05),     # floor: 1 -> 0.1 -> 0.05
    dict(patience=3, cooldown=0, rtol=0.05, min_scale=1e-4),
])
def test_schedule_matches_a_hand_written_reduce_on_plateau(kw):
    errors = [0.9, 0.8, 0.8, 0.85, 0.7, 0.7, 0.75, 0.69, 0.7, 0.71, 0.72, 0.73, 0.74, 0.6, 0.6]
    got = _schedule(errors, **kw)
    assert got == pytest.approx(_reference_schedule(errors, factor=0.1, **kw))
    assert min(got) >= kw["min_scale"] - 1e-9 and len(set(got)) >= 2


def test_schedule_improves_in_the_metric_direction():
    # accuracy up is an improvement (error down); top-5 error down is an improvement
    assert metrics.decision_error({"val/top1": 0.9}, "val", "top1") == pytest.approx(0.1)
    assert metrics.decision_error({"val/mean_per_class": 0.7}, "val",
                                  "mean_per_class") == pytest.approx(0.3)
    assert metrics.decision_error({"val/top5_error": 0.2}, "val", "top5_error") == 0.2
    rising = [metrics.decision_error({"val/mean_per_class": a}, "val", "mean_per_class")
              for a in (0.5, 0.6, 0.7)]
    assert _schedule(rising, patience=1, cooldown=0, rtol=1e-4, min_scale=1e-3) == [1, 1, 1]


def test_fixed_decay_steps_without_a_validation_split():
    config = tiny_config(data__val_split="", schedule__decay_steps=(3, 5))
    plateau = state_lib.make_plateau(config.schedule)
    rates = []
    for step in range(7):
        state = state_lib.TrainState(step=jnp.int32(step), params={}, stats={},
                                     opt_state=(), plateau=plateau.init({}),
                                     rng=jnp.zeros(2, jnp.uint32))
        rates.append(float(state_lib.learning_rate(config, state)))
    lr = config.optimizer.learning_rate
    assert rates == pytest.approx([lr] * 3 + [lr / 10] * 2 + [lr / 100] * 2)


def test_no_validation_split_means_no_plateau_decision(tmp_path):
    """val_split='' never looks at the reported split: the rate stays constant even when the
    plateau would have divided it (rtol=1: nothing counts as an improvement)."""
    proc = run_train(tmp_path / "w", "--config.data.val_split=", "--config.schedule.rtol=1.0",
                     "--config.schedule.patience=1", "--config.eval_every_steps=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
    assert {r["schedule/lr_scale"] for r in rows if "schedule/lr_scale" in r} == {1.0}
    assert not any(k.startswith("val/") for r in rows for k in r)
    with_val = run_train(tmp_path / "v", "--config.schedule.rtol=1.0",
                         "--config.schedule.patience=1", "--config.eval_every_steps=10")
    rows = [json.loads(l) for l in open(tmp_path / "v" / "metrics.jsonl")]
    scales = [r["schedule/lr_scale"] for r in rows if "schedule/lr_scale" in r]
    assert with_val.returncode == 0 and scales == pytest.approx([0.1, 0.01, 0.001, 0.001])
    recorded = paper_benchmarks.recorded_decay_steps(str(tmp_path / "v"))
    assert recorded == ((10, 20, 30), 40)


@pytest.mark.parametrize("size,ok", [(0, True), (8, True), (64, True), (1, False), (7, False),
                                     (-1, False)])
def test_a_capture_size_below_8_pixels_is_refused(size, ok):
    """config.data.capture_size: 0 (images as stored) or a side of at least 8 pixels."""
    config = tiny_config(data__capture_size=size)
    if ok:
        config_lib.check(config)
    else:
        with pytest.raises(config_lib.ConfigError, match="capture_size"):
            config_lib.check(config)
