"""Testing as the paper tests (§5.1): dense (FC-as-conv) scores, multi-scale + flip, the
evaluate / ensemble / predict commands on tiny trained runs."""

import json
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from conftest import REPO, run_train
from deep_image.evaluation import dense
from deep_image.models import Model


def test_dense_scores_equal_the_original_net_at_the_training_size():
    model = Model("vgg16", 10, width=0.125, input_size=64, dtype="float32", dropout_rate=0.5)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 64, 64, 3))
    np.testing.assert_allclose(dense.dense_scores(model, params, x), model.apply(params, x),
                               rtol=1e-5, atol=1e-5)
    big = jax.random.normal(jax.random.PRNGKey(2), (2, 96, 128, 3))
    assert dense.dense_scores(model, params, big).shape == (2, 10)     # a 2x3 score map
    with pytest.raises(ValueError, match="at least 64px"):
        dense.dense_scores(model, params, x[:, :32, :32])


def test_flip_averages_the_posteriors_of_both_views():
    model = Model("vgg11", 4, width=0.125, input_size=32, dtype="float32", dropout_rate=0.5)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    both = dense.posteriors(model, params, x, dense=True, flip=True)
    a = jax.nn.softmax(model.apply(params, x))
    b = jax.nn.softmax(model.apply(params, x[:, :, ::-1]))
    np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-5, atol=1e-6)


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = []
    for seed in (0, 1):
        wd = tmp_path_factory.mktemp(f"run{seed}")
        proc = run_train(wd, f"--config.seed={seed}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.append(str(wd))
    return out


def test_evaluate_center_crop_matches_training_eval(runs):
    proc = _cli("deep_image.evaluate", f"--workdir={runs[0]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(os.path.join(runs[0], "eval.json")))
    last = [json.loads(l) for l in open(os.path.join(runs[0], "metrics.jsonl"))
            if "eval/top1" in l][-1]
    assert result["eval/top1"] == pytest.approx(last["eval/top1"], abs=1e-9)
    assert result["eval/examples"] == 50 and result["step"] == 40
    assert result["eval/headline_name"] == "top-1 accuracy"
    assert len(result["per_class"]) == 16


def test_evaluate_dense_multiscale_flip(runs):
    proc = _cli("deep_image.evaluate", f"--workdir={runs[0]}",
                "--config=experiments/synthetic.py:tiny", "--config.eval.protocol=dense",
                "--config.eval.scales=(40,48)", "--config.eval.flip=True",
                "--config.eval.headline=mean_per_class")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(os.path.join(runs[0], "eval.json")))
    assert result["eval/examples"] == 50
    assert result["eval/headline"] == result["eval/mean_per_class"]
    assert "scales (40, 48) +flip" in proc.stdout


def test_ensemble_of_two_runs(runs, tmp_path):
    out = tmp_path / "ens.json"
    proc = _cli("deep_image.ensemble", f"--workdirs={runs[0]},{runs[1]}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.load(open(out))["metrics"]
    assert set(rows) == {runs[0], runs[1], "ensemble"}
    assert all(r["eval/examples"] == 50 for r in rows.values())
    same = tmp_path / "same.json"
    proc = _cli("deep_image.ensemble", f"--workdirs={runs[0]},{runs[0]}", f"--out={same}")
    rows = json.load(open(same))["metrics"]
    assert rows["ensemble"]["eval/top1"] == rows[runs[0]]["eval/top1"]   # mean of equals


def test_predict_reports_bad_files_and_predicts_the_rest(runs, tmp_path):
    from deep_image.data.synthetic import SynthBirdsSpec, render
    good = []
    for i in range(2):
        path = tmp_path / f"bird{i}.png"
        cv2.imwrite(str(path), render(SynthBirdsSpec(native_size=48), "test", i)[0][..., ::-1])
        good.append(str(path))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    proc = _cli("deep_image.predict", f"--workdir={runs[0]}", "--top=3", good[0], str(bad),
                good[1])
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert [l.split(":")[0] for l in lines] == good
    assert all(l.count("warbler") == 3 for l in lines)
    assert f"error: {bad}" in proc.stderr
