"""The claims study's machinery at toy size (python -m deep_image.reproduce): statistics against
scipy, analyses on fabricated posteriors, and a 2-claim, 2-seed study end to end, rerun from its
cache and resumed after an interruption. No claim's verdict is asserted."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import REPO
from deep_image.study import claims, stats


def test_interval_is_scipys_t_interval():
    values = [0.81, 0.84, 0.79, 0.86]
    got = stats.interval(values)
    lo, hi = scipy_stats.t.interval(0.95, 3, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (got.mean, got.low, got.high) == pytest.approx((np.mean(values), lo, hi))
    assert got.sd == pytest.approx(np.std(values, ddof=1)) and got.n == 4
    one = stats.interval([0.5])
    assert one.low == -np.inf and one.high == np.inf


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
    with pytest.raises(ValueError, match="equal seeds"):
        stats.paired_effect([1, 2], [1])


def _fake_results(seeds, correct_by_arm, n=60, classes=4, sizes=None):
    """Posteriors where arm `a` at seed s gets the first correct_by_arm[a][s] of `n` right."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)

    def posteriors(name):
        arm, seed = name.rsplit("_s", 1)
        k = correct_by_arm[arm][int(seed)]
        out = {}
        for key in ("test", "test_dense", "test_shifted", "train"):
            pred = np.where(np.arange(n) < k, labels, (labels + 1) % classes)
            out[f"{key}/probs"] = np.eye(classes)[pred] * 0.7 + 0.3 / classes
            out[f"{key}/labels"] = labels
        return out
    return claims.Results("", seeds, posteriors, lambda name: {}, sizes)


def test_analyses_compute_what_they_say():
    seeds = [0, 1, 2]
    r = _fake_results(seeds, {"scratch": [30, 33, 36], "last": [40, 42, 41],
                              "fc": [45, 48, 44], "all6": [54, 57, 51]})
    f = claims.CLAIMS["f"].analyse(r)
    first = f["effects"][0]
    expected = stats.paired_effect(np.array([54, 57, 51]) / 60, np.array([30, 33, 36]) / 60)
    assert first["interval"]["mean"] == pytest.approx(expected.mean)
    assert first["interval"]["low"] == pytest.approx(expected.low)
    assert [row["per_seed"] for row in f["rows"]][0] == pytest.approx([0.5, 0.55, 0.6])
    assert f["verdict"] in ("reproduced", "inconclusive", "not reproduced")


def test_size_terciles_split_the_test_birds_in_thirds():
    sizes = np.linspace(0.2, 0.7, 90)
    masks = claims.size_terciles(sizes)
    assert [int(m.sum()) for m in masks.values()] == [30, 30, 30]
    assert sizes[masks["small"]].max() < sizes[masks["large"]].min()


def test_plan_fine_tunes_each_seed_from_its_own_pre_training():
    runs = {r.name: r for r in claims.plan({"claims": ["a", "f"], "seeds": [0, 1],
                                             "budget": "toy"})}
    assert set(runs) == {f"{a}_s{s}" for a in ("pretrain", "cropflip", "all6", "fc", "last",
                                               "scratch") for s in (0, 1)}
    assert runs["all6_s1"].init == "pretrain_s1" and runs["scratch_s0"].init == ""
    assert "seed=1" in runs["all6_s1"].arg and "budget=toy" in runs["all6_s1"].arg


def _reproduce(out, *extra, **popen):
    # `python -m deep_image.reproduce ...`, with Ctrl-C handled as in a terminal even when the
    # suite itself runs in the background (a shell starts it, and so its children, with
    # SIGINT ignored)
    cmd = [sys.executable, "-c", _MAIN_WITH_SIGINT, f"--out={out}", "--budget=toy",
           "--claims=a,e", "--seeds=2", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, **popen)


_MAIN_WITH_SIGINT = ("import runpy, signal; signal.signal(signal.SIGINT, "
                     "signal.default_int_handler); runpy.run_module('deep_image.reproduce', "
                     "run_name='__main__', alter_sys=True)")


def _mtimes(out):
    runs = os.path.join(out, "runs")
    if not os.path.isdir(runs):
        return {}
    return {n: os.path.getmtime(os.path.join(runs, n, "result.json")) for n in os.listdir(runs)
            if os.path.isfile(os.path.join(runs, n, "result.json"))}


def test_toy_study_end_to_end_interrupted_resumed_and_cached(tmp_path):
    out = tmp_path / "claims"
    # interrupted as a user would (Ctrl-C reaches the whole process group) after a first run
    proc = _reproduce(out, start_new_session=True)
    t0 = time.time()
    while not _mtimes(out):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 300, "no run finished"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "rerun the same command" in err, err[-3000:]
    before = _mtimes(out)
    assert before and len(before) < 6
    # resumed: finishes, keeps the runs that were done
    proc = _reproduce(out)
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    after = _mtimes(out)
    assert len(after) == 6 and all(after[n] == t for n, t in before.items())
    report = (out / "claims.md").read_text()
    for heading in ("## The rule", "## a. ", "## e. ", "## Runs"):
        assert heading in report
    assert report.count("**Verdict: ") == 2 and "(quick)" in report
    data = json.loads((out / "claims.json").read_text())
    assert set(data["claims"]) == {"a", "e"} and data["meta"]["seeds"] == [0, 1]
    for key in ("a", "e"):
        assert os.path.getsize(out / f"claim_{key}.png") > 1000
    e = data["claims"]["e"]["rows"]
    assert all(len(row["per_seed"]) == 2 for row in e)
    # cached: a rerun trains nothing
    proc = _reproduce(out)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "6 runs, 0 to do" in stdout and "started" not in stdout
    assert _mtimes(out) == after
