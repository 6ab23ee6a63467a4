"""The claims study (python -m deep_image.reproduce). The statistics against scipy and hand
computations (t interval, paired t test, TOST, Holm); every claim's analysis on fabricated
posteriors whose per-replicate effect is known by construction, giving each of the four
verdicts; the pairing of arms by replicate; the health gate and the plan; the report; and a
toy study end to end, interrupted, resumed, cached, and rerun from a "fresh checkout" (records
kept, checkpoints gone). No real run's verdict is asserted."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import REPO, wait_for
from deep_image.study import claims, design, report, stats
from deep_image.study.runs import Run

# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n,confidence", [(2, 0.95), (3, 0.95), (10, 0.95), (10, 0.9)])
def test_interval_is_scipys_t_interval(n, confidence):
    values = np.random.default_rng(n).uniform(0.7, 0.9, n)
    got = stats.interval(values, confidence)
    lo, hi = scipy_stats.t.interval(confidence, n - 1, loc=np.mean(values),
                                    scale=scipy_stats.sem(values))
    assert (got.mean, got.low, got.high) == pytest.approx((np.mean(values), lo, hi))
    assert got.sd == pytest.approx(np.std(values, ddof=1)) and got.n == n
    assert stats.half_width(got.sd, n, confidence) == pytest.approx((hi - lo) / 2)


def test_one_value_gives_an_unbounded_interval():
    one = stats.interval([0.5])
    assert one.mean == 0.5 and one.low == -np.inf and one.high == np.inf


@pytest.mark.parametrize("seed", range(4))
def test_difference_and_equivalence_p_are_scipys_one_sample_t_tests(seed):
    d = np.random.default_rng(seed).normal(0.01 * seed, 0.02, 10)
    assert stats.difference_p(d) == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    margin = 0.02
    # TOST by hand: both one-sided nulls (mean <= -margin, mean >= +margin) must be rejected
    lower = scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue
    assert stats.equivalence_p(d, margin) == pytest.approx(max(lower, upper))


def test_effects_are_per_replicate_and_need_equal_replicates():
    # replicate i of one arm against replicate i of the other: 0.8 - 0.75, 0.7 - 0.72
    hits = lambda fractions: np.array([[1] * round(100 * f) + [0] * (100 - round(100 * f))
                                       for f in fractions])
    np.testing.assert_allclose(stats.effect_of([(1.0, hits([0.8, 0.7]), "t"),
                                                (-1.0, hits([0.75, 0.72]), "t")]),
                               [0.05, -0.02], atol=1e-12)
    with pytest.raises(ValueError, match="same replicates"):
        stats.effect_of([(1.0, hits([0.8, 0.7]), "t"), (-1.0, hits([0.75]), "t")])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone
    got = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert got == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})
    assert stats.holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})


@pytest.mark.parametrize("mean,p_diff,p_equiv,expected", [
    (0.05, 0.01, 0.9, "reproduced"), (-0.05, 0.01, 0.9, "refuted"),
    (0.001, 0.5, 0.01, "no effect"), (0.03, 0.2, 0.3, "inconclusive"),
    (0.01, 0.01, 0.01, "reproduced"),      # a precise small effect: the difference test first
])
def test_the_four_verdicts(mean, p_diff, p_equiv, expected):
    assert stats.verdict(mean, p_diff, p_equiv) == expected


def test_interval_verdict_reads_the_four_verdicts_off_an_interval():
    m = 0.02
    assert [stats.interval_verdict(lo, hi, m) for lo, hi in
            ((0.01, 0.03), (-0.03, -0.01), (-0.01, 0.015), (-0.01, 0.05))] == \
        ["reproduced", "refuted", "no effect", "inconclusive"]


def test_bootstrap_collapses_without_spread_and_keeps_the_pairing():
    # two arms on the same 50 images, the better one right on 1 more of them in every
    # replicate: every resample (replicates and images, the same images for both arms) has a
    # positive effect only if the pairing survives resampling
    n, reps = 50, 6
    worse = np.zeros((reps, n))
    worse[:, :20] = 1
    better = worse.copy()
    better[:, 20] = 1
    low, high = stats.bootstrap([(1.0, better, "test"), (-1.0, worse, "test")])
    assert 0 < low <= 0.02 <= high
    # unpaired (each arm its own image draw), the same data straddle 0
    low_u, _ = stats.bootstrap([(1.0, better, "one"), (-1.0, worse, "other")])
    assert low_u < 0
    # identical hits everywhere: a point
    same = np.ones((reps, n))
    assert stats.bootstrap([(1.0, same, "t"), (-0.5, same, "t")]) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError, match="group"):
        stats.bootstrap([(1.0, np.ones((2, 3)), "t"), (-1.0, np.ones((2, 4)), "t")])


# ----------------------------------------------------------------------------- fabricated runs
#
# Each fabricated model scores N images of 4 classes; per image its posterior is of one kind
# (probability of the label, of the next class, of each of the two others). Posterior averages
# by hand: right + barely_wrong is right, barely_right + wrong is wrong, barely_wrong +
# barely_wrong is wrong.
CLASSES = 4
KINDS = {"right": (0.75, 0.1, 0.075), "barely_right": (0.4, 0.3, 0.15),
         "barely_wrong": (0.3, 0.4, 0.15), "wrong": (0.1, 0.7, 0.1)}
REPLICATES = [(p, f) for p in (10, 11) for f in (20, 21, 22, 23, 24)]     # 2 x 5


def _posteriors(kinds):
    n = len(kinds)
    labels = np.arange(n) % CLASSES
    p = np.empty((n, CLASSES), np.float32)
    for i, (kind, y) in enumerate(zip(kinds, labels, strict=True)):
        label, following, other = KINDS[kind]
        p[i] = other
        p[i, y], p[i, (y + 1) % CLASSES] = label, following
    return p, labels


def _right(k, n, start=0):
    """A model right on images [start, start + k) of n, barely wrong elsewhere."""
    kinds = np.full(n, "barely_wrong", dtype=object)
    kinds[start:start + k] = "right"
    return kinds


class Fabricated:
    """Fabricated runs: models[(arm, evaluation)] = fn(replicate index, (p, f)) -> kinds."""

    def __init__(self, models, sizes=None):
        self.models, self.sizes, self.loaded = models, sizes, []

    def load(self, name):
        self.loaded.append(name)
        out = {}
        for (arm, evaluation), fn in self.models.items():
            for i, (p, f) in enumerate(REPLICATES):
                if design.run_name(arm, None if arm == "scratch" else p, f) == name:
                    out[f"{evaluation}/probs"], out[f"{evaluation}/labels"] = \
                        _posteriors(fn(i, (p, f)))
        assert out, f"no fabricated run {name}"
        return out

    def results(self):
        return claims.Results(REPLICATES, self.load, self.sizes)


def _const(k, n=100):
    return lambda i, rep: _right(k, n)


def _per_rep(ks, n=100, base=50):
    """Right on base + ks[i] images in replicate i."""
    return lambda i, rep: _right(base + ks[i], n)


# Per-replicate effects in images of 100 (= percentage points), for each verdict.
EFFECTS = {
    "reproduced": [5, 6, 4, 5, 7, 5, 6, 4, 5, 6],
    "refuted": [-5, -6, -4, -5, -7, -5, -6, -4, -5, -6],
    "no effect": [0, 1, -1, 0, 0, 1, -1, 0, 1, -1],
    "inconclusive": [8, -7, 6, -9, 5, -6, 7, -8, 6, -2],
}


def _expected_verdict(effects, margin):
    """stats.RULE restated with scipy's one-sample t tests (one claim: Holm changes nothing)."""
    x = np.asarray(effects, np.float64)
    if scipy_stats.ttest_1samp(x, 0).pvalue < 0.05:
        return "reproduced" if x.mean() > 0 else "refuted"
    lower = scipy_stats.ttest_1samp(x, -margin, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(x, margin, alternative="less").pvalue
    return "no effect" if max(lower, upper) < 0.05 else "inconclusive"


def _a(ks):
    # train all right in both arms; all six right on 50 + k test images, crop+flip on 50:
    # gap(crop+flip) - gap(all six) = test(all six) - test(crop+flip) = k points
    return Fabricated({("cropflip", "train"): _const(100), ("all6", "train"): _const(100),
                       ("cropflip", "test"): _const(50), ("all6", "test"): _per_rep(ks),
                       ("cropflip", "val"): _const(50), ("all6", "val"): _const(50),
                       ("cropflip", "test_shifted"): _const(40),
                       ("all6", "test_shifted"): _const(40)})


def _b(ks):
    return Fabricated({("cropflip", "test_shifted"): _const(40),
                       ("all6", "test_shifted"): _per_rep(ks, base=40),
                       ("cropflip", "test"): _const(60), ("all6", "test"): _const(60)})


def _c(ks):
    # 300 test birds, sizes increasing with the index: the thirds are images 0-99, 100-199,
    # 200-299. The high arm gains k on the small third only: the interaction is k points.
    n = 300

    def high(i, rep):
        kinds = _right(50 + ks[i], n)
        kinds[100:150] = kinds[200:250] = "right"
        return kinds

    def low(i, rep):
        kinds = _right(50, n)
        kinds[100:150] = kinds[200:250] = "right"
        return kinds
    return Fabricated({("all6", "test"): high, ("all6_low", "test"): low},
                      sizes=np.linspace(0.2, 0.7, n))


def _d(ks):
    # high: right on 0-49. low, k >= 0: right on 50..50+k (fewer right than high): the
    # ensemble is right on 0..50+k, k above the better member. k < 0: high barely right on
    # 0..|k| and low wrong there: the ensemble loses those |k| images.
    n = 100

    def high(i, rep):
        kinds = _right(50, n)
        if ks[i] < 0:
            kinds[:-ks[i]] = "barely_right"
        return kinds

    def low(i, rep):
        if ks[i] >= 0:
            return _right(ks[i], n, start=50)
        kinds = _right(0, n)
        kinds[:-ks[i]] = "wrong"
        return kinds
    return Fabricated({("all6", "test_dense"): high, ("all6_low", "test_dense"): low})


def _e(ks):
    models = {("all6", "test"): _const(50), ("all6", "test_dense"): _per_rep(ks)}
    for arm in claims.FULL_NETWORK_ARMS[1:]:
        models[(arm, "test")] = models[(arm, "test_dense")] = _const(30)
    return Fabricated(models)


def _f(ks):
    return Fabricated({("all6", "test"): _per_rep(ks), ("last", "test"): _const(50),
                       ("scratch", "test"): _const(10)})


FABRICATE = {"a": _a, "b": _b, "c": _c, "d": _d, "e": _e, "f": _f}


def _judged(key, fabricated):
    analysis = claims.analyse(claims.CLAIMS[key], fabricated.results())
    return claims.judge({key: analysis})[key]


@pytest.mark.parametrize("key", list(FABRICATE))
@pytest.mark.parametrize("case", list(EFFECTS))
def test_each_claims_analysis_gives_each_verdict_on_runs_with_a_known_answer(key, case):
    ks = EFFECTS[case]
    margin = claims.CLAIMS[key].margin
    expected = _expected_verdict(np.asarray(ks) / 100, margin)
    assert expected == case, "the fixture does not make the case it names"
    a = _judged(key, FABRICATE[key](ks))
    primary = a["comparisons"][0]
    assert primary["primary"] and primary["comparison"].startswith(
        claims.CLAIMS[key].primary.split(" ")[0])
    np.testing.assert_allclose(primary["per_replicate"], np.asarray(ks) / 100, atol=1e-12)
    lo, hi = scipy_stats.t.interval(0.95, len(ks) - 1, loc=np.mean(ks) / 100,
                                    scale=scipy_stats.sem(np.asarray(ks) / 100))
    i = primary["interval"]
    assert (i["low"], i["high"], i["n"]) == pytest.approx((lo, hi, len(REPLICATES)))
    assert a["verdict"] == case
    b_lo, b_hi = primary["bootstrap"]
    assert b_lo <= i["mean"] <= b_hi


def test_claim_c_reads_the_size_thirds_from_the_object_sizes():
    # the same fabricated runs with the sizes reversed: the "small" third is now the last
    # images, where the high arm gains nothing; the gain moves to the large third
    fab = _c(EFFECTS["reproduced"])
    fab.sizes = fab.sizes[::-1].copy()
    a = _judged("c", fab)
    np.testing.assert_allclose(a["comparisons"][0]["per_replicate"],
                               -np.asarray(EFFECTS["reproduced"]) / 100, atol=1e-12)
    assert a["verdict"] == "refuted"


def test_claim_d_control_pairs_two_fine_tuning_seeds_of_one_pre_trained_model():
    fab = _d(EFFECTS["reproduced"])
    claims.analyse(claims.CLAIMS["d"], fab.results())
    pairs = set(fab.loaded)
    # every all6 model of the replicates is loaded, and no model of another pre-training
    assert pairs == {design.run_name(a, p, f) for a in ("all6", "all6_low")
                     for p, f in REPLICATES}
    r = fab.results()
    rows = claims._d(r)
    control = rows[1]
    # the control's ensembles average high models of (p, f) and (p, next f): both right on
    # 0-49 and barely wrong elsewhere, so the ensemble equals its members: effect 0
    np.testing.assert_allclose(control.effect, 0)


@pytest.mark.parametrize("key,arms", [("a", ("cropflip", "all6")), ("f", ("all6", "last")),
                                      ("b", ("cropflip", "all6"))])
def test_swapping_two_arms_flips_the_sign_of_the_effect(key, arms):
    fab = FABRICATE[key](EFFECTS["reproduced"])
    before = claims.analyse(claims.CLAIMS[key], fab.results())["comparisons"][0]
    x, y = arms
    fab.models = {((y if a == x else x if a == y else a), e): fn
                  for (a, e), fn in fab.models.items()}
    after = claims.analyse(claims.CLAIMS[key], fab.results())["comparisons"][0]
    np.testing.assert_allclose(after["per_replicate"], -np.asarray(before["per_replicate"]))


def test_arms_are_paired_by_replicate():
    # replicates differ a lot (base 20..65), the arms within one by +2 or +3: reproduced only
    # if replicate i of one arm meets replicate i of the other
    base = [20, 65, 30, 60, 25, 55, 35, 50, 40, 45]
    gain = [2, 3] * 5
    fab = Fabricated({("all6", "test"): lambda i, r: _right(base[i] + gain[i], 100),
                      ("last", "test"): lambda i, r: _right(base[i], 100),
                      ("scratch", "test"): _const(10)})
    a = _judged("f", fab)
    np.testing.assert_allclose(a["comparisons"][0]["per_replicate"], np.asarray(gain) / 100)
    assert a["verdict"] == "reproduced"
    # the scratch arm has one run per fine-tuning seed, shared by both pre-trained models
    assert sorted({n for n in fab.loaded if n.startswith("scratch")}) == [
        f"scratch_f{f}" for f in (20, 21, 22, 23, 24)]


def test_holm_over_the_claims_turns_a_lone_significant_result_inconclusive():
    def fake(mean, p_diff, p_equiv):
        return {"comparisons": [{"interval": {"mean": mean}, "p_difference": p_diff,
                                 "p_equivalence": p_equiv}]}
    alone = claims.judge({"a": fake(0.03, 0.02, 0.5)})
    assert alone["a"]["verdict"] == "reproduced"
    # with five others: 0.02 is the largest of six p-values of which the others are tiny, so
    # its Holm p is 0.02 (stays); make it the smallest of six at 0.02 -> x6 = 0.12
    six = claims.judge({k: fake(0.03, 0.02, 0.5) if k == "a" else fake(0.03, 0.03, 0.5)
                        for k in "abcdef"})
    assert six["a"]["comparisons"][0]["holm_p_difference"] == pytest.approx(0.12)
    assert all(v["verdict"] == "inconclusive" for v in six.values())
    # the equivalence family is corrected too
    eq = claims.judge({k: fake(0.0, 0.9, 0.01) for k in "abcdef"})
    assert eq["a"]["comparisons"][0]["holm_p_equivalence"] == pytest.approx(0.06)
    assert eq["a"]["verdict"] == "inconclusive"


# ----------------------------------------------------------------------------- gate and plan

def _lookup(records):
    return lambda name: records.get(name)


def test_the_health_gate_replaces_a_failed_model_by_the_next_seed_of_the_list():
    seeds = design.SEEDS["full"]
    gate = seeds.gate
    a, b, c = seeds.pretrain[:3]          # the list's first three candidates, in order
    f0, f2 = seeds.finetune[0], seeds.finetune[2]
    below, above = {"val/top1": gate - 0.01}, {"val/top1": gate}
    # nothing trained: the first two candidates, no fine-tuning yet
    runs = {r.name for r in design.plan("full", ["all6"], _lookup({}))}
    assert runs == {f"pretrain_p{a}", f"pretrain_p{b}"}
    # the first fails, the second passes: the third comes in, fine-tuning starts on the second
    records = {f"pretrain_p{a}": below, f"pretrain_p{b}": above}
    used, log, waiting = design.gate_log(seeds, _lookup(records))
    assert used == [b] and waiting == 1
    assert [g["status"] for g in log] == ["failed: replaced by the next seed", "passed",
                                          "not yet trained"]
    runs = {r.name: r for r in design.plan("full", ["all6", "scratch"], _lookup(records))}
    assert set(runs) == ({f"pretrain_p{b}", f"pretrain_p{c}"}
                         | {f"all6_p{b}_f{f}" for f in seeds.finetune}
                         | {f"scratch_f{f}" for f in seeds.finetune})
    ft = runs[f"all6_p{b}_f{f2}"]
    assert ft.init == f"pretrain_p{b}" and f"seed={f2}" in ft.arg
    assert runs[f"scratch_f{f0}"].init == "" and "stage=scratch" in runs[f"scratch_f{f0}"].arg
    # the third passes: two models, 10 replicates, and nothing more is trained
    records[f"pretrain_p{c}"] = above
    used, _, waiting = design.gate_log(seeds, _lookup(records))
    assert used == [b, c] and waiting == 0
    assert len([r for r in design.plan("full", ["all6"], _lookup(records))
                if r.init]) == seeds.replicates == 10


def test_seed_lists_share_no_seed():
    lists = [set(s.pretrain) | set(s.finetune) for k, s in design.SEEDS.items() if k != "toy"]
    for i, a in enumerate(lists):
        for b in lists[i + 1:]:
            assert not a & b
    assert not (set(design.SEEDS["full"].pretrain) | set(design.SEEDS["full"].finetune)) & {
        0, 1, 2, 98, 99, *range(10, 16), *range(20, 25), 102}   # earlier studies' and pilots'

    quick = design.SEEDS["quick"]      # the quick study at the 64-pixel recipe spent 30-37, 40-44
    assert not (set(quick.pretrain) | set(quick.finetune)) & {*range(30, 38), *range(40, 45)}


def test_a_fresh_checkout_retrains_a_pre_trained_model_only_for_missing_fine_tunes(tmp_path):
    from deep_image import reproduce
    work, results = str(tmp_path / "work"), str(tmp_path / "results")
    os.makedirs(results)
    pre = Run("pretrain_p0", "stage=pretrain,seed=0,budget=toy")
    fts = [Run(f"all6_p0_f{f}", f"stage=finetune,seed={f},budget=toy", "pretrain_p0")
           for f in (0, 1)]
    for r in (pre, fts[0]):
        with open(os.path.join(results, f"{r.name}.json"), "w") as f:
            json.dump({"name": r.name}, f)
    # the record is there, the checkpoint is not, a fine-tune is missing: train it again
    assert [r.name for r in reproduce.to_do([pre, *fts], work, results)] == [
        "pretrain_p0", "all6_p0_f1"]
    # with its checkpoint: not again
    os.makedirs(os.path.join(work, "runs", "pretrain_p0", "checkpoints", "12"))
    assert [r.name for r in reproduce.to_do([pre, *fts], work, results)] == ["all6_p0_f1"]
    # every fine-tune recorded: the model is not needed, with or without checkpoint
    shutil.rmtree(os.path.join(work, "runs"))
    with open(os.path.join(results, "all6_p0_f1.json"), "w") as f:
        json.dump({}, f)
    assert reproduce.to_do([pre, *fts], work, results) == []


def test_a_fine_tune_starts_from_its_pre_trained_models_workdir(tmp_path):
    """The config a fine-tuning run trains with, and the command the record names, start from
    WORK/runs/<its init run>; a pre-training run starts from nothing."""
    work = str(tmp_path / "work")
    pre = Run("pretrain_p3", "stage=pretrain,seed=3,budget=toy")
    ft = Run("all6_p3_f1", "stage=finetune,seed=1,budget=toy", "pretrain_p3")
    assert ft.config(work).init_from == os.path.join(work, "runs", "pretrain_p3")
    rel = os.path.relpath(work)
    assert ft.command(work).endswith(
        f" --config.init_from={os.path.join(rel, 'runs', 'pretrain_p3')}")
    assert f"--workdir={os.path.join(rel, 'runs', 'all6_p3_f1')} " in ft.command(work)
    assert not pre.config(work).init_from and "init_from" not in pre.command(work)


# ----------------------------------------------------------------------------- report

def test_report_states_each_claims_verdict_interval_and_the_gate(tmp_path):
    analyses = {}
    for key, case in zip("abcdef", ["reproduced", "refuted", "no effect", "inconclusive",
                                    "reproduced", "no effect"]):
        analyses[key] = claims.analyse(claims.CLAIMS[key], FABRICATE[key](EFFECTS[case])
                                       .results())
    analyses = claims.judge(analyses)
    assert {a["verdict"] for a in analyses.values()} == set(stats.VERDICTS)
    gate = [{"seed": 10, "val_top1": 0.5, "gate": 0.7, "status": "failed: replaced by the "
             "next seed"}, {"seed": 11, "val_top1": 0.9, "gate": 0.7, "status": "passed"}]
    runs = [{"name": "all6_p11_f20", "step": 600, "val/top1": 0.8, "test/top1": 0.79,
             "seconds": 60.0, "command": "python -m deep_image.train ...",
             "curve": {"step": [60], "lr": [0.01], "val_top1": [0.5]}}]
    meta = {"command": "python -m deep_image.reproduce --out=x", "kind": "full",
            "seeds": {"pretrain": [10, 11], "finetune": [20], "pretrains": 1, "gate": 0.7},
            "claims": list(analyses), "machine": "test", "wall_seconds": 600.0,
            "invocations": 1}
    path = report.write(str(tmp_path), claims.CLAIMS, analyses, gate, runs, meta)
    text = open(path).read()
    summary = [line for line in text.splitlines() if line.startswith("| ") and "§" in line]
    assert len(summary) == 6
    for key, line in zip(analyses, summary, strict=True):
        a = analyses[key]
        assert line.startswith(f"| {key}. {claims.CLAIMS[key].title} |")
        assert line.endswith(f"| **{a['verdict']}** |")
        assert report.pct(a["comparisons"][0]["interval"]) in line
        section = text.split(f"\n## {key}. ")[1].split("\n## ")[0]
        assert f"**Verdict: {a['verdict']}.**" in section
        for deviation in claims.CLAIMS[key].deviations:
            assert deviation in section
        assert os.path.getsize(tmp_path / f"claim_{key}.png") > 1000
    assert stats.RULE in text and "| 10 | 50.0 | failed" in text
    assert "## What this says and does not say" in text
    data = json.loads((tmp_path / "claims.json").read_text())
    assert {k: v["verdict"] for k, v in data["claims"].items()} == {
        k: a["verdict"] for k, a in analyses.items()}
    assert data["health_gate"]["log"] == gate and "curve" not in data["runs"][0]


def test_the_study_modules_do_not_import_each_other_in_a_circle():
    import ast
    imports = {}
    for name in ("claims", "design", "runs", "stats", "report"):
        tree = ast.parse(open(f"{REPO}/deep_image/study/{name}.py").read())
        imports[name] = {n.module.rsplit(".", 1)[-1] if n.module != "deep_image.study" else
                         a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                         and n.module and n.module.startswith("deep_image.study")
                         for a in n.names}

    def reaches(a, b, seen=()):
        return any(m == b or (m not in seen and reaches(m, b, seen + (m,)))
                   for m in imports.get(a, ()))
    assert not [m for m in imports if reaches(m, m)], imports


# ----------------------------------------------------------------------------- toy study

def _reproduce(out, work, logs, *extra, **popen):
    # `python -m deep_image.reproduce ...`, with Ctrl-C handled as in a terminal even when the
    # suite itself runs in the background (a shell starts it, and so its children, with
    # SIGINT ignored); its output goes to files (logs: stdout and stderr paths)
    cmd = [sys.executable, "-c", _MAIN_WITH_SIGINT, f"--out={out}", f"--work={work}",
           "--kind=toy", "--claims=f", *extra]
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        return subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"}, **popen)


_MAIN_WITH_SIGINT = ("import runpy, signal; signal.signal(signal.SIGINT, "
                     "signal.default_int_handler); runpy.run_module('deep_image.reproduce', "
                     "run_name='__main__', alter_sys=True)")


def _mtimes(out):
    d = os.path.join(out, "results")
    if not os.path.isdir(d):
        return {}
    return {n[:-5]: os.path.getmtime(os.path.join(d, n)) for n in os.listdir(d)
            if n.endswith(".json")}


def _finish(proc, logs, timeout):
    proc.wait(timeout=timeout)
    return [open(p).read() for p in logs]


def _started(stdout):
    return {line.split(": ")[1] for line in stdout.splitlines() if line.startswith("started: ")}


# claim f at toy size: 2 pre-trained models x 1 fine-tuning seed, arms all6 and last, and
# one scratch run
TOY = design.SEEDS["toy"]
TOY_RUNS = ({f"pretrain_p{p}" for p in TOY.pretrain[:2]}
            | {f"{a}_p{p}_f{f}" for a in ("all6", "last") for p in TOY.pretrain[:2]
               for f in TOY.finetune} | {f"scratch_f{f}" for f in TOY.finetune})


def test_toy_study_end_to_end_interrupted_resumed_cached_and_on_a_fresh_checkout(tmp_path):
    out, work = tmp_path / "claims", tmp_path / "work"
    logs = [tmp_path / "stdout.txt", tmp_path / "stderr.txt"]
    # interrupted as a user would (Ctrl-C reaches the whole process group) after a first run
    proc = _reproduce(out, work, logs, start_new_session=True)
    wait_for(lambda: _mtimes(out), proc, timeout=300, what="the first finished run")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = _finish(proc, logs, 300)
    assert proc.returncode != 0 and "rerun the same command" in err, err[-3000:]
    before = _mtimes(out)
    assert before and set(before) < TOY_RUNS
    # resumed: finishes the others, keeps the runs that were done
    proc = _reproduce(out, work, logs)
    stdout, err = _finish(proc, logs, 600)
    assert proc.returncode == 0, err[-3000:]
    assert _started(stdout) == TOY_RUNS - set(before), stdout
    after = _mtimes(out)
    assert set(after) == TOY_RUNS and all(after[n] == t for n, t in before.items())
    # each record: its steps, its pre-trained model, its curve, its posteriors
    records = {n: json.loads((out / "results" / f"{n}.json").read_text()) for n in TOY_RUNS}
    for p in TOY.pretrain[:2]:
        for f in TOY.finetune:
            ft = records[f"all6_p{p}_f{f}"]
            assert ft["init"] == f"pretrain_p{p}" and f"seed={f}" in ft["arg"]
            assert ft["curve"]["step"][-1] == ft["step"] and len(ft["curve"]["lr"]) == len(
                ft["curve"]["val_top1"])
            with np.load(out / "results" / f"all6_p{p}_f{f}.npz") as z:
                probs, labels = z["test/probs"].astype(np.float32), z["test/labels"]
                assert probs.dtype == np.float32 and probs.shape[1] == 16
                np.testing.assert_allclose(probs.sum(1), 1, atol=1e-2)      # float16
                assert ft["test/top1"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    # the report's primary comparison is the records' per-replicate difference
    data = json.loads((out / "claims.json").read_text())
    f_claim = data["claims"]["f"]
    reps = [(p, f) for p in TOY.pretrain[:2] for f in TOY.finetune]
    expected = [records[f"all6_p{p}_f{f}"]["test/top1"] - records[f"last_p{p}_f{f}"]["test/top1"]
                for p, f in reps]
    assert f_claim["comparisons"][0]["per_replicate"] == pytest.approx(expected, abs=1e-9)
    assert f_claim["verdict"] in stats.VERDICTS and "(toy)" in (out / "claims.md").read_text()
    # cached: a rerun trains nothing
    proc = _reproduce(out, work, logs)
    stdout, err = _finish(proc, logs, 300)
    assert proc.returncode == 0 and not _started(stdout), (stdout, err[-2000:])
    # a fresh checkout: records kept, the work folder gone, one fine-tune's record missing:
    # only its pre-trained model and itself are trained again
    shutil.rmtree(work)
    missing = f"last_p{TOY.pretrain[1]}_f{TOY.finetune[0]}"
    for ext in (".json", ".npz"):
        os.remove(out / "results" / f"{missing}{ext}")
    # ... but not from a model other than the one its record describes (as on another
    # machine): that is refused, and nothing is fine-tuned from it
    pre = out / "results" / f"pretrain_p{TOY.pretrain[1]}.json"
    kept = pre.read_text()
    record = json.loads(kept)      # another score, still above the (toy) gate
    pre.write_text(json.dumps({**record, "val/top1": record["val/top1"] + 0.25}))
    proc = _reproduce(out, work, logs)
    stdout, err = _finish(proc, logs, 600)
    assert proc.returncode != 0 and "trained again" in err, err[-3000:]
    assert _started(stdout) == {f"pretrain_p{TOY.pretrain[1]}"}, stdout
    assert not (out / "results" / f"{missing}.json").exists()
    # with the record that describes it back, the model trained again above (its checkpoint
    # kept in the work folder) is the one the missing fine-tune starts from: only that runs
    pre.write_text(kept)
    proc = _reproduce(out, work, logs)
    stdout, err = _finish(proc, logs, 600)
    assert proc.returncode == 0, err[-3000:]
    assert _started(stdout) == {missing}, stdout
    again = json.loads((out / "results" / f"{missing}.json").read_text())
    assert again["test/top1"] == pytest.approx(records[missing]["test/top1"])
