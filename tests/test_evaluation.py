"""Testing as the paper tests (§5.1), against values computed independently: the FC-as-conv score
map against numpy FC layers on every window, multi-scale + flip posteriors against a per-image
reference, ensembles averaging posteriors (not logits), the CUB box crop end to end, metrics on
an unbalanced set by hand, and the evaluate / ensemble / predict commands on tiny runs."""

import json
import os

import cv2
import jax
import numpy as np
import pytest

from conftest import build_model, cli, init_params, read_state, records, run_train, tiny_config
from deep_image.data import sources, transforms
from deep_image.data.errors import DataError
from deep_image.evaluation import metrics
from deep_image.evaluation.evaluator import Evaluator, Protocol
from test_sources import _fgvc

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _normalized(images):
    return ((np.asarray(images, np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def _relu(x):
    return np.maximum(x, 0)


# ----------------------------------------------------------------------------- dense scores

def test_dense_score_map_is_the_fc_layers_on_every_window():
    model = build_model("vgg16", 10, width=0.125, input_size=64, dtype="float32", dropout_rate=0.5)
    params = init_params(model, 0)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 64, 64, 3))
    # at the training size the map is 1x1 and equals the original net
    np.testing.assert_allclose(model.dense_scores(params, x), model.apply(params, x),
                               rtol=1e-5, atol=1e-5)
    big = jax.random.normal(jax.random.PRNGKey(2), (2, 96, 128, 3))
    feats = np.asarray(model.module(params).features(big), np.float64)    # (2, 3, 4, C)
    p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
    side = 2                                                             # 64 / 32
    maps = []
    for i in range(feats.shape[1] - side + 1):
        for j in range(feats.shape[2] - side + 1):
            h = feats[:, i:i + side, j:j + side].reshape(2, -1)          # (H, W, C) order
            h = _relu(h @ p["fc1"]["kernel"] + p["fc1"]["bias"])
            h = _relu(h @ p["fc2"]["kernel"] + p["fc2"]["bias"])
            maps.append(h @ p["fc3"]["kernel"] + p["fc3"]["bias"])
    assert len(maps) == 6                                                # a 2x3 score map
    np.testing.assert_allclose(model.dense_scores(params, big), np.mean(maps, 0),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least 64px"):
        model.dense_scores(params, x[:, :32, :32])


@pytest.fixture(scope="module")
def small():
    config = tiny_config(eval_batch_size=4, data__synthetic__test_size=7)
    source = sources.get_source(config.data, "test")
    model = build_model("vgg11", 16, width=0.125, input_size=config.data.crop, dtype="float32",
                  dropout_rate=0.5)
    return config, source, model, init_params(model, 3)


def test_multiscale_flip_posteriors_equal_a_per_image_reference(small):
    config, source, model, params = small
    probs, labels = Evaluator(model, config, source, Protocol(True, (40, 48), True),
                              cache=False).posteriors(params)
    expected = []
    for i in range(len(source)):
        views = []
        for scale in (40, 48):
            image = _normalized(transforms.resize(source[i]["image"], scale))
            for view in (image, image[:, ::-1]):
                views.append(_softmax(model.dense_scores(params, view[None]))[0])
        expected.append(np.mean(views, 0))
    assert labels.tolist() == [source[i]["label"] for i in range(len(source))]
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    # the scales and the flip matter: without them the posteriors differ
    single = Evaluator(model, config, source, Protocol(True, (40,)), cache=False)
    assert np.abs(single.posteriors(params)[0] - probs).max() > 1e-3


def test_center_crop_protocol_equals_the_net_on_centre_crops(small):
    config, source, model, params = small
    probs, _ = Evaluator(model, config, source, Protocol(False, (40,), True),
                         cache=False).posteriors(params)
    crops = [transforms.center_crop(transforms.resize(source[i]["image"], 40), 32)
             for i in range(len(source))]
    x = _normalized(np.stack(crops))
    expected = (_softmax(model.apply(params, x)) + _softmax(model.apply(params, x[:, :, ::-1]))) / 2
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- boxes

def test_bbox_protocol_crops_each_test_image_to_its_box(tmp_path):
    root, _ = _fgvc(tmp_path)
    config = tiny_config(data__source="aircraft", data__root=str(root), eval_batch_size=4)
    source = sources.get_source(config.data, "test")
    model = build_model("vgg11", 3, width=0.125, input_size=32, dtype="float32", dropout_rate=0.5)
    params = init_params(model, 0)
    got, _ = Evaluator(model, config, source, Protocol(False, (40,), bbox=True),
                       cache=False).posteriors(params)
    whole, _ = Evaluator(model, config, source, Protocol(False, (40,)),
                         cache=False).posteriors(params)
    expected = []
    for i in range(len(source)):
        ex = source[i]
        x0, y0, x1, y1 = (int(v) for v in ex["bbox"])           # 5 6 70 50, in the image
        cut = transforms.center_crop(cv2.resize(ex["image"][y0:y1, x0:x1], (40, 40),
                                                interpolation=cv2.INTER_AREA), 32)
        expected.append(_softmax(model.apply(params, _normalized(cut[None])))[0])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(got - whole).max() > 1e-4                      # the box changed the input


def test_bbox_without_boxes_is_an_error_not_a_silent_whole_image(small):
    config, source, model, params = small                       # SynthBirds has no boxes
    with pytest.raises(DataError, match="has no box"):
        Evaluator(model, config, source, Protocol(False, (40,), bbox=True),
                  cache=False).posteriors(params)
    with pytest.raises(DataError, match="leaves no pixels"):
        transforms.crop_to_box(np.zeros((10, 10, 3), np.uint8), (20, 20, 30, 30))


# ----------------------------------------------------------------------------- metrics

def test_metrics_on_an_unbalanced_set_by_hand():
    # 6 classes; class 0 has 4 examples, class 1 two, class 2 one, classes 3-5 none.
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    ranks = [  # classes in order of decreasing posterior, per example
        [0, 1, 2, 3, 4, 5],     # class 0 at rank 1: top-1 hit
        [1, 0, 2, 3, 4, 5],     # class 0 at rank 2: top-5 hit only
        [1, 2, 3, 4, 5, 0],     # class 0 at rank 6: miss
        [0, 5, 4, 3, 2, 1],     # class 0 at rank 1: top-1 hit
        [2, 3, 4, 5, 0, 1],     # class 1 at rank 6: miss
        [1, 0, 2, 3, 4, 5],     # class 1 at rank 1: top-1 hit
        [5, 4, 3, 1, 2, 0],     # class 2 at rank 5: top-5 hit only (not a top-4 hit)
    ]
    probs = np.zeros((7, 6))
    for i, order in enumerate(ranks):
        probs[i, order] = np.linspace(0.4, 0.05, 6) / np.linspace(0.4, 0.05, 6).sum()
    values = metrics.of_posteriors(probs, labels).summary("eval", "top5_error")
    assert values["eval/top1"] == pytest.approx(3 / 7)
    assert values["eval/mean_per_class"] == pytest.approx((2 / 4 + 1 / 2 + 0 / 1) / 3)
    assert values["eval/top5"] == pytest.approx(5 / 7)
    assert values["eval/top5_error"] == pytest.approx(2 / 7)
    assert values["eval/headline"] == pytest.approx(2 / 7)
    assert values["eval/examples"] == 7
    nll = -np.log(probs[np.arange(7), labels]).mean()
    assert values["eval/loss"] == pytest.approx(nll, rel=1e-5)


def test_padding_rows_count_nothing():
    """An evaluation batch padded to its size (mask 0: evaluator.py's padded batches): the
    padding rows, whatever their posteriors and labels, add nothing to any sum; the 3 real
    rows give the counts by hand."""
    import jax.numpy as jnp
    probs = np.full((5, 4), 0.1, np.float32)
    probs[[0, 1, 2, 3, 4], [0, 1, 3, 2, 2]] = 0.7        # row i's argmax; rows 3-4 padding
    labels = np.array([0, 1, 2, 2, 2])                   # real: hit, hit, miss
    mask = np.array([True, True, True, False, False])
    sums = metrics.class_sums(jnp.asarray(probs), jnp.asarray(labels), jnp.asarray(mask))
    np.testing.assert_array_equal(sums["count"], [1, 1, 1, 0])
    np.testing.assert_array_equal(sums["top1"], [1, 1, 0, 0])
    assert float(sums["loss"]) == pytest.approx(-2 * np.log(0.7) - np.log(0.1), rel=1e-6)


# ----------------------------------------------------------------------------- commands



STEPS = 80


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs of different seeds that memorize 32 images: different, confident models
    (40 steps of the plain tiny run predict one class for every image)."""
    out = []
    for seed in (0, 1):
        wd = tmp_path_factory.mktemp(f"run{seed}")
        proc = run_train(wd, f"--config.seed={seed}", f"--config.total_steps={STEPS}",
                         "--config.data.synthetic.train_size=32", "--config.model.dropout_rate=0",
                         "--config.data.augment.crop=False", "--config.data.augment.flip=False",
                         "--config.checkpoint_every_steps=40")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.append(str(wd))
    return out


def _params(workdir, step=STEPS):
    return read_state(workdir, step)["params"]


def _test_crops(config, split="test"):
    source = sources.get_source(config.data, split)
    crops = [transforms.center_crop(transforms.resize(source[i]["image"], config.data.scale),
                                    config.data.crop) for i in range(len(source))]
    return _normalized(np.stack(crops)), np.array([source[i]["label"] for i in range(len(source))])


def test_evaluate_center_crop_matches_training_eval(runs):
    proc = cli("deep_image.evaluate", f"--workdir={runs[0]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == "", proc.stderr[-2000:]        # nothing but our output
    result = json.load(open(os.path.join(runs[0], "eval.json")))
    last = [json.loads(l) for l in open(os.path.join(runs[0], "metrics.jsonl"))
            if "eval/top1" in l][-1]
    assert result["eval/top1"] == pytest.approx(last["eval/top1"], abs=1e-9)
    assert result["split"] == "test" and result["step"] == STEPS
    # and both equal the net on the centre crops, counted by hand
    config = tiny_config()
    x, labels = _test_crops(config)
    model = build_model("vgg11", 16, width=1 / 16, input_size=32, dtype="float32", dropout_rate=0.5)
    logits = np.asarray(model.apply(_params(runs[0]), x))
    assert result["eval/top1"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    per_class = [np.mean(logits.argmax(1)[labels == c] == c) for c in np.unique(labels)]
    assert result["eval/mean_per_class"] == pytest.approx(np.mean(per_class))
    assert result["eval/examples"] == 50 and len(result["per_class"]) == 16


def _tiny_model():
    return build_model("vgg11", 16, width=1 / 16, input_size=32, dtype="float32",
                       dropout_rate=0.5)


def test_evaluate_split_scores_the_split_it_names(runs):
    # the tiny run's val split has 40 examples, its test split (the default) 50
    proc = cli("deep_image.evaluate", f"--workdir={runs[0]}", "--split=val")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{runs[0]}  step {STEPS}  split val  " in proc.stdout, proc.stdout
    result = json.load(open(os.path.join(runs[0], "eval.json")))
    assert result["split"] == "val" and result["eval/examples"] == 40
    # the net on the val split's centre crops, counted by hand
    x, labels = _test_crops(tiny_config(), "val")
    predicted = np.asarray(_tiny_model().apply(_params(runs[0]), x)).argmax(1)
    assert len(labels) == 40
    assert result["eval/top1"] == pytest.approx(np.mean(predicted == labels))
    per_class = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
    assert result["eval/mean_per_class"] == pytest.approx(np.mean(per_class))
    # and the training loop's last evaluation of the val split (the schedule's) agrees
    last_val = [r for r in records(runs[0]) if "val/top1" in r][-1]
    assert last_val["step"] == STEPS
    assert result["eval/top1"] == pytest.approx(last_val["val/top1"], abs=1e-9)


def test_evaluate_dense_multiscale_flip_headline(runs):
    proc = cli("deep_image.evaluate", f"--workdir={runs[0]}",
                "--config=experiments/synthetic.py:tiny", "--config.eval.protocol=dense",
                "--config.eval.scales=(40,48)", "--config.eval.flip=True",
                "--config.eval.headline=mean_per_class")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(os.path.join(runs[0], "eval.json")))
    assert "dense, scales (40, 48) +flip" in proc.stdout
    assert result["eval/headline_name"] == "mean per-class accuracy"
    per_class = [a for a in result["per_class"].values() if a is not None]
    assert result["eval/headline"] == pytest.approx(np.mean(per_class))
    assert result["eval/headline"] != pytest.approx(result["eval/top1"])   # unbalanced split


def test_evaluate_with_boxes_on_a_dataset_without_is_one_line(runs):
    proc = cli("deep_image.evaluate", f"--workdir={runs[0]}",
                "--config=experiments/synthetic.py:tiny", "--config.eval.bbox=True")
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "has no box" in lines[0], lines


def test_ensemble_averages_posteriors_not_logits(runs, tmp_path):
    out, npz = tmp_path / "ens.json", tmp_path / "ens.npz"
    proc = cli("deep_image.ensemble", f"--workdirs={runs[0]},{runs[1]}", f"--out={out}",
                f"--posteriors={npz}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = tiny_config()
    x, labels = _test_crops(config)
    model = build_model("vgg11", 16, width=1 / 16, input_size=32, dtype="float32", dropout_rate=0.5)
    logits = [np.asarray(model.apply(_params(wd), x), np.float64) for wd in runs]
    by_posteriors = (_softmax(logits[0]) + _softmax(logits[1])) / 2
    by_logits = _softmax((logits[0] + logits[1]) / 2)
    disagree = by_posteriors.argmax(1) != by_logits.argmax(1)
    assert disagree.any(), "the two members must tell the two averages apart"
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["labels"], labels)
    np.testing.assert_allclose(saved["ensemble"], by_posteriors, rtol=1e-4, atol=1e-6)
    rows = json.load(open(out))["metrics"]
    assert rows["ensemble"]["eval/top1"] == pytest.approx(
        np.mean(by_posteriors.argmax(1) == labels))
    for wd, z in zip(runs, logits, strict=True):
        assert rows[wd]["eval/top1"] == pytest.approx(np.mean(z.argmax(1) == labels))


def test_ensemble_split_scores_every_member_on_the_split_it_names(runs, tmp_path):
    out, npz = tmp_path / "ens.json", tmp_path / "ens.npz"
    proc = cli("deep_image.ensemble", f"--workdirs={runs[0]},{runs[1]}", "--split=val",
               f"--out={out}", f"--posteriors={npz}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    x, labels = _test_crops(tiny_config(), "val")
    model = _tiny_model()
    members = [_softmax(np.asarray(model.apply(_params(wd), x), np.float64)) for wd in runs]
    saved = np.load(npz)
    assert len(labels) == 40
    np.testing.assert_array_equal(saved["labels"], labels)
    np.testing.assert_allclose(saved["members"], members, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(saved["ensemble"], np.mean(members, 0), rtol=1e-4, atol=1e-6)
    written = json.load(open(out))
    assert written["split"] == "val"
    assert written["metrics"]["ensemble"]["eval/examples"] == 40
    assert written["metrics"]["ensemble"]["eval/top1"] == pytest.approx(
        np.mean(np.mean(members, 0).argmax(1) == labels))


def test_predict_reports_bad_files_and_predicts_the_rest(runs, tmp_path):
    from deep_image.data.synthetic import SynthBirdsSpec, render
    good = []
    for i in range(2):
        path = tmp_path / f"bird{i}.png"
        cv2.imwrite(str(path), render(SynthBirdsSpec(native_size=48), "test", i)[0][..., ::-1])
        good.append(str(path))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    proc = cli("deep_image.predict", f"--workdir={runs[0]}", "--top=3", good[0], str(bad),
                good[1])
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert [l.split(":")[0] for l in lines] == good
    assert all(l.count("warbler") == 3 for l in lines)
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [
        f"error: {bad}: not a decodable image"]                   # nothing but our line
    # the printed top class is the net's on the image's centre crop
    config = tiny_config()
    model = build_model("vgg11", 16, width=1 / 16, input_size=32, dtype="float32", dropout_rate=0.5)
    names = sources.get_source(config.data, "test").class_names
    for path, line in zip(good, lines, strict=True):
        image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        crop = transforms.center_crop(transforms.resize(image, 40), 32)
        p = _softmax(model.apply(_params(runs[0]), _normalized(crop[None])))[0]
        assert line.split(": ")[1].startswith(f"{names[p.argmax()]} {p.max():.3f}")
