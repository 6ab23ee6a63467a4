"""The claims study (python -m deep_image.reproduce): the statistics against scipy; every
claim's analysis on fabricated per-seed posteriors whose answer is known by construction (each
verdict the analysis can return, the expected intervals from scipy's t quantile by hand); the
pairing of arms seed by seed; the report; and a 1-claim, 2-seed study end to end at toy size,
interrupted, resumed and rerun from its cache. No real run's verdict is asserted."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import REPO, wait_for
from deep_image.study import claims, report, stats

# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n,confidence", [(2, 0.95), (3, 0.95), (4, 0.95), (10, 0.9)])
def test_interval_is_scipys_t_interval(n, confidence):
    values = np.random.default_rng(n).uniform(0.7, 0.9, n)
    got = stats.interval(values, confidence)
    lo, hi = scipy_stats.t.interval(confidence, n - 1, loc=np.mean(values),
                                    scale=scipy_stats.sem(values))
    assert (got.mean, got.low, got.high) == pytest.approx((np.mean(values), lo, hi))
    assert got.sd == pytest.approx(np.std(values, ddof=1)) and got.n == n


def test_one_value_gives_an_unbounded_interval():
    one = stats.interval([0.5])
    assert one.mean == 0.5 and one.low == -np.inf and one.high == np.inf


def test_paired_effect_and_the_verdict_rule():
    better, worse = [0.80, 0.82, 0.85], [0.70, 0.74, 0.73]
    effect = stats.paired_effect(better, worse)
    diffs = np.subtract(better, worse)
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert (effect.low, effect.high) == pytest.approx((lo, hi))
    assert stats.verdict(effect) == "reproduced"
    assert stats.verdict(stats.paired_effect(worse, better)) == "not reproduced"
    assert stats.verdict(stats.paired_effect([0.8, 0.7, 0.9], [0.75, 0.8, 0.8])) == \
        "inconclusive"
    assert stats.combined(["reproduced", "reproduced"]) == "reproduced"
    assert stats.combined(["reproduced", "inconclusive"]) == "inconclusive"
    assert stats.combined(["inconclusive", "not reproduced"]) == "not reproduced"
    assert stats.combined(["reproduced", "not reproduced"]) == "not reproduced"
    with pytest.raises(ValueError, match="equal seeds"):
        stats.paired_effect([1, 2], [1])


def test_paired_effect_is_scipys_paired_t_interval_not_an_unpaired_one():
    # seeds differ a lot, the arms' difference within a seed little: only pairing sees it
    worse = np.array([0.50, 0.70, 0.60, 0.80])
    better = worse + [0.02, 0.03, 0.02, 0.03]
    effect = stats.paired_effect(better, worse)
    paired = scipy_stats.ttest_rel(better, worse).confidence_interval(0.95)
    unpaired = scipy_stats.ttest_ind(better, worse).confidence_interval(0.95)
    assert (effect.low, effect.high) == pytest.approx((paired.low, paired.high))
    assert effect.low > 0 and unpaired.low < 0 < unpaired.high


# ----------------------------------------------------------------------------- fabricated runs
#
# Posteriors over 4 classes of four kinds, per example (probability of the label, of the next
# class, of each of the two others). Averages of two (claim d) by hand: right + barely_wrong
# and right + wrong are right; barely_right + wrong is wrong; wrong + barely_wrong is wrong.
CLASSES = 4
KINDS = {"right": (0.75, 0.1, 0.075), "barely_right": (0.4, 0.3, 0.15),
         "barely_wrong": (0.3, 0.4, 0.15), "wrong": (0.1, 0.7, 0.1)}
SEEDS = [0, 1, 2, 3]       # n - 1 = 3 degrees of freedom: t = 3.18 (n = 4 would give 2.78)


def _posteriors(kinds, labels):
    p = np.empty((len(kinds), CLASSES), np.float32)
    for i, (kind, y) in enumerate(zip(kinds, labels, strict=True)):
        label, following, other = KINDS[kind]
        p[i] = other
        p[i, y], p[i, (y + 1) % CLASSES] = label, following
    return p


def _kinds(spec, n):
    """A model's kinds per example: a list of kinds, a boolean vector (right where true), or
    an int k (the first k of n right)."""
    if isinstance(spec, (int, np.integer)):
        spec = np.arange(n) < spec
    spec = np.asarray(spec)
    return spec if spec.dtype.kind in "US" else np.where(spec, "right", "wrong")


def _results(models, n=100, sizes=None, seeds=SEEDS):
    """claims.Results over fabricated runs: models[(arm, evaluation)] = one spec (see _kinds)
    per seed, in the order of `seeds`."""
    labels = np.arange(n) % CLASSES
    loaded = []

    def posteriors(name):
        arm, seed = name.rsplit("_s", 1)
        i = seeds.index(int(seed))
        loaded.append(name)
        out = {}
        for (a, evaluation), per_seed in models.items():
            if a == arm:
                out[f"{evaluation}/probs"] = _posteriors(_kinds(per_seed[i], n), labels)
                out[f"{evaluation}/labels"] = labels
        return out
    r = claims.Results("", seeds, posteriors, lambda name: {}, sizes)
    r.loaded = loaded
    return r


def _t(diffs):
    """Mean and 95% t interval of per-seed values, by hand."""
    x = np.asarray(diffs, np.float64)
    half = scipy_stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def _rule(low, high):
    """stats.RULE, restated: above 0 reproduced, below 0 not reproduced, else inconclusive."""
    return "reproduced" if low > 0 else "not reproduced" if high < 0 else "inconclusive"


def _check_effect(effect, diffs, verdict):
    """`effect` is the t interval of `diffs` (per seed, in the paper's direction), and the
    fabricated data give the verdict the case is meant to give."""
    mean, low, high = _t(diffs)
    assert _rule(low, high) == verdict, "the fixture does not make the case it names"
    got = effect["interval"]
    assert (got["mean"], got["low"], got["high"]) == pytest.approx((mean, low, high)), \
        effect["comparison"]
    assert got["n"] == len(SEEDS)
    assert effect["verdict"] == verdict, effect["comparison"]


def _rows(analysis):
    return {row["arm"]: row["per_seed"] for row in analysis["rows"]}


def _pct(values):
    return np.asarray(values, np.float64) / 100


# ----------------------------------------------------------------------------- claims a and b
#
# Both compare crop + flip with all six on a difference of two evaluations of each run: a on
# the train - test gap, b on the test - shifted-test drop. Per seed, in percent of 100:
# (crop+flip upper, crop+flip lower, all-six upper, all-six lower), then the verdicts of the
# primary (the difference of the differences) and of the secondary (all six's lower minus
# crop+flip's lower) comparisons. The claim's verdict is the primary's.
AB_CASES = {
    "reproduced": ([98, 99, 97, 100], [60, 62, 58, 61], [80, 82, 79, 81], [70, 71, 69, 72],
                   "reproduced", "reproduced"),
    "not reproduced": ([80, 82, 79, 81], [70, 71, 69, 72], [98, 99, 97, 100], [60, 62, 58, 61],
                       "not reproduced", "not reproduced"),
    "inconclusive": ([90, 92, 91, 89], [70, 71, 69, 72], [88, 93, 90, 91], [70, 70, 70, 70],
                     "inconclusive", "inconclusive"),
    # all six overfits less but is worse on the lower split: the verdict is the primary's
    "primary decides": ([99, 99, 99, 99], [65, 66, 64, 65], [60, 61, 59, 60], [55, 56, 54, 56],
                        "reproduced", "not reproduced"),
}
AB = {"a": ("train", "test", {"upper": "train top-1", "lower": "test top-1",
                              "difference": "train - test gap"}),
      "b": ("test", "test_shifted", {"upper": "test top-1", "lower": "shifted test top-1",
                                     "difference": "drop (test - shifted)"})}


@pytest.mark.parametrize("key", ["a", "b"])
@pytest.mark.parametrize("case", list(AB_CASES))
def test_claims_a_and_b_on_runs_with_a_known_answer(key, case):
    cf_up, cf_low, a6_up, a6_low, primary, secondary = AB_CASES[case]
    upper, lower, names = AB[key]
    r = _results({("cropflip", upper): cf_up, ("cropflip", lower): cf_low,
                  ("all6", upper): a6_up, ("all6", lower): a6_low})
    out = claims.CLAIMS[key].analyse(r)
    cf_diff, a6_diff = np.subtract(cf_up, cf_low), np.subtract(a6_up, a6_low)
    rows = _rows(out)
    for arm, up, low, diff in (("cropflip", cf_up, cf_low, cf_diff),
                               ("all6", a6_up, a6_low, a6_diff)):
        assert rows[f"{arm}: {names['upper']}"] == pytest.approx(_pct(up))
        assert rows[f"{arm}: {names['lower']}"] == pytest.approx(_pct(low))
        assert rows[f"{arm}: {names['difference']}"] == pytest.approx(_pct(diff))
    assert len(out["effects"]) == 2
    _check_effect(out["effects"][0], _pct(cf_diff - a6_diff), primary)
    _check_effect(out["effects"][1], _pct(np.subtract(a6_low, cf_low)), secondary)
    assert out["verdict"] == primary


# ----------------------------------------------------------------------------- claim c
#
# 90 test birds of shuffled sizes: the thirds by size are 30 birds each. Per arm and seed, how
# many of the small / large third's 30 birds the dense test gets right (medium: 15).
C_CASES = {   # (low small, low large, high small, high large), verdicts of the two effects
    "reproduced": ([10, 12, 11, 9], [25, 26, 24, 25], [20, 21, 22, 20], [26, 26, 25, 25],
                   "reproduced", "reproduced", "reproduced"),
    # higher resolution is worse on small birds
    "not reproduced": ([10, 12, 11, 9], [25, 26, 24, 25], [5, 6, 4, 5], [25, 26, 24, 25],
                       "not reproduced", "not reproduced", "not reproduced"),
    # it helps small birds, but no more than large ones
    "inconclusive": ([10, 12, 11, 9], [15, 15, 15, 15], [20, 21, 22, 20], [24, 26, 25, 27],
                     "reproduced", "inconclusive", "inconclusive"),
}


def _by_thirds(sizes, small, large, medium=15):
    """Right on the first `small` of the smallest 30 birds (in index order), etc."""
    order = np.argsort(sizes)
    right = np.zeros(len(sizes), bool)
    for third, k in zip(np.split(order, 3), (small, medium, large), strict=True):
        right[np.sort(third)[:k]] = True
    return right


@pytest.mark.parametrize("case", list(C_CASES))
def test_claim_c_on_runs_with_a_known_answer(case):
    low_s, low_l, high_s, high_l, first, second, verdict = C_CASES[case]
    sizes = np.random.default_rng(0).permutation(np.linspace(0.2, 0.7, 90))
    r = _results({("all6", "test_dense"): [_by_thirds(sizes, s, l)
                                           for s, l in zip(low_s, low_l, strict=True)],
                  ("all6_high", "test_dense"): [_by_thirds(sizes, s, l)
                                                for s, l in zip(high_s, high_l, strict=True)],
                  # the centre-crop test must not be what claim c reads
                  ("all6", "test"): [90] * 4, ("all6_high", "test"): [0] * 4},
                 n=90, sizes=sizes)
    out = claims.CLAIMS["c"].analyse(r)
    rows = _rows(out)
    thirds = 30
    for arm, small, large in (("all6", low_s, low_l), ("all6_high", high_s, high_l)):
        assert rows[f"{arm}: small birds"] == pytest.approx(np.divide(small, thirds))
        assert rows[f"{arm}: medium birds"] == pytest.approx([0.5] * 4)
        assert rows[f"{arm}: large birds"] == pytest.approx(np.divide(large, thirds))
    gain_small, gain_large = np.subtract(high_s, low_s), np.subtract(high_l, low_l)
    _check_effect(out["effects"][0], gain_small / thirds, first)
    _check_effect(out["effects"][1], (gain_small - gain_large) / thirds, second)
    assert out["verdict"] == verdict
    ranked = np.sort(sizes)
    assert out["terciles"]["small"] == pytest.approx([ranked[0], ranked[29]])
    assert out["terciles"]["large"] == pytest.approx([ranked[60], ranked[89]])


# ----------------------------------------------------------------------------- claim d
#
# Per seed, how many of 100 test birds are of each type, for the scale-72 (low) and scale-128
# (high) models of that seed:
#   both     both right                     -> the average is right
#   low      low right, high barely wrong   -> right
#   high     high right, low barely wrong   -> right
#   spoil    high barely right, low wrong   -> wrong
#   (rest)   both wrong                     -> wrong
# so low = both + low, high = both + high + spoil, the average = both + low + high. The types
# sit at other places for every seed: averaging the models of two different seeds differs.
D_TYPES = {"both": ("right", "right"), "low": ("right", "barely_wrong"),
           "high": ("barely_wrong", "right"), "spoil": ("wrong", "barely_right"),
           "none": ("wrong", "wrong")}
D_CASES = {   # per seed (both, low, high, spoil); the primary's verdict
    "reproduced": ([(50, 20, 20, 0), (48, 22, 20, 2), (52, 18, 19, 0), (50, 21, 18, 1)],
                   "reproduced"),
    # a confident wrong low model spoils the better high one
    "not reproduced": ([(60, 0, 0, 30), (60, 2, 0, 30), (58, 0, 1, 32), (61, 1, 0, 29)],
                       "not reproduced"),
    "inconclusive": ([(60, 5, 10, 4), (60, 3, 10, 5), (60, 4, 10, 4), (60, 6, 10, 5)],
                     "inconclusive"),
}


def _d_models(counts):
    types = []
    for s, c in zip(SEEDS, counts, strict=True):
        t = np.repeat(["both", "low", "high", "spoil", "none"], [*c, 100 - sum(c)])
        types.append(np.roll(t, 13 * s))
    low = [np.array([D_TYPES[t][0] for t in ts]) for ts in types]
    high = [np.array([D_TYPES[t][1] for t in ts]) for ts in types]
    return types, low, high


@pytest.mark.parametrize("case", list(D_CASES))
def test_claim_d_on_runs_with_a_known_answer(case):
    counts, verdict = D_CASES[case]
    types, low, high = _d_models(counts)
    r = _results({("all6", "test_dense"): low, ("all6_high", "test_dense"): high,
                  ("all6", "test"): [0] * 4, ("all6_high", "test"): [0] * 4})
    out = claims.CLAIMS["d"].analyse(r)
    low_acc = np.array([b + lo for b, lo, _, _ in counts])
    high_acc = np.array([b + hi + sp for b, _, hi, sp in counts])
    ensemble = np.array([b + lo + hi for b, lo, hi, _ in counts])
    # control: two low-scale models of seeds s and s + 1 (cyclically); by the kinds above, the
    # average is right where either is right
    control = np.array([np.sum((low[i] == "right") | (low[(i + 1) % 4] == "right"))
                        for i in range(4)])
    rows = _rows(out)
    assert rows["low (scale 72)"] == pytest.approx(_pct(low_acc))
    assert rows["high (scale 128)"] == pytest.approx(_pct(high_acc))
    assert rows["ensemble low + high"] == pytest.approx(_pct(ensemble))
    assert rows["control: ensemble of two low-scale seeds"] == pytest.approx(_pct(control))
    _check_effect(out["effects"][0], _pct(ensemble - np.maximum(low_acc, high_acc)), verdict)
    diffs = _pct(ensemble - control)
    _check_effect(out["effects"][1], diffs, _rule(*_t(diffs)[1:]))
    assert out["verdict"] == verdict


# ----------------------------------------------------------------------------- claims e and f

E_CASES = {   # per seed: all six's centre-crop and dense test top-1 (of 100)
    "reproduced": ([60, 62, 58, 61], [66, 67, 65, 68], "reproduced"),
    "not reproduced": ([66, 67, 65, 68], [60, 62, 58, 61], "not reproduced"),
    "inconclusive": ([60, 62, 58, 61], [61, 60, 59, 60], "inconclusive"),
}


@pytest.mark.parametrize("case", list(E_CASES))
def test_claim_e_on_runs_with_a_known_answer(case):
    center, dense, verdict = E_CASES[case]
    r = _results({("all6", "test"): center, ("all6", "test_dense"): dense})
    out = claims.CLAIMS["e"].analyse(r)
    assert _rows(out) == {"single centre crop": pytest.approx(_pct(center)),
                          "dense, scales 72/96/128, + flip": pytest.approx(_pct(dense))}
    assert len(out["effects"]) == 1
    _check_effect(out["effects"][0], _pct(np.subtract(dense, center)), verdict)
    assert out["verdict"] == verdict


F_CASES = {   # test top-1 per seed of (scratch, classifier only, last three FC, all layers)
    "reproduced": ([30, 33, 36, 31], [60, 62, 61, 63], [70, 72, 69, 71], [80, 83, 79, 82],
                   ("reproduced", "reproduced", "reproduced"), "reproduced"),
    # fine-tuning all layers is worse than the last three FC layers
    "not reproduced": ([30, 33, 36, 31], [60, 62, 61, 63], [70, 72, 69, 71], [65, 66, 64, 66],
                       ("reproduced", "not reproduced", "reproduced"), "not reproduced"),
    # the last three FC layers are no better than the classifier alone
    "inconclusive": ([30, 33, 36, 31], [70, 71, 69, 73], [70, 72, 69, 71], [80, 83, 79, 82],
                     ("reproduced", "reproduced", "inconclusive"), "inconclusive"),
}


@pytest.mark.parametrize("case", list(F_CASES))
def test_claim_f_on_runs_with_a_known_answer(case):
    scratch, last, fc, all6, verdicts, verdict = F_CASES[case]
    r = _results({("scratch", "test"): scratch, ("last", "test"): last, ("fc", "test"): fc,
                  ("all6", "test"): all6, ("all6", "test_dense"): [100] * 4})
    out = claims.CLAIMS["f"].analyse(r)
    assert _rows(out) == {"from scratch": pytest.approx(_pct(scratch)),
                          "fine-tune the classifier": pytest.approx(_pct(last)),
                          "fine-tune the last three FC layers": pytest.approx(_pct(fc)),
                          "fine-tune all layers": pytest.approx(_pct(all6))}
    diffs = [np.subtract(all6, scratch), np.subtract(all6, fc), np.subtract(fc, last)]
    for effect, d, v in zip(out["effects"], diffs, verdicts, strict=True):
        _check_effect(effect, _pct(d), v)
    assert out["verdict"] == verdict


# ----------------------------------------------------------------------------- pairing

SWAPS = {   # claim -> the data of a reproduced case and the two arms/evaluations to swap
    "a": lambda: ({("cropflip", "train"): AB_CASES["reproduced"][0],
                   ("cropflip", "test"): AB_CASES["reproduced"][1],
                   ("all6", "train"): AB_CASES["reproduced"][2],
                   ("all6", "test"): AB_CASES["reproduced"][3]}, ("cropflip", "all6")),
    "e": lambda: ({("all6", "test"): E_CASES["reproduced"][0],
                   ("all6", "test_dense"): E_CASES["reproduced"][1]}, ("test", "test_dense")),
    "f": lambda: ({("scratch", "test"): F_CASES["reproduced"][0],
                   ("last", "test"): F_CASES["reproduced"][1],
                   ("fc", "test"): F_CASES["reproduced"][2],
                   ("all6", "test"): F_CASES["reproduced"][3]}, ("scratch", "all6")),
}


def _swap(models, x, y):
    """The same data with arms (or evaluations) x and y exchanged."""
    rename = {x: y, y: x}
    return {(rename.get(a, a), rename.get(e, e)): v for (a, e), v in models.items()}


def _c_models():
    sizes = np.random.default_rng(0).permutation(np.linspace(0.2, 0.7, 90))
    low_s, low_l, high_s, high_l = C_CASES["reproduced"][:4]
    return sizes, {("all6", "test_dense"): [_by_thirds(sizes, s, l) for s, l in
                                            zip(low_s, low_l, strict=True)],
                   ("all6_high", "test_dense"): [_by_thirds(sizes, s, l) for s, l in
                                                 zip(high_s, high_l, strict=True)]}


@pytest.mark.parametrize("key", ["a", "c", "e", "f"])
def test_swapping_two_arms_flips_the_sign_of_the_effect(key):
    if key == "c":
        sizes, models = _c_models()
        x, y, n = "all6", "all6_high", 90
    else:
        (models, (x, y)), sizes, n = SWAPS[key](), None, 100
    before = claims.CLAIMS[key].analyse(_results(models, n, sizes))
    after = claims.CLAIMS[key].analyse(_results(_swap(models, x, y), n, sizes))
    flipped = {"reproduced": "not reproduced", "not reproduced": "reproduced"}
    # claim f: only its first comparison involves both swapped arms
    effects = before["effects"][:1] if key == "f" else before["effects"]
    for b, a in zip(effects, after["effects"][:len(effects)], strict=True):
        i, j = b["interval"], a["interval"]
        assert (j["mean"], j["low"], j["high"]) == pytest.approx(
            (-i["mean"], -i["high"], -i["low"])), b["comparison"]
        assert b["verdict"] == "reproduced" and a["verdict"] == flipped[b["verdict"]]
    assert after["verdict"] == "not reproduced"


def test_arms_are_paired_seed_by_seed():
    # the arms' seeds agree closely within a seed and differ a lot between seeds: the effect
    # is reproduced only if seed s of one arm meets seed s of the other
    center = [50, 70, 60, 80]
    dense = [52, 73, 62, 83]
    out = claims.CLAIMS["e"].analyse(_results({("all6", "test"): center,
                                               ("all6", "test_dense"): dense}))
    _check_effect(out["effects"][0], _pct(np.subtract(dense, center)), "reproduced")
    # the ensemble of claim d averages the two scales' models of one seed: with the types at
    # other places in every seed, another pairing would not reach 100%
    _, low, high = _d_models([(0, 50, 50, 0)] * 4)
    out = claims.CLAIMS["d"].analyse(_results({("all6", "test_dense"): low,
                                               ("all6_high", "test_dense"): high}))
    assert _rows(out)["ensemble low + high"] == pytest.approx([1.0] * 4)


def test_results_load_each_run_once_and_only_the_claims_arms():
    r = _results({(a, "test"): [50] * 4 for a in claims.ARMS})
    claims.CLAIMS["f"].analyse(r)
    assert sorted(r.loaded) == sorted(f"{a}_s{s}" for a in ("scratch", "last", "fc", "all6")
                                      for s in SEEDS)


# ----------------------------------------------------------------------------- report

def _all_claims():
    """An analysis of every claim on fabricated runs, verdicts of all three kinds."""
    sizes, c_models = _c_models()
    _, low, high = _d_models(D_CASES["not reproduced"][0])
    cf_up, cf_low, a6_up, a6_low = AB_CASES["reproduced"][:4]
    shared = {("cropflip", "train"): cf_up, ("cropflip", "test"): cf_low,
              ("all6", "train"): a6_up, ("all6", "test"): a6_low,
              ("cropflip", "test_shifted"): [50, 52, 48, 51],     # b: inconclusive
              ("all6", "test_shifted"): [59, 62, 59, 61],
              ("all6", "test_dense"): low, ("all6_high", "test_dense"): high,
              ("scratch", "test"): [30, 33, 36, 31], ("last", "test"): [40, 42, 41, 43],
              ("fc", "test"): [45, 48, 44, 47]}
    r = _results(shared)
    out = {k: claims.CLAIMS[k].analyse(r) for k in "abdef"}
    out["c"] = claims.CLAIMS["c"].analyse(_results(c_models, 90, sizes))
    return {k: out[k] for k in sorted(out)}


def test_report_states_each_claims_verdict_and_effects(tmp_path):
    analyses = _all_claims()
    assert {a["verdict"] for a in analyses.values()} == {"reproduced", "not reproduced",
                                                         "inconclusive"}
    runs = [{"name": "all6_s0", "step": 8, "final_lr_scale": 0.1, "val_top1": 0.5,
             "seconds": 60.0, "command": "python -m deep_image.train ..."}]
    meta = {"command": "python -m deep_image.reproduce --out=x", "budget": "full",
            "seeds": SEEDS, "claims": list(analyses), "machine": "test", "wall_seconds": 600.0,
            "invocations": 1}
    path = report.write(str(tmp_path), claims.CLAIMS, analyses, runs, meta)
    text = open(path).read()
    summary = [line for line in text.splitlines() if line.startswith("| ") and ". " in line
               and "§" in line]
    assert len(summary) == 6
    for key, line in zip(analyses, summary, strict=True):
        a = analyses[key]
        assert line.startswith(f"| {key}. {claims.CLAIMS[key].title} |")
        assert f"| **{a['verdict']}** |" in line
        e = a["effects"][0]["interval"]
        assert (f"{100 * e['mean']:.1f} [{100 * e['low']:.1f}, {100 * e['high']:.1f}]"
                in line)
        section = text.split(f"\n## {key}. ")[1].split("\n## ")[0]
        assert f"**Verdict: {a['verdict']}.**" in section
        assert os.path.getsize(tmp_path / f"claim_{key}.png") > 1000
    assert "(quick)" not in text and stats.RULE in text
    data = json.loads((tmp_path / "claims.json").read_text())
    assert {k: v["verdict"] for k, v in data["claims"].items()} == {
        k: a["verdict"] for k, a in analyses.items()}
    assert data["claims"]["e"]["effects"] == analyses["e"]["effects"]
    assert data["runs"] == runs and data["meta"] == meta


# ----------------------------------------------------------------------------- plan and toy study

def test_size_terciles_split_the_test_birds_in_thirds():
    sizes = np.linspace(0.2, 0.7, 90)
    masks = claims.size_terciles(sizes)
    assert [int(m.sum()) for m in masks.values()] == [30, 30, 30]
    assert sizes[masks["small"]].max() < sizes[masks["medium"]].min()
    assert sizes[masks["medium"]].max() < sizes[masks["large"]].min()


def test_plan_fine_tunes_each_seed_from_its_own_pre_training():
    runs = {r.name: r for r in claims.plan({"claims": ["a", "f"], "seeds": [0, 1],
                                             "budget": "toy"})}
    assert set(runs) == {f"{a}_s{s}" for a in ("pretrain", "cropflip", "all6", "fc", "last",
                                               "scratch") for s in (0, 1)}
    assert runs["all6_s1"].init == "pretrain_s1" and runs["scratch_s0"].init == ""
    assert "seed=1" in runs["all6_s1"].arg and "budget=toy" in runs["all6_s1"].arg
    assert set(runs["all6_s0"].evaluations) >= {"test", "train"}       # claim a's gap
    assert "stage=scratch" in runs["scratch_s1"].arg and "finetune=fc" in runs["fc_s0"].arg


def _toy_budget():
    import importlib.util
    spec = importlib.util.spec_from_file_location("claims_cfg", f"{REPO}/experiments/claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BUDGETS["toy"]


def _reproduce(out, logs, *extra, **popen):
    # `python -m deep_image.reproduce ...`, with Ctrl-C handled as in a terminal even when the
    # suite itself runs in the background (a shell starts it, and so its children, with
    # SIGINT ignored); its output goes to files (logs: stdout and stderr paths)
    cmd = [sys.executable, "-c", _MAIN_WITH_SIGINT, f"--out={out}", "--budget=toy",
           "--claims=e", "--seeds=2", *extra]
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        return subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=stderr,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"}, **popen)


_MAIN_WITH_SIGINT = ("import runpy, signal; signal.signal(signal.SIGINT, "
                     "signal.default_int_handler); runpy.run_module('deep_image.reproduce', "
                     "run_name='__main__', alter_sys=True)")


def _mtimes(out):
    runs = os.path.join(out, "runs")
    if not os.path.isdir(runs):
        return {}
    return {n: os.path.getmtime(os.path.join(runs, n, "result.json")) for n in os.listdir(runs)
            if os.path.isfile(os.path.join(runs, n, "result.json"))}


def _finish(proc, logs, timeout):
    proc.wait(timeout=timeout)
    return [open(p).read() for p in logs]


TOY_RUNS = {"pretrain_s0", "pretrain_s1", "all6_s0", "all6_s1"}      # claim e, 2 seeds
TOY_EVALUATIONS = {"test", "test_shifted", "train", "test_dense"}    # all six's (claims a-e)


def test_toy_study_end_to_end_interrupted_resumed_and_cached(tmp_path):
    out = tmp_path / "claims"
    logs = [tmp_path / "stdout.txt", tmp_path / "stderr.txt"]
    # interrupted as a user would (Ctrl-C reaches the whole process group) after a first run
    proc = _reproduce(out, logs, start_new_session=True)
    wait_for(lambda: _mtimes(out), proc, timeout=300, what="the first finished run")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = _finish(proc, logs, 300)
    assert proc.returncode != 0 and "rerun the same command" in err, err[-3000:]
    before = _mtimes(out)
    assert before and set(before) < TOY_RUNS
    # resumed: finishes the others, keeps the runs that were done
    proc = _reproduce(out, logs)
    stdout, err = _finish(proc, logs, 600)
    assert proc.returncode == 0, err[-3000:]
    started = {line.split(": ")[1] for line in stdout.splitlines()
               if line.startswith("started: ")}
    assert started == TOY_RUNS - set(before), stdout
    after = _mtimes(out)
    assert set(after) == TOY_RUNS and all(after[n] == t for n, t in before.items())
    # every run finished its steps, fine-tuned from its own seed's pre-training, and scored the
    # test birds it must
    budget = _toy_budget()
    results = {n: json.loads((out / "runs" / n / "result.json").read_text()) for n in TOY_RUNS}
    for seed in (0, 1):
        pre, ft = results[f"pretrain_s{seed}"], results[f"all6_s{seed}"]
        assert pre["step"] == budget["pretrain_steps"] and pre["init"] == ""
        assert ft["step"] == budget["finetune_steps"] and ft["init"] == f"pretrain_s{seed}"
        with np.load(out / "runs" / f"all6_s{seed}" / "posteriors.npz") as z:
            assert set(z.files) == {f"{e}/{x}" for e in TOY_EVALUATIONS
                                    for x in ("probs", "labels")}
            for e in ("test", "test_dense"):
                probs, labels = z[f"{e}/probs"], z[f"{e}/labels"]
                assert probs.shape == (budget["test_size"], 16)
                np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
                assert ft[f"{e}/top1"] == pytest.approx(np.mean(probs.argmax(1) == labels))
            # each evaluation scored what it names: the dense protocol other views of the test
            # birds, the shifted split other images
            np.testing.assert_array_equal(z["test_dense/labels"], z["test/labels"])
            assert np.abs(z["test_dense/probs"] - z["test/probs"]).max() > 1e-5
            assert np.abs(z["test_shifted/probs"] - z["test/probs"]).max() > 1e-5
    # the report: the claim's rows are the runs' results, seed by seed, its effect their t
    # interval and its verdict the rule's
    report_md = (out / "claims.md").read_text()
    for heading in ("## The rule", "## e. ", "## Runs"):
        assert heading in report_md
    assert report_md.count("**Verdict: ") == 1 and "(quick)" in report_md
    data = json.loads((out / "claims.json").read_text())
    assert set(data["claims"]) == {"e"} and data["meta"]["seeds"] == [0, 1]
    assert {r["name"] for r in data["runs"]} == TOY_RUNS
    e = data["claims"]["e"]
    center = [results[f"all6_s{s}"]["test/top1"] for s in (0, 1)]
    dense = [results[f"all6_s{s}"]["test_dense/top1"] for s in (0, 1)]
    assert [row["arm"] for row in e["rows"]] == ["single centre crop",
                                                 "dense, scales 72/96/128, + flip"]
    assert e["rows"][0]["per_seed"] == pytest.approx(center)
    assert e["rows"][1]["per_seed"] == pytest.approx(dense)
    mean, low, high = _t(np.subtract(dense, center))     # zero width if both are equal
    i = e["effects"][0]["interval"]
    assert (i["mean"], i["low"], i["high"]) == pytest.approx((mean, low, high))
    assert e["verdict"] == e["effects"][0]["verdict"] == _rule(low, high)
    assert os.path.getsize(out / "claim_e.png") > 1000
    # cached: a rerun trains nothing
    proc = _reproduce(out, logs)
    stdout, err = _finish(proc, logs, 300)
    assert proc.returncode == 0, err[-3000:]
    assert "4 runs, 0 to do" in stdout and "started" not in stdout
    assert _mtimes(out) == after
