"""Readers of datasets kept as files in their official layouts (no TFDS builder exists for
them), and of a plain image folder for users' own data:

- FGVC-Aircraft 2013b (§5.2): the unpacked `fgvc-aircraft-2013b/` directory.
- MIT Indoor 67 (§5.3): the directory holding `Images/`, `TrainImages.txt`, `TestImages.txt`.
- Image folder: `root/<split>/<class>/*.jpg` (class names from the train split's folders).

Listed files that are missing are skipped at start (counted and logged); files that do not
decode are skipped when read (see decode.py). Labels always come from the listing itself.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from deep_image.data import decode
from deep_image.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
FGVC_BANNER_PIXELS = 20   # the copyright banner at the bottom of every FGVC-Aircraft image


class FileSource:
    """A random-access source over (path, label[, box]) records."""

    def __init__(self, name: str, records: list[tuple], class_names: list[str],
                 crop_bottom: int = 0):
        self.name, self.class_names = name, list(class_names)
        self.skips = decode.SkipCounter(name)
        present = []
        for rec in records:
            self.skips.read()
            if os.path.isfile(rec[0]):
                present.append(rec)
            else:
                self.skips.skip(rec[0], "listed but missing")
        if not present:
            raise DataError(f"{name}: none of the {len(records)} listed images exist; check "
                            "config.data.root")
        self._records = present
        self._crop_bottom = crop_bottom

    def __len__(self) -> int:
        return len(self._records)

    def labels(self) -> np.ndarray:
        return np.array([rec[1] for rec in self._records], np.int64)

    def __getitem__(self, index: int):
        rec = self._records[int(index)]
        self.skips.read()
        image, reason = decode.read(rec[0])
        if image is None:
            folder = os.path.dirname(rec[0])
            if not os.path.isdir(folder):      # present at start: the data has gone
                raise DataError(f"{folder} has vanished during the run (it held {rec[0]}); "
                                "is the data directory still mounted? Restore it and rerun the "
                                "same command to resume")
            self.skips.skip(rec[0], reason)
            return None
        if self._crop_bottom and image.shape[0] > self._crop_bottom:
            image = image[:-self._crop_bottom]
        out = {"image": image, "label": rec[1]}
        if len(rec) > 2 and rec[2] is not None:
            out["bbox"] = rec[2]
        return out


def _need_dir(path: str, what: str, how: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"{what} not found at {path}: {how}")


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"missing {path}: is the archive fully unpacked?")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


# ----------------------------------------------------------------------------- FGVC-Aircraft

FGVC_HOW = ("download fgvc-aircraft-2013b.tar.gz from the Oxford VGG site, unpack it and set "
            "config.data.root to the fgvc-aircraft-2013b directory")
FGVC_SPLITS = ("train", "val", "trainval", "test")


def fgvc_aircraft(root: str, split: str, *, level: str = "variant",
                  with_boxes: bool = True) -> FileSource:
    """FGVC-Aircraft 2013b at the `variant` (100 classes), `family` or `manufacturer` level."""
    data = os.path.join(root, "data") if os.path.isdir(os.path.join(root, "data")) else root
    _need_dir(data, "FGVC-Aircraft", FGVC_HOW)
    if split not in FGVC_SPLITS:
        raise DataError(f"FGVC-Aircraft has no split {split!r}; choose one of {FGVC_SPLITS}")
    plural = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}
    classes = _read_lines(os.path.join(data, f"{plural[level]}.txt"))
    index = {c: i for i, c in enumerate(classes)}
    boxes = {}
    if with_boxes and os.path.isfile(os.path.join(data, "images_box.txt")):
        for line in _read_lines(os.path.join(data, "images_box.txt")):
            name, *xyxy = line.split()
            boxes[name] = tuple(float(v) for v in xyxy)     # xmin ymin xmax ymax, pixels
    records = []
    for line in _read_lines(os.path.join(data, f"images_{level}_{split}.txt")):
        name, _, label = line.partition(" ")
        if label not in index:
            raise DataError(f"FGVC-Aircraft: {name} has class {label!r}, which is not in "
                            f"{plural[level]}.txt")
        records.append((os.path.join(data, "images", f"{name}.jpg"), index[label],
                        boxes.get(name)))
    return FileSource(f"fgvc_aircraft/{split}", records, classes,
                      crop_bottom=FGVC_BANNER_PIXELS)


# ----------------------------------------------------------------------------- MIT Indoor 67

INDOOR_HOW = ("download indoorCVPR_09.tar and the Train/TestImages.txt lists from the MIT "
              "Indoor 67 page, unpack them into one directory and set config.data.root to it")
INDOOR_LISTS = {"train": "TrainImages.txt", "test": "TestImages.txt"}


def mit_indoor67(root: str, split: str) -> FileSource:
    images = os.path.join(root, "Images")
    _need_dir(images, "MIT Indoor 67 (its Images/ directory)", INDOOR_HOW)
    if split not in INDOOR_LISTS:
        raise DataError(f"MIT Indoor 67 has no split {split!r}; choose one of "
                        f"{tuple(INDOOR_LISTS)}")
    classes = sorted(d for d in os.listdir(images) if os.path.isdir(os.path.join(images, d)))
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for rel in _read_lines(os.path.join(root, INDOOR_LISTS[split])):
        cls = rel.replace("\\", "/").split("/")[0]
        if cls not in index:
            raise DataError(f"MIT Indoor 67: {rel} names class {cls!r}, which has no folder "
                            "in Images/")
        records.append((os.path.join(images, rel), index[cls]))
    return FileSource(f"mit_indoor67/{split}", records, classes)


# ----------------------------------------------------------------------------- image folder

FOLDER_HOW = "arrange your images as ROOT/<split>/<class name>/<image file>"


def image_folder(root: str, split: str, train_split: str = "train") -> FileSource:
    _need_dir(os.path.join(root, train_split), "image folder train split", FOLDER_HOW)
    _need_dir(os.path.join(root, split), f"image folder split {split!r}", FOLDER_HOW)
    classes = sorted(d for d in os.listdir(os.path.join(root, train_split))
                     if os.path.isdir(os.path.join(root, train_split, d)))
    if not classes:
        raise DataError(f"no class folders in {os.path.join(root, train_split)}: {FOLDER_HOW}")
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for cls in sorted(os.listdir(os.path.join(root, split))):
        folder = os.path.join(root, split, cls)
        if not os.path.isdir(folder):
            continue
        if cls not in index:
            raise DataError(f"class folder {folder} has no counterpart in the "
                            f"{train_split!r} split, so it has no label")
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                records.append((os.path.join(folder, name), index[cls]))
    if not records:
        raise DataError(f"no images in {os.path.join(root, split)}: {FOLDER_HOW}")
    logging.info("image folder %s/%s: %d images, %d classes", root, split, len(records),
                 len(classes))
    return FileSource(f"folder/{split}", records, classes)
