"""Every benchmark's reader, on data the tests make: TFDS mock data for the TFDS datasets, tiny
archives in the official layouts for FGVC-Aircraft and MIT Indoor 67, and an image folder with
every kind of bad file. Fixture images carry their class in their pixels (`label_colour`), so
every example a reader returns is checked against the label it pairs it with. A few training
steps run from each source, and the reported top-1 and loss are computed again by hand."""

import logging
import os
import shutil

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_train, tiny_config
from deep_image.data import archives, decode, pipeline, sources, transforms
from deep_image.data.errors import DataError
from deep_image.training import loop
from deep_image.training.checkpoint import Trained

# ----------------------------------------------------------------------------- label codes
# Class k is painted in RGB with channel b bright (HIGH) when bit b of k is set, else dark (LOW):
# 8 classes at most, 175 levels apart, which JPEG never confuses. Boxes are painted BOX_GREY,
# which is no class's colour (87+ levels from every code value).
LOW, HIGH, BOX_GREY = 40, 215, 128


def label_colour(k):
    """The RGB colour of class k."""
    if not 0 <= k < 8:
        raise ValueError(f"class {k}: the code has 3 bits")
    return tuple(HIGH if k >> b & 1 else LOW for b in range(3))


def decode_label(image):
    """The class an RGB image's pixels encode: the code of most of its pixels that are clearly
    low or high in every channel (box grey and blurred edges are neither)."""
    px = image.reshape(-1, 3).astype(int)
    coded = px[np.all(np.abs(px - 127.5) > 50, axis=1)]
    assert len(coded) > 0.2 * len(px), "the image shows no label code"
    codes = (coded > 127.5) @ np.array([1, 2, 4])
    counts = np.bincount(codes, minlength=8)
    assert counts.max() > 0.95 * len(codes), f"more than one class painted: {counts}"
    return int(counts.argmax())


def box_in_pixels(image):
    """(xmin, ymin, xmax, ymax) of the BOX_GREY pixels (exclusive max)."""
    grey = np.all(np.abs(image.astype(int) - BOX_GREY) < 30, axis=2)
    ys, xs = np.flatnonzero(grey.any(1)), np.flatnonzero(grey.any(0))
    assert len(ys) and len(xs), "no box painted"
    return (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)


def assert_pixels_match_labels(src, *, boxes=False):
    """Every example of `src`: its pixels' class is its label (and labels() says the same);
    with `boxes`, the box it carries is the one painted in it (to a pixel: JPEG blurs edges)."""
    labels = []
    for i in range(len(src)):
        ex = src[i]
        shown = decode_label(ex["image"])
        assert shown == ex["label"], f"{getattr(src, 'name', src)}[{i}] shows class {shown}"
        labels.append(ex["label"])
        if boxes:
            painted = box_in_pixels(ex["image"])
            assert np.abs(np.subtract(painted, ex["bbox"])).max() <= 1, (
                f"{getattr(src, 'name', src)}[{i}] has box {ex['bbox']}, its pixels {painted}")
    assert list(src.labels()) == labels
    return labels


def _jpeg(path, h=60, w=80, label=0, box=None, banner=0):
    """A JPEG of class `label` (its colour everywhere), a grey `box` (xmin, ymin, xmax, ymax)
    and a white strip of `banner` rows at the bottom (FGVC's copyright banner)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = label_colour(label)
    if box is not None:
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = BOX_GREY
    if banner:
        image[-banner:] = 255
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image[..., ::-1])         # OpenCV writes BGR


def _hand_count(workdir, config, coded):
    """The top-1 and the mean negative log-likelihood of the run's final model on its eval
    split, computed here: each example's centre crop through the model, its argmax and softmax
    against the label its pixels encode (`coded`) or the source's label; with the number of
    examples and of those within float noise of a tie."""
    trained = Trained(str(workdir))
    src = sources.get_source(config.data, config.data.eval_split)
    crops, truth = [], []
    for i in range(len(src)):
        ex = src[i]
        if ex is None:
            continue
        crops.append(transforms.eval_transform(ex, scale=config.data.scale,
                                               crop=config.data.crop)["image"])
        truth.append(decode_label(ex["image"]) if coded else ex["label"])
    x = (np.stack(crops) / 255.0 - np.array(config.data.mean)) / np.array(config.data.std)
    logits = np.asarray(trained.model.apply(trained.params, jnp.asarray(x, jnp.float32),
                                            stats=trained.stats))
    top2 = np.sort(logits, axis=1)[:, -2:]
    ties = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -log_p[np.arange(len(truth)), truth].mean()
    return float(np.mean(logits.argmax(1) == np.array(truth))), float(nll), len(truth), ties


# Enough training to tell the fixtures' colours apart: VGG-11 x1/8, no dropout, gradients clipped
# (the tiny net's loss spikes without), batch 4. The FGVC fixture reached top-1 1.0 at 40 steps
# under each of seeds 0-3; 60 for a margin.
LEARN = dict(total_steps=60, model__width=1 / 8, model__dropout_rate=0.0,
             optimizer__grad_clip_norm=1.0)


def _train_steps(workdir, *, total_steps=3, coded=("train", "eval"), **overrides):
    """`total_steps` training steps from a source. The training batches carry their images' own
    labels (when the train split is `coded`), and the reported top-1 and loss equal a count by
    hand (against the pixels' labels when the eval split is `coded`)."""
    steps = total_steps
    config = tiny_config(total_steps=steps, eval_every_steps=steps, checkpoint_every_steps=steps,
                         batch_size=4, eval_batch_size=4, **overrides)
    if "train" in coded:
        train = sources.get_source(config.data, config.data.train_split)
        batch = next(iter(pipeline.train_dataset(train, config)))
        assert [decode_label(im) for im in batch["image"]] == batch["label"].tolist()
    result = loop.train_and_evaluate(config, str(workdir))
    assert result["step"] == steps
    top1, loss, n, ties = _hand_count(workdir, config, "eval" in coded)
    assert result["eval/examples"] == n
    assert abs(result["eval/top1"] - top1) <= ties / n + 1e-6, (result["eval/top1"], top1)
    # the loss too: it moves with every example's label even when a barely trained net gives
    # every image the same class (and any labelling the same top-1)
    assert result["eval/loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    return result


# ----------------------------------------------------------------------------- TFDS

TFDS_CASES = [   # source, classes, train split, eval split
    ("cub", 200, "train", "test"),
    ("flowers102", 102, "train", "test"),
    ("pets", 37, "train", "test"),
    ("imagenet", 1000, "train", "validation"),
]


@pytest.mark.parametrize("name,classes,train,test", TFDS_CASES)
def test_tfds_sources_on_mock_data(tmp_path, name, classes, train, test):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        cfg = tiny_config(data__source=name, data__train_split=train, data__eval_split=test,
                          data__val_split="")
        src = sources.get_source(cfg.data, train)
        assert len(src) == 12 and len(src.class_names) == classes
        ex = src[0]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 3
        assert 0 <= ex["label"] < classes
        if name == "cub":
            assert len(ex["bbox"]) == 4     # pixels; mock boxes are random, so no order
        # mock images are 5-49 px, smaller than the 32 px crop: resized up, never a crash
        _train_steps(tmp_path, coded=(), data__source=name, data__train_split=train,
                     data__eval_split=test, data__val_split="")


def test_tfds_not_prepared_says_how(tmp_path):
    cfg = tiny_config(data__source="cub", data__root=str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="tfds build caltech_birds2011"):
        sources.get_source(cfg.data, "train")


# ----------------------------------------------------------------------------- FGVC-Aircraft

def _fgvc_box(i):
    """Image i's box (xmin, ymin, xmax, ymax): another for every image, above the banner, and
    over 40x40 pixels (test_evaluation's reference shrinks it to 40x40 with INTER_AREA)."""
    x0, y0 = 4 + 2 * i, 4 + 2 * (i % 4)
    return (x0, y0, x0 + 44, y0 + 40 + 2 * (i % 3))


def _fgvc(root, missing=()):
    """15 images, image i of class i % 3 (painted so), its own box, the banner at the bottom.
    test: images 0-2 and 12-14; train: the odd ones of 3-11, val: the even ones."""
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "Cessna 172"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    lines = {"train": [], "val": [], "trainval": [], "test": []}
    boxes = []
    for i in range(15):
        name = f"{1000000 + i:07d}"
        # the official lists: trainval is train + val
        splits = ("test",) if i < 3 or i >= 12 else ("train" if i % 2 else "val", "trainval")
        for split in splits:
            lines[split].append(f"{name} {classes[i % 3]}")
        boxes.append(f"{name} " + " ".join(map(str, _fgvc_box(i))))
        if name not in missing:
            _jpeg(data / "images" / f"{name}.jpg", h=80, label=i % 3, box=_fgvc_box(i),
                  banner=archives.FGVC_BANNER_PIXELS)
    for split, ls in lines.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(ls) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root / "fgvc-aircraft-2013b", classes


def test_fgvc_aircraft_layout_banner_boxes_and_missing_files(tmp_path, caplog):
    root, classes = _fgvc(tmp_path, missing={"1000004"})
    with caplog.at_level(logging.WARNING):
        src = archives.fgvc_aircraft(str(root), "trainval")
    assert src.class_names == classes
    assert len(src) == 8 and src.skips.count == 1             # 9 listed, one missing
    assert "1000004.jpg (listed but missing)" in caplog.text
    ex = src[0]                                                # image 3
    assert ex["image"].shape == (80 - archives.FGVC_BANNER_PIXELS, 80, 3)
    assert ex["image"][-1].max() < 250                         # the banner is gone
    assert ex["bbox"] == (10.0, 10.0, 54.0, 50.0)              # images_box.txt, as listed
    # every example of every split: the class its pixels show, the box painted in it
    expected = {"train": [0, 2, 1, 0, 2], "val": [0, 2, 1], "trainval": [0, 2, 0, 1, 2, 0, 1, 2],
                "test": [0, 1, 2, 0, 1, 2]}                    # by hand from the lists
    for split, labels in expected.items():
        assert assert_pixels_match_labels(archives.fgvc_aircraft(str(root), split),
                                          boxes=True) == labels, split
    # eval/top1 = 1 on six test images (chance: 1/3): trained long enough to learn the
    # colours, the test split's labels mean what the training split's do
    result = _train_steps(tmp_path / "run", **LEARN, data__source="aircraft",
                          data__root=str(root), data__train_split="trainval",
                          data__eval_split="test", data__val_split="")
    assert result["eval/top1"] == 1.0, result


# ----------------------------------------------------------------------------- MIT Indoor 67

def _indoor(root):
    """4 images per class, painted with their class; the first of each is in the test list."""
    classes = ["airport_inside", "bakery", "bar"]
    train, test = [], []
    for k, c in enumerate(classes):
        for i in range(4):
            rel = f"{c}/img_{i}.jpg"
            _jpeg(root / "Images" / rel, label=k)
            (test if i == 0 else train).append(rel)
    (root / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "TestImages.txt").write_text("\n".join(test) + "\n")
    return root, classes


def test_mit_indoor67_layout(tmp_path):
    root, classes = _indoor(tmp_path / "indoor")
    src = archives.mit_indoor67(str(root), "train")
    assert src.class_names == classes and len(src) == 9
    assert assert_pixels_match_labels(src) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert assert_pixels_match_labels(archives.mit_indoor67(str(root), "test")) == [0, 1, 2]
    _train_steps(tmp_path / "run", data__source="indoor67", data__root=str(root),
                 data__eval_split="test", data__val_split="")


# ----------------------------------------------------------------------------- bad files

def _bad_folder(root):
    from PIL import Image
    good = root / "train" / "good"
    odd = root / "train" / "odd"
    _jpeg(good / "a.jpg")
    _jpeg(good / "b.jpg")
    odd.mkdir(parents=True)
    (odd / "corrupt.jpg").write_bytes(os.urandom(500))
    (odd / "truncated.jpg").write_bytes((good / "a.jpg").read_bytes()[:120])
    (odd / "empty.png").write_bytes(b"")
    Image.new("CMYK", (30, 20), (0, 255, 0, 0)).save(odd / "cmyk.jpg")
    Image.new("L", (25, 25), 90).save(odd / "gray.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(odd / "alpha.png")       # transparent
    cv2.imwrite(str(odd / "deep.png"), np.full((10, 12, 3), 40000, np.uint16))
    cv2.imwrite(str(odd / "tiny.jpg"), np.zeros((5, 5, 3), np.uint8))
    for split in ("test",):
        _jpeg(root / split / "good" / "c.jpg", label=0)
        _jpeg(root / split / "odd" / "d.jpg", label=1)


def test_bad_images_decode_or_are_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "folder"
    _bad_folder(root)
    src = archives.image_folder(str(root), "train")
    assert src.class_names == ["good", "odd"]
    by_name = {os.path.basename(src._records[i][0]): i for i in range(len(src))}
    with caplog.at_level(logging.WARNING):
        out = {name: src[i] for name, i in by_name.items()}
    for name in ("corrupt.jpg", "truncated.jpg", "empty.png"):
        assert out[name] is None, name
    assert src.skips.count == 3 and "corrupt.jpg" in caplog.text
    for name in ("cmyk.jpg", "gray.png", "alpha.png", "deep.png", "tiny.jpg", "a.jpg"):
        image = out[name]["image"]
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    assert out["alpha.png"]["image"][0, 0].tolist() == [255, 255, 255]      # over white
    assert out["gray.png"]["image"][0, 0].tolist() == [90, 90, 90]
    assert out["cmyk.jpg"]["image"][0, 0, 1] < 60 and out["cmyk.jpg"]["image"][0, 0, 0] > 200
    assert all(out[n]["label"] == 1 for n in ("cmyk.jpg", "gray.png", "tiny.jpg"))
    assert [decode_label(out[n]["image"]) for n in ("a.jpg", "b.jpg")] == [
        out["a.jpg"]["label"], out["b.jpg"]["label"]] == [0, 0]
    assert assert_pixels_match_labels(archives.image_folder(str(root), "test")) == [0, 1]
    _train_steps(tmp_path / "run", coded=("eval",), data__source="folder",
                 data__root=str(root), data__eval_split="test", data__val_split="")


def test_16_bit_images_keep_their_high_byte_in_rgb_order():
    """A 16-bit PNG (OpenCV writes BGR) becomes 8-bit RGB by its high byte: value // 256."""
    bgr = np.empty((4, 5, 3), np.uint16)
    bgr[...] = (1000, 40000, 65535)
    ok, data = cv2.imencode(".png", bgr)
    assert ok
    image = decode.decode(data.tobytes())
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
    assert image[2, 3].tolist() == [65535 // 256, 40000 // 256, 1000 // 256] == [255, 156, 3]
    gray = decode.decode(cv2.imencode(".png", np.full((3, 3), 513, np.uint16))[1].tobytes())
    assert gray[0, 0].tolist() == [2, 2, 2]


def test_missing_dataset_directory_fails_at_start_with_how_to(tmp_path):
    for source, hint in (("aircraft", "fgvc-aircraft-2013b"), ("indoor67", "Indoor"),
                         ("folder", "ROOT/<split>/<class name>")):
        proc = run_train(tmp_path / "w", f"--config.data.source={source}",
                         f"--config.data.root={tmp_path / 'nowhere'}")
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and hint in lines[0], lines
        assert not (tmp_path / "w").exists()


def test_a_vanished_data_directory_is_an_error_not_endless_skips(tmp_path):
    root = tmp_path / "folder"
    _bad_folder(root)
    src = archives.image_folder(str(root), "train")
    assert src[0] is not None
    shutil.rmtree(root)
    with pytest.raises(DataError, match="has vanished during the run"):
        src[0]
    counter = decode.SkipCounter("some/source")
    for i in range(decode.SkipCounter.GIVE_UP_AFTER - 1):
        counter.read()
        counter.skip(f"record {i}", "unreadable")              # warnings, no error yet
    counter.read()
    with pytest.raises(DataError, match="is the data still there"):
        counter.skip("record 99", "unreadable")


def test_capture_size_takes_every_split_at_a_lower_resolution():
    """config.data.capture_size: each image area-averaged to N px on its shorter side (numpy
    block means, for a 2x reduction), labels and sizes untouched, every split; 0 keeps them."""
    c = tiny_config(data__synthetic__native_size=48, data__synthetic__object_scale=(0.2, 0.7))
    full = {s: sources.get_source(c.data, s) for s in ("train", "val", "test")}
    c.data.capture_size = 24
    low = {s: sources.get_source(c.data, s) for s in ("train", "val", "test")}
    for split in full:
        a, b = full[split][3], low[split][3]
        assert a["image"].shape == (48, 48, 3) and b["image"].shape == (24, 24, 3)
        blocks = a["image"].astype(np.float64).reshape(24, 2, 24, 2, 3).mean((1, 3))
        np.testing.assert_allclose(b["image"], blocks, atol=0.51)     # uint8 rounding
        assert b["label"] == a["label"]
        np.testing.assert_array_equal(low[split].labels(), full[split].labels())
    np.testing.assert_array_equal(low["test"].object_sizes(), full["test"].object_sizes())
    assert low["test"].class_names == full["test"].class_names
    # an image already at or below the side is kept as it is
    c.data.capture_size = 64
    np.testing.assert_array_equal(sources.get_source(c.data, "val")[0]["image"],
                                  full["val"][0]["image"])
