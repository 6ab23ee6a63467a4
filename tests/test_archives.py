"""The official distributions of CUB-200-2011, Oxford 102 Flowers, Oxford-IIIT Pets and
ILSVRC-2012, read with no TensorFlow: tiny archives in the official layouts (real file names,
JPEGs, .mat files, nested tars), read end to end and trained from for a few steps; the index
cache; and the one-line errors for wrong layouts. Every image is painted with its class
(test_sources.label_colour) and CUB's with its box, so every example of every split is read
back and checked against the label (and box) the reader pairs it with."""

import io
import logging
import os
import pickle
import tarfile

import cv2
import numpy as np
import pytest
import scipy.io

from conftest import tiny_config
from deep_image.data import listing, official, pipeline, sources
from deep_image.data.errors import DataError
from test_sources import (BOX_GREY, _jpeg, _train_steps, assert_pixels_match_labels,
                          decode_label, label_colour)


def _source(name, root, split):
    return sources.get_source(tiny_config(data__source=name, data__root=str(root)).data, split)


def _one_line_error(name, root, split, *needles):
    with pytest.raises(DataError) as e:
        _source(name, root, split)
    message = str(e.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def _tgz(archive, members):
    """A gzipped tar of {name inside: path here} (folders recursively)."""
    with tarfile.open(archive, "w:gz") as t:
        for arcname, path in members.items():
            t.add(path, arcname=arcname)


def _jpeg_bytes(k):
    """A JPEG of class k, as bytes."""
    image = np.zeros((40, 48, 3), np.uint8)
    image[:] = label_colour(k)
    return cv2.imencode(".jpg", image[..., ::-1])[1].tobytes()


def _tar(path, files, mode="w"):
    """A tar of {name: bytes}."""
    with tarfile.open(path, mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_LABELS = [0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 1, 2]     # of images 1..12: no period, no runs of 3


def _cub_box(i):
    """Image i's box as bounding_boxes.txt has it (x, y, width, height): another for each."""
    return (5 + 3 * i, 6 + 2 * (i % 4), 30 + i, 24 + 2 * (i % 3))


def _cub(tmp_path):
    """CUB_200_2011.tgz: 12 images (image i of class CUB_LABELS[i], painted so, its box painted
    grey), the first of each class in test."""
    build = tmp_path / "build" / "CUB_200_2011"
    lists = {f: [] for f in ("images", "image_class_labels", "train_test_split",
                             "bounding_boxes")}
    for i in range(12):
        k, n = CUB_LABELS[i], i + 1
        rel = f"{CUB_CLASSES[k]}/{CUB_CLASSES[k][4:]}_{i:04d}_{796000 + i}.jpg"
        x, y, w, h = _cub_box(i)
        _jpeg(build / "images" / rel, label=k, box=(x, y, x + w, y + h))
        lists["images"].append(f"{n} {rel}")
        lists["image_class_labels"].append(f"{n} {k + 1}")
        lists["train_test_split"].append(f"{n} {int(i >= 3)}")
        lists["bounding_boxes"].append(f"{n} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
    for f, lines in lists.items():
        (build / f"{f}.txt").write_text("\n".join(lines) + "\n")
    (build / "classes.txt").write_text(
        "".join(f"{k + 1} {c}\n" for k, c in enumerate(CUB_CLASSES)))
    (tmp_path / "build" / "attributes.txt").write_text("1 has_bill_shape::curved_(up_or_down)\n")
    data = tmp_path / "data"
    data.mkdir(parents=True)
    _tgz(data / "CUB_200_2011.tgz",
         {"CUB_200_2011": build, "attributes.txt": tmp_path / "build" / "attributes.txt"})
    return data, build


def test_cub_from_its_tgz_or_unpacked_with_boxes(tmp_path, caplog):
    data, build = _cub(tmp_path)
    with caplog.at_level(logging.WARNING):
        train = _source("cub", data, "train")
    assert "unpacking" in caplog.text and ".deep_image" in caplog.text
    assert train.class_names == CUB_CLASSES and len(train) == 9
    ex = train[0]                                    # image 4: x 14, y 12, w 33, h 24
    assert ex["bbox"] == (14.0, 12.0, 47.0, 36.0) and ex["image"].shape == (60, 80, 3)
    # every example: the class painted in it, the box painted in it
    assert assert_pixels_match_labels(train, boxes=True) == CUB_LABELS[3:]
    test = _source("cub", data, "test")
    assert assert_pixels_match_labels(test, boxes=True) == [0, 1, 2]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = _source("cub", data, "train")        # unpacked once, reused
    assert "unpacking" not in caplog.text and len(again) == 9
    for root in (build, build.parent):               # the unpacked folder, or its parent
        for split, labels in (("train", CUB_LABELS[3:]), ("test", [0, 1, 2])):
            src = _source("cub", root, split)
            assert src.class_names == CUB_CLASSES
            assert assert_pixels_match_labels(src, boxes=True) == labels
    # the evaluation batches: each image with its own label; the "Ours+BBox" protocol's
    # input: the test images cut to their boxes, so nothing but the box's grey is left
    config = tiny_config(data__source="cub", data__root=str(data))
    batch = next(iter(pipeline.EvalData(test, config, cache=False)))
    assert [decode_label(im) for im in batch["image"][:3]] == batch["label"][:3].tolist()
    batch = next(iter(pipeline.EvalData(test, config, use_box=True, cache=False)))
    assert batch["mask"].sum() == 3 and batch["image"].shape[1:] == (32, 32, 3)
    grey = np.abs(batch["image"][:3].astype(int) - BOX_GREY).max(-1) < 20
    assert grey.mean() > 0.97, grey.mean()
    _train_steps(tmp_path / "run", data__source="cub", data__root=str(data),
                 data__train_split="train", data__eval_split="test", data__val_split="")


def test_cub_lists_that_disagree_name_the_file(tmp_path):
    _, build = _cub(tmp_path)
    path = build / "image_class_labels.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    _one_line_error("cub", build, "train", "image_class_labels.txt", "lists 11 images")


# ----------------------------------------------------------------------------- Flowers

FLOWER_SETS = {"trnid": [6, 1, 5, 2, 4, 3], "valid": [7, 8, 9], "tstid": [12, 10, 11]}


def _flowers(tmp_path):
    """102flowers.tgz (jpg/image_00001.jpg ...), imagelabels.mat, setid.mat: 12 images."""
    build, data = tmp_path / "build", tmp_path / "data"
    data.mkdir(parents=True)
    labels = [1 + i % 3 for i in range(12)]           # image i + 1 is of class i % 3
    for i in range(12):
        _jpeg(build / "jpg" / f"image_{i + 1:05d}.jpg", label=i % 3)
    _tgz(data / "102flowers.tgz", {"jpg": build / "jpg"})
    scipy.io.savemat(data / "imagelabels.mat", {"labels": np.array([labels], np.uint8)})
    scipy.io.savemat(data / "setid.mat", {k: np.array([v], np.uint16)
                                          for k, v in FLOWER_SETS.items()})
    return data


def test_flowers_from_its_tgz_and_mat_files(tmp_path):
    data = _flowers(tmp_path)
    sizes = {}
    for split, key in official.FLOWERS_SPLITS.items():
        src = _source("flowers102", data, split)
        sizes[split] = len(src)
        # setid.mat's order; each image showing the class imagelabels.mat gives it
        assert assert_pixels_match_labels(src) == [(i - 1) % 3 for i in FLOWER_SETS[key]]
    assert sizes == {"train": 6, "validation": 3, "test": 3}
    names = src.class_names
    assert len(names) == 102
    try:        # TFDS's names when tensorflow_datasets is installed, else "1".."102"
        import tensorflow_datasets  # noqa: F401
        assert names[0] == "pink primrose" and names[-1] == "blackberry lily"
    except ImportError:
        assert names[:2] == ["1", "2"]
    _train_steps(tmp_path / "run", data__source="flowers102", data__root=str(data),
                 data__train_split="train", data__eval_split="test", data__val_split="")


def test_flowers_missing_or_mismatched_mat_files_name_them(tmp_path):
    data = _flowers(tmp_path)
    scipy.io.savemat(data / "setid.mat", {"trnid": np.array([[1, 13]]),
                                          "valid": np.array([[7]]), "tstid": np.array([[8]])})
    _one_line_error("flowers102", data, "train", "setid.mat names image 13",
                    "imagelabels.mat labels images 1..12")
    os.remove(data / "setid.mat")
    _one_line_error("flowers102", data, "train", f"missing {data / 'setid.mat'}",
                    "robots.ox.ac.uk")


# ----------------------------------------------------------------------------- Pets

PET_BREEDS = [("Abyssinian", 1), ("american_bulldog", 2), ("american_pit_bull_terrier", 2)]


def _pets(tmp_path):
    """images.tar.gz and annotations.tar.gz: 4 images per breed, the 4th in test. The lists
    take the breeds in turn (the official ones go breed by breed), so labels read in any other
    order than the images' would not match their pixels."""
    build, data = tmp_path / "build", tmp_path / "data"
    lists = {"trainval": [], "test": []}
    for n in range(1, 5):
        for k, (breed, species) in enumerate(PET_BREEDS):
            _jpeg(build / "images" / f"{breed}_{n}.jpg", label=k)
            line = f"{breed}_{n} {k + 1} {species} {k + 1}"
            lists["test" if n == 4 else "trainval"].append(line)
    (build / "images" / "Abyssinian_100.mat").write_bytes(b"not an image, in the archive")
    (build / "annotations").mkdir()
    for split, lines in lists.items():
        header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
        (build / "annotations" / f"{split}.txt").write_text(header + "\n".join(lines) + "\n")
    data.mkdir(parents=True)
    _tgz(data / "images.tar.gz", {"images": build / "images"})
    _tgz(data / "annotations.tar.gz", {"annotations": build / "annotations"})
    return data


def test_pets_from_its_tar_gz_files(tmp_path):
    data = _pets(tmp_path)
    train, test = _source("pets", data, "train"), _source("pets", data, "test")
    assert train.class_names == [b for b, _ in PET_BREEDS]
    assert len(train) == 9 and len(test) == 3
    assert assert_pixels_match_labels(train) == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert assert_pixels_match_labels(test) == [0, 1, 2]
    _train_steps(tmp_path / "run", data__source="pets", data__root=str(data),
                 data__train_split="train", data__eval_split="test", data__val_split="")


def test_no_official_files_and_no_tfds_copy_names_both(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error("pets", tmp_path / "empty", "train", "images.tar.gz",
                    "annotations.tar.gz", "robots.ox.ac.uk/~vgg/data/pets",
                    "tfds build oxford_iiit_pet")


# ----------------------------------------------------------------------------- ILSVRC-2012

WNIDS = ["n01440764", "n01443537", "n01484850"]
SYNSETS = [(1, "n01484850", "great white shark", 0), (2, "n01440764", "tench", 0),
           (3, "n01443537", "goldfish", 0), (4, "n01317541", "domestic animal", 2)]
VAL_CLASSES = [2, 0, 1, 1, 0, 2]        # of val images 1..6, as indices into WNIDS


def _devkit(build, top=official.DEVKIT):
    folder = build / top / "data"
    folder.mkdir(parents=True)
    synsets = np.array(SYNSETS, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                       ("num_children", "O")])
    scipy.io.savemat(folder / "meta.mat", {"synsets": synsets})
    ids = {w: i for i, w, _, _ in SYNSETS}
    (folder / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ids[WNIDS[k]]}\n" for k in VAL_CLASSES))
    return build / top


def _imagenet(tmp_path, per_class=4):
    """The train tar of per-class tars (in no particular order), the val tar, the devkit."""
    build, data = tmp_path / "build", tmp_path / "data"
    build.mkdir(parents=True, exist_ok=True)
    data.mkdir(exist_ok=True)
    for k, w in enumerate(WNIDS):
        _tar(build / f"{w}.tar", {f"{w}_{10026 + j}.JPEG": _jpeg_bytes(k)
                                  for j in range(per_class)})
    with tarfile.open(data / official.TRAIN_TAR, "w") as t:
        for w in (WNIDS[1], WNIDS[2], WNIDS[0]):
            t.add(build / f"{w}.tar", arcname=f"{w}.tar")
    _tar(data / official.VAL_TAR, {f"ILSVRC2012_val_{i + 1:08d}.JPEG": _jpeg_bytes(k)
                                   for i, k in enumerate(VAL_CLASSES)})
    if not (build / official.DEVKIT).exists():
        _tgz(data / f"{official.DEVKIT}.tar.gz", {official.DEVKIT: _devkit(build)})
    return data


def test_imagenet_from_its_tars_read_in_place(tmp_path):
    data = _imagenet(tmp_path)
    train = _source("imagenet", data, "train")
    assert train.class_names == WNIDS and len(train) == 12
    assert assert_pixels_match_labels(train) == [0] * 4 + [1] * 4 + [2] * 4
    val = _source("imagenet", data, "validation")                # labels via the devkit
    assert val.class_names == WNIDS and assert_pixels_match_labels(val) == VAL_CLASSES
    holdout = _source("imagenet", data, "train[:1]")             # a per-class slice
    assert sorted(assert_pixels_match_labels(holdout)) == [0, 1, 2]
    assert sorted(assert_pixels_match_labels(_source("imagenet", data, "train[1:]"))) == (
        [0] * 3 + [1] * 3 + [2] * 3)
    assert not (data / official.DEVKIT).exists()                 # unpacked beside, not over
    _train_steps(tmp_path / "run", data__source="imagenet", data__root=str(data),
                 data__train_split="train", data__eval_split="validation", data__val_split="")


def test_imagenet_unpacked_folders(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 1)):
        for k, w in enumerate(WNIDS):
            for j in range(n):
                _jpeg(root / split / w / f"{w}_{j}.JPEG", label=k)
    train, val = _source("imagenet", root, "train"), _source("imagenet", root, "validation")
    assert train.class_names == val.class_names == WNIDS
    assert assert_pixels_match_labels(train) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert assert_pixels_match_labels(val) == [0, 1, 2]
    _jpeg(root / "train" / WNIDS[2] / "new.JPEG", label=2)        # the folder changed
    assert len(_source("imagenet", root, "train")) == 10


def test_the_index_is_cached_and_rebuilt_when_the_tar_changes(tmp_path, caplog):
    data = _imagenet(tmp_path)
    with caplog.at_level(logging.WARNING):
        _source("imagenet", data, "train")
    assert caplog.text.count("indexing") == 1
    assert (data / ".deep_image" / f"{official.TRAIN_TAR}.nested.npz").is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(_source("imagenet", data, "train")) == 12
    assert "indexing" not in caplog.text                      # read from the cache
    _imagenet(tmp_path, per_class=5)                          # a new train tar
    with caplog.at_level(logging.WARNING):
        train = _source("imagenet", data, "train")
    assert "has changed since it was indexed" in caplog.text
    assert len(train) == 15 and list(train.labels()) == [0] * 5 + [1] * 5 + [2] * 5


def test_truncated_archives_name_the_file(tmp_path):
    data = _imagenet(tmp_path)
    for name in (official.TRAIN_TAR, official.VAL_TAR):
        path = data / name
        path.write_bytes(path.read_bytes()[:os.path.getsize(path) // 2])
    _one_line_error("imagenet", data, "train", official.TRAIN_TAR, "truncated")
    _one_line_error("imagenet", data, "validation", official.VAL_TAR, "truncated")
    cub, _ = _cub(tmp_path / "cub")
    tgz = cub / "CUB_200_2011.tgz"
    tgz.write_bytes(tgz.read_bytes()[:os.path.getsize(tgz) // 2])
    _one_line_error("cub", cub, "train", "cannot unpack", "CUB_200_2011.tgz", "truncated")


def test_a_devkit_of_another_year_or_count_names_the_file(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    _tgz(tmp_path / "devkit.tgz", {"ILSVRC2011_devkit": _devkit(build, "ILSVRC2011_devkit")})
    data = _imagenet(tmp_path)
    os.replace(tmp_path / "devkit.tgz", data / f"{official.DEVKIT}.tar.gz")
    _one_line_error("imagenet", data, "validation", f"{official.DEVKIT}.tar.gz",
                    "ILSVRC2011_devkit", "another version or year")
    # the right devkit, but ground truth for another number of images than the val tar has
    (data / f"{official.DEVKIT}.tar.gz").unlink()
    devkit = _devkit(tmp_path / "other")
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text(truth.read_text() + "1\n")
    os.replace(devkit, data / official.DEVKIT)
    _one_line_error("imagenet", data, "validation", "labels 7 images", official.VAL_TAR)


def test_listed_source_reads_tar_members_in_place_and_pickles(tmp_path):
    _tar(tmp_path / "plain.tar", {"a.JPEG": _jpeg_bytes(0), "b.JPEG": b"not a jpeg"})
    index = listing.tar_index(str(tmp_path / "plain.tar"))
    src = listing.ListedSource("plain", ["x"], [0, 0], index["names"],
                                tar=str(tmp_path / "plain.tar"), offsets=index["offsets"],
                                sizes=index["sizes"])
    assert decode_label(src[0]["image"]) == 0 and src[1] is None and src.skips.count == 1
    copy = pickle.loads(pickle.dumps(src))        # what Grain's worker processes get
    assert copy.skips.count == 0 and decode_label(copy[0]["image"]) == 0
    assert list(copy.labels()) == [0, 0]
