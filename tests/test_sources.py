"""Every benchmark's reader, on data the tests make: TFDS mock data for the TFDS datasets, tiny
archives in the official layouts for FGVC-Aircraft and MIT Indoor 67, and an image folder with
every kind of bad file. A few training steps run from each source."""

import logging
import os
import shutil

import cv2
import numpy as np
import pytest

from conftest import run_train, tiny_config
from deep_image.data import archives, decode, sources
from deep_image.data.errors import DataError
from deep_image.training import loop


def _jpeg(path, h=60, w=80, colour=(0, 128, 255), banner=0):
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = colour
    image[:, : w // 2] = 255 - np.asarray(colour)
    if banner:
        image[-banner:] = 255      # the white copyright strip
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), image)


def _train_steps(workdir, **overrides):
    config = tiny_config(total_steps=3, eval_every_steps=3, checkpoint_every_steps=3,
                         batch_size=4, eval_batch_size=4, **overrides)
    result = loop.train_and_evaluate(config, str(workdir))
    assert result["step"] == 3 and 0.0 <= result["eval/top1"] <= 1.0
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
        _train_steps(tmp_path, data__source=name, data__train_split=train,
                     data__eval_split=test, data__val_split="")


def test_tfds_not_prepared_says_how(tmp_path):
    cfg = tiny_config(data__source="cub", data__root=str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="tfds build caltech_birds2011"):
        sources.get_source(cfg.data, "train")


# ----------------------------------------------------------------------------- FGVC-Aircraft

def _fgvc(root, missing=()):
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "Cessna 172"]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    lines = {"train": [], "val": [], "trainval": [], "test": []}
    boxes = []
    for i in range(12):
        name = f"{1000000 + i:07d}"
        # the official lists: trainval is train + val
        splits = ("test",) if i % 3 == 0 else ("train" if i % 2 else "val", "trainval")
        for split in splits:
            lines[split].append(f"{name} {classes[i % 3]}")
        boxes.append(f"{name} 5 6 70 50")
        if name not in missing:
            _jpeg(data / "images" / f"{name}.jpg", h=80, banner=archives.FGVC_BANNER_PIXELS)
    for split, ls in lines.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(ls) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root / "fgvc-aircraft-2013b", classes


def test_fgvc_aircraft_layout_banner_boxes_and_missing_files(tmp_path, caplog):
    root, classes = _fgvc(tmp_path, missing={"1000001"})
    with caplog.at_level(logging.WARNING):
        src = archives.fgvc_aircraft(str(root), "trainval")
    assert src.class_names == classes
    assert len(src) == 7 and src.skips.count == 1             # 8 listed, one missing
    assert "1000001.jpg (listed but missing)" in caplog.text
    ex = src[0]
    assert ex["image"].shape == (80 - archives.FGVC_BANNER_PIXELS, 80, 3)
    assert ex["image"][-1].max() < 250                         # the banner is gone
    assert ex["bbox"] == (5.0, 6.0, 70.0, 50.0)
    names = [line.split(" ", 1)[1] for line in
             (root / "data" / "images_variant_trainval.txt").read_text().splitlines()]
    present = [n for line, n in zip((root / "data" / "images_variant_trainval.txt")
                                    .read_text().splitlines(), names)
               if not line.startswith("1000001")]
    assert [classes[src[i]["label"]] for i in range(len(src))] == present
    _train_steps(tmp_path / "run", data__source="aircraft", data__root=str(root),
                 data__train_split="trainval", data__eval_split="test", data__val_split="")


# ----------------------------------------------------------------------------- MIT Indoor 67

def _indoor(root):
    classes = ["airport_inside", "bakery", "bar"]
    train, test = [], []
    for c in classes:
        for i in range(4):
            rel = f"{c}/img_{i}.jpg"
            _jpeg(root / "Images" / rel)
            (test if i == 0 else train).append(rel)
    (root / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "TestImages.txt").write_text("\n".join(test) + "\n")
    return root, classes


def test_mit_indoor67_layout(tmp_path):
    root, classes = _indoor(tmp_path / "indoor")
    src = archives.mit_indoor67(str(root), "train")
    assert src.class_names == classes and len(src) == 9
    assert [src[i]["label"] for i in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(archives.mit_indoor67(str(root), "test")) == 3
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
        _jpeg(root / split / "good" / "c.jpg")
        _jpeg(root / split / "odd" / "d.jpg")


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
    _train_steps(tmp_path / "run", data__source="folder", data__root=str(root),
                 data__eval_split="test", data__val_split="")


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
