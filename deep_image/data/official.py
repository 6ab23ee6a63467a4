"""The paper's TFDS benchmarks read from the distributions their authors publish, packed or
unpacked, with no TensorFlow (sources.py falls back to TFDS when config.data.root holds none):

- CUB-200-2011: CUB_200_2011.tgz, or the CUB_200_2011/ folder it unpacks to (boxes included).
- Oxford 102 Flowers: 102flowers.tgz (or its jpg/ folder) with imagelabels.mat and setid.mat.
- Oxford-IIIT Pets: images.tar.gz and annotations.tar.gz (or their images/, annotations/).
- ILSVRC-2012: ILSVRC2012_img_train.tar (a tar of per-class tars) and ILSVRC2012_img_val.tar,
  read in place, with ILSVRC2012_devkit_t12.tar.gz; or train/<wnid>/ and val/<wnid>/ folders.

Split and class names are TFDS's, so a config runs unchanged on either copy. Compressed archives
are unpacked once beside themselves; uncompressed tars and big folders are indexed once (see
listing.py). Every reader checks its lists against each other and names the file that is
missing or wrong.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import re

import numpy as np

from deep_image.data import listing
from deep_image.data.errors import DataError

# source -> (title, the files, where to get them)
OFFICIAL = {
    "cub": ("CUB-200-2011", "CUB_200_2011.tgz (or the CUB_200_2011/ folder it unpacks to)",
            "https://www.vision.caltech.edu/datasets/cub_200_2011/"),
    "flowers102": ("Oxford 102 Flowers", "102flowers.tgz (or its jpg/ folder), imagelabels.mat "
                   "and setid.mat", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "pets": ("Oxford-IIIT Pets", "images.tar.gz and annotations.tar.gz (or the images/ and "
             "annotations/ folders they unpack to)", "https://www.robots.ox.ac.uk/~vgg/data/pets/"),
    "imagenet": ("ILSVRC-2012", "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
                 "ILSVRC2012_devkit_t12.tar.gz (or train/<wnid>/ and val/<wnid>/ folders)",
                 "https://image-net.org/challenges/LSVRC/2012/"),
}
# The official counts: another count is logged (tests use tiny copies), never an error.
COUNTS = {"cub": 11788, "flowers102": 8189, "pets/train": 3680, "pets/test": 3669,
          "imagenet/train": 1281167, "imagenet/validation": 50000}


def how(name: str, root: str) -> str:
    """What to put where, for a DataError when root holds none of the dataset's files."""
    title, files, url = OFFICIAL[name]
    where = (f"config.data.root={root!r} holds no {title} files" if root
             else "config.data.root is not set")
    return f"{where}: put {files} from {url} in one folder and set config.data.root to it"


def find(name: str, root: str, split: str):
    """`split` of dataset `name` read from the official files in `root` (the folder holding
    the archives, or the unpacked folder), or None when root holds none of them."""
    if root and os.path.isfile(root):       # the archive itself
        root = os.path.dirname(root)
    if not root or not os.path.isdir(root):
        return None
    return READERS[name](root, split)


def _check_count(key: str, n: int) -> None:
    if n != COUNTS[key]:
        logging.warning("%s: %d images, the official distribution has %d; a partial copy?",
                        key, n, COUNTS[key])


def _need_split(title: str, split: str, splits) -> None:
    if split not in splits:
        raise DataError(f"{title} has no split {split!r}; choose one of {', '.join(splits)}")


def _missing(title: str, path: str, name: str, note: str = "") -> DataError:
    return DataError(f"{title}: missing {path}{note}; download it from {OFFICIAL[name][2]} "
                     f"into {os.path.dirname(path)}")


def _folder_or_archive(root: str, folder: str, archive: str) -> str | None:
    """root/folder, or that folder inside root/archive unpacked, or None (neither is there)."""
    if os.path.isdir(os.path.join(root, folder)):
        return os.path.join(root, folder)
    path = os.path.join(root, archive)
    if not os.path.isfile(path):
        return None
    inside = os.path.join(listing.unpacked(path), folder)
    if not os.path.isdir(inside):
        found = sorted(f for f in os.listdir(os.path.dirname(inside)) if f[0] != ".")
        raise DataError(f"{path} holds {found[:5]}, not the {folder}/ folder of the official "
                        "archive: another version or year? download it again")
    return inside


def _table(path: str, what: str) -> dict[str, str]:
    """A `<id> <value...>` list file as {id: value}."""
    if not os.path.isfile(path):
        raise DataError(f"{what}: missing {path}: is the archive fully unpacked?")
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split(maxsplit=1)
            if len(fields) == 1:
                raise DataError(f"{path}, line {n}: {line.strip()!r} is not `<id> <value>`")
            if fields:
                out[fields[0]] = fields[1].strip()
    return out


def _numbers(path: str, values, kind=int) -> list:
    try:
        return [kind(v) for v in values]
    except ValueError as e:
        raise DataError(f"{path}: {e}: not the official file?") from None


def _mat(path: str, key: str, **options):
    import scipy.io
    try:
        m = scipy.io.loadmat(path, **options)
    except Exception as e:    # scipy raises several types for "not a .mat file"
        raise DataError(f"cannot read {path} ({type(e).__name__}): not a MATLAB file; "
                        "download it again") from None
    if key not in m:
        keys = [k for k in m if not k.startswith("__")]
        raise DataError(f"{path} has no {key!r} (it has {keys}): is it the right file?")
    return m[key]


# ----------------------------------------------------------------------------- CUB-200-2011

CUB_SPLITS = {"train": "1", "test": "0"}     # train_test_split.txt's is_train


def _cub_folder(root: str) -> str | None:
    for folder in (root, os.path.join(root, "CUB_200_2011")):
        if os.path.isfile(os.path.join(folder, "images.txt")):
            return folder
    if os.path.isdir(os.path.join(root, "CUB_200_2011")):
        raise DataError(f"CUB-200-2011: missing {root}/CUB_200_2011/images.txt: is the archive "
                        "fully unpacked?")
    return _folder_or_archive(root, "CUB_200_2011", "CUB_200_2011.tgz")


def cub(root: str, split: str):
    folder = _cub_folder(root)
    if folder is None:
        return None
    _need_split("CUB-200-2011", split, CUB_SPLITS)
    files = ("images.txt", "image_class_labels.txt", "train_test_split.txt",
             "bounding_boxes.txt")
    tables = {f: _table(os.path.join(folder, f), "CUB-200-2011") for f in files}
    images = tables["images.txt"]
    for f, table in tables.items():
        if table.keys() != images.keys():
            raise DataError(f"CUB-200-2011: {os.path.join(folder, f)} lists {len(table)} "
                            f"images, images.txt {len(images)} (or other ids): the lists "
                            "disagree; unpack CUB_200_2011.tgz again")
    _check_count("cub", len(images))
    path = os.path.join(folder, "classes.txt")
    classes = _table(path, "CUB-200-2011")
    if sorted(_numbers(path, classes)) != list(range(1, len(classes) + 1)):
        raise DataError(f"{path}: class ids are not 1..{len(classes)}")
    ids = sorted((i for i in images if tables["train_test_split.txt"][i] == CUB_SPLITS[split]),
                 key=int)
    path = os.path.join(folder, "image_class_labels.txt")
    labels = np.array(_numbers(path, (tables["image_class_labels.txt"][i] for i in ids))) - 1
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{path}: labels must be 1..{len(classes)} (classes.txt's ids)")
    path = os.path.join(folder, "bounding_boxes.txt")
    xywh = np.array([_numbers(path, tables["bounding_boxes.txt"][i].split(), float)
                     for i in ids]).reshape(-1, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # xmin ymin xmax ymax
    return listing.ListedSource(
        f"cub/{split}", [classes[str(k)] for k in range(1, len(classes) + 1)], labels,
        [images[i] for i in ids], base=os.path.join(folder, "images"), boxes=boxes,
        check_files=True)


# ----------------------------------------------------------------------------- Oxford Flowers

FLOWERS_SPLITS = {"train": "trnid", "validation": "valid", "test": "tstid"}   # TFDS's names
FLOWERS_CLASSES = 102


def flower_names() -> list[str]:
    """The class names TFDS gives Oxford 102 Flowers, read from the builder's source in the
    installed tensorflow_datasets without importing it (nor TensorFlow), so a run on either
    copy names its classes alike; "1".."102" (imagelabels.mat's numbers) without it."""
    try:
        spec = importlib.util.find_spec("tensorflow_datasets")
        package = os.path.dirname(spec.origin)
        for rel in ("datasets/oxford_flowers102/oxford_flowers102_dataset_builder.py",
                    "image_classification/oxford_flowers102.py"):
            if os.path.isfile(os.path.join(package, rel)):
                with open(os.path.join(package, rel), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:
                    if (isinstance(node, ast.Assign)
                            and any(getattr(t, "id", "") == "_NAMES" for t in node.targets)):
                        names = ast.literal_eval(node.value)
                        if len(names) == FLOWERS_CLASSES:
                            return [str(n) for n in names]
    except (ImportError, AttributeError, TypeError, ValueError, OSError, SyntaxError):
        pass
    return [str(k) for k in range(1, FLOWERS_CLASSES + 1)]


def flowers102(root: str, split: str):
    title = "Oxford 102 Flowers"
    labels_mat, setid_mat = os.path.join(root, "imagelabels.mat"), os.path.join(root, "setid.mat")
    tgz = os.path.join(root, "102flowers.tgz")
    if not any(os.path.exists(p) for p in (labels_mat, setid_mat, tgz, os.path.join(root, "jpg"))):
        return None
    _need_split(title, split, FLOWERS_SPLITS)
    for path in (labels_mat, setid_mat):
        if not os.path.isfile(path):
            raise _missing(title, path, "flowers102")
    images = _folder_or_archive(root, "jpg", "102flowers.tgz")
    if images is None:
        raise _missing(title, tgz, "flowers102", " (or its unpacked jpg/ folder)")
    labels = np.asarray(_mat(labels_mat, "labels"), np.int64).ravel()
    ids = np.asarray(_mat(setid_mat, FLOWERS_SPLITS[split]), np.int64).ravel()
    _check_count("flowers102", len(labels))
    if len(labels) and (labels.min() < 1 or labels.max() > FLOWERS_CLASSES):
        raise DataError(f"{labels_mat}: labels must be 1..{FLOWERS_CLASSES}, found "
                        f"{labels.min()}..{labels.max()}: is it the Flowers imagelabels.mat?")
    if len(ids) and (ids.min() < 1 or ids.max() > len(labels)):
        bad = ids.max() if ids.max() > len(labels) else ids.min()
        raise DataError(f"{setid_mat} names image {bad}, but {labels_mat} labels images "
                        f"1..{len(labels)}: the two files do not belong together; download "
                        "both again")
    return listing.ListedSource(f"flowers102/{split}", flower_names(), labels[ids - 1] - 1,
                                 [f"image_{i:05d}.jpg" for i in ids], base=images,
                                 check_files=True)


# ----------------------------------------------------------------------------- Oxford-IIIT Pets

PETS_SPLITS = {"train": "trainval.txt", "test": "test.txt"}


def _pet_list(path: str) -> list[tuple[str, int]]:
    """(image name, class id 1..37) of each line `Abyssinian_100 1 1 1`; '#' lines are notes."""
    if not os.path.isfile(path):
        raise DataError(f"Oxford-IIIT Pets: missing {path}: unpack annotations.tar.gz again")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1:
                raise DataError(f"{path}, line {n}: {line.strip()!r} is not `<image name> "
                                "<class id> <species> <breed id>`")
            rows.append((fields[0], int(fields[1])))
    return rows


def pets(root: str, split: str):
    title = "Oxford-IIIT Pets"
    images = _folder_or_archive(root, "images", "images.tar.gz")
    annotations = _folder_or_archive(root, "annotations", "annotations.tar.gz")
    if images is None and annotations is None:
        return None
    _need_split(title, split, PETS_SPLITS)
    for found, folder in ((images, "images"), (annotations, "annotations")):
        if found is None:
            raise _missing(title, os.path.join(root, f"{folder}.tar.gz"), "pets",
                           f" (or its unpacked {folder}/ folder)")
    lists = {s: _pet_list(os.path.join(annotations, f)) for s, f in PETS_SPLITS.items()}
    breeds = {}     # class id -> the breed its image names carry (`great_pyrenees_12`)
    for rows in lists.values():
        for name, cls in rows:
            breed = name.rsplit("_", 1)[0]
            if breeds.setdefault(cls, breed) != breed:
                raise DataError(f"{annotations}: class {cls} holds both {breeds[cls]} and "
                                f"{breed} images: the lists are not the official ones")
    rows = lists[split]
    _check_count(f"pets/{split}", len(rows))
    return listing.ListedSource(
        f"pets/{split}", [breeds.get(k, str(k)) for k in range(1, max(breeds) + 1)],
        [cls - 1 for _, cls in rows], [f"{name}.jpg" for name, _ in rows], base=images,
        check_files=True)


# ----------------------------------------------------------------------------- ILSVRC-2012

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12"
VAL_NAME = re.compile(rb"ILSVRC2012_val_(\d{8})\.JPEG$")


def _devkit(root: str) -> str | None:
    """The unpacked devkit's folder (its data/ holds meta.mat and the validation labels)."""
    folder = _folder_or_archive(root, DEVKIT, DEVKIT + ".tar.gz")
    if folder is None:
        return None
    for f in ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"):
        if not os.path.isfile(os.path.join(folder, "data", f)):
            raise DataError(f"ILSVRC-2012: the devkit has no {DEVKIT}/data/{f}: another "
                            f"year's devkit? download {DEVKIT}.tar.gz from "
                            f"{OFFICIAL['imagenet'][2]}")
    return folder


def _leaf_classes(devkit: str) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID of the 1000 leaf synsets of meta.mat (the classes)."""
    path = os.path.join(devkit, "data", "meta.mat")
    synsets = np.atleast_1d(_mat(path, "synsets", squeeze_me=True))
    try:
        ids, wnids = synsets["ILSVRC2012_ID"], synsets["WNID"]
        leaves = np.asarray(synsets["num_children"], np.int64) == 0
        return {int(i): str(w) for i, w, leaf in zip(ids, wnids, leaves) if leaf}
    except (ValueError, TypeError, IndexError, KeyError):
        raise DataError(f"{path}: its synsets lack ILSVRC2012_ID, WNID or num_children: "
                        "another year's devkit? use ILSVRC2012_devkit_t12.tar.gz") from None


def _imagenet_classes(root: str) -> list[str]:
    """The sorted WNIDs (TFDS's and torchvision's order): the devkit's leaves, else the train
    split's class folders or tars."""
    devkit = _devkit(root)
    if devkit:
        return sorted(_leaf_classes(devkit).values())
    if os.path.isdir(os.path.join(root, "train")):
        folders = listing.folder_index(os.path.join(root, "train"))["folders"]
    elif os.path.isfile(os.path.join(root, TRAIN_TAR)):
        folders = listing.tar_index(os.path.join(root, TRAIN_TAR), nested=True)["folders"]
    elif os.path.isdir(os.path.join(root, "val")):
        folders = listing.folder_index(os.path.join(root, "val"))["folders"]
    else:
        raise _missing("ILSVRC-2012", os.path.join(root, DEVKIT + ".tar.gz"), "imagenet")
    return [f.decode() for f in folders]


def _labels_of_folders(index: dict, classes: list[str], where: str) -> np.ndarray:
    position = {c: k for k, c in enumerate(classes)}
    folders = [f.decode() for f in index["folders"]]
    unknown = [f for f in folders if f not in position]
    if unknown:
        raise DataError(f"{where}: class {unknown[0]} is not one of the {len(classes)} "
                        "ILSVRC-2012 classes (the devkit's WNIDs)")
    if not len(index["names"]):
        raise DataError(f"{where} holds no images in class folders (<wnid>/*.JPEG)")
    lookup = np.array([position[f] for f in folders], np.int64)
    return lookup[index["folder_of"]]


def _val_labels(root: str, names: np.ndarray, classes: list[str], tar: str) -> np.ndarray:
    devkit = _devkit(root)
    if devkit is None:
        others = [f for f in sorted(os.listdir(root)) if "devkit" in f.lower()]
        raise _missing("ILSVRC-2012", os.path.join(root, DEVKIT + ".tar.gz"), "imagenet",
                       " (the validation labels" +
                       (f"; {', '.join(others)} is another year's)" if others else ")"))
    wnid_of = _leaf_classes(devkit)
    path = os.path.join(devkit, "data", "ILSVRC2012_validation_ground_truth.txt")
    with open(path, encoding="utf-8") as f:
        truth = _numbers(path, f.read().split())
    if len(truth) != len(names):
        raise DataError(f"{path} labels {len(truth)} images, but {tar} holds {len(names)}: "
                        "they do not belong together; download both again")
    position = {c: k for k, c in enumerate(classes)}
    labels = []
    for name in names:
        m = VAL_NAME.search(name)
        if not m or not 1 <= int(m[1]) <= len(truth) or truth[int(m[1]) - 1] not in wnid_of:
            raise DataError(f"{tar}: {name.decode()} is not ILSVRC2012_val_<1..{len(truth)}>"
                            ".JPEG with a leaf class in the ground truth: not the official tar?")
        labels.append(position[wnid_of[truth[int(m[1]) - 1]]])
    return np.array(labels, np.int64)


def imagenet(root: str, split: str):
    title = "ILSVRC-2012"
    if not any(os.path.exists(os.path.join(root, f)) for f in
               ("train", "val", TRAIN_TAR, VAL_TAR, DEVKIT, DEVKIT + ".tar.gz")):
        return None
    _need_split(title, split, ("train", "validation"))
    classes = _imagenet_classes(root)
    folder = os.path.join(root, "train" if split == "train" else "val")
    if os.path.isdir(folder):
        index = listing.folder_index(folder)
        labels = _labels_of_folders(index, classes, folder)
        _check_count(f"imagenet/{split}", len(labels))
        return listing.ListedSource(f"imagenet/{split}", classes, labels, index["names"],
                                     base=folder)
    tar = os.path.join(root, TRAIN_TAR if split == "train" else VAL_TAR)
    if not os.path.isfile(tar):
        raise _missing(title, tar, "imagenet",
                       f" (or its unpacked {os.path.basename(folder)}/<wnid>/ folders)")
    if split == "train":
        index = listing.tar_index(tar, nested=True)
        labels = _labels_of_folders(index, classes, tar)
    else:
        index = listing.tar_index(tar)
        labels = _val_labels(root, index["names"], classes, tar)
    _check_count(f"imagenet/{split}", len(labels))
    return listing.ListedSource(f"imagenet/{split}", classes, labels, index["names"], tar=tar,
                                 offsets=index["offsets"], sizes=index["sizes"])


READERS = {"cub": cub, "flowers102": flowers102, "pets": pets, "imagenet": imagenet}
