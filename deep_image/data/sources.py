"""Dataset sources: a name in `config.data.source` -> a random-access source per split.

A source has `len()`, `[i] -> {'image': uint8 HxWx3 RGB, 'label': int[, 'bbox']}` or None for
an example that cannot be read (the pipeline skips it), `class_names`, and `labels()` (every
example's label, cheaply: it defines the per-class validation slices of data/splits.py). Add a dataset by
writing a function `(data_config, split) -> source` and listing it in SOURCES.

CUB, Flowers, Pets and ILSVRC are read from their official archives when config.data.root holds
them (official.py, no TensorFlow), else from a TFDS copy (root as its data_dir).
"""

from __future__ import annotations

import cv2

from deep_image.data import archives, official, splits, synthetic, tfds_sources
from deep_image.data.errors import DataError


def _synthetic(data_config, split: str):
    s = data_config.synthetic
    if split not in synthetic.SPLITS:
        raise DataError(f"the synthetic benchmark has no split {split!r}; it has "
                        f"{', '.join(synthetic.SPLITS)}")
    return synthetic.SynthBirds(synthetic_spec(data_config), split, s.prerendered)


def synthetic_spec(data_config) -> synthetic.SynthBirdsSpec:
    """config.data.synthetic as the benchmark's spec."""
    s = data_config.synthetic
    try:
        return synthetic.SynthBirdsSpec(
            num_classes=s.num_classes, native_size=s.native_size, train_size=s.train_size,
            val_size=s.val_size, test_size=s.test_size, seed=s.seed,
            object_scale=tuple(s.object_scale), clutter=s.clutter, species=s.species)
    except ValueError as e:
        raise DataError(f"config.data.synthetic: {e}") from None


def _official_or_tfds(name):
    """The official distribution in config.data.root if it holds one, else the TFDS copy."""
    def make(data_config, split: str):
        source = official.find(name, data_config.root, split)
        if source is not None:
            return source
        try:
            return tfds_sources.TfdsSource(name, split, data_config.root)
        except ImportError:
            tfds = ("or use a TFDS copy: pip install tensorflow-datasets, then "
                    + tfds_sources.how_to_prepare(tfds_sources.TFDS_DATASETS[name][0],
                                                  data_config.root))
        except DataError as e:
            tfds = f"a TFDS copy is the alternative, but {e}"
        raise DataError(f"{official.how(name, data_config.root)}; {tfds}")
    return make


def _need_root(data_config, what: str, how: str) -> str:
    if not data_config.root:
        raise DataError(f"set config.data.root to the {what} directory: {how}")
    return data_config.root


SOURCES = {
    "synthetic": _synthetic,
    **{name: _official_or_tfds(name) for name in tfds_sources.TFDS_DATASETS},
    "aircraft": lambda d, split: archives.fgvc_aircraft(
        _need_root(d, "FGVC-Aircraft", archives.FGVC_HOW), split),
    "indoor67": lambda d, split: archives.mit_indoor67(
        _need_root(d, "MIT Indoor 67", archives.INDOOR_HOW), split),
    "folder": lambda d, split: archives.image_folder(
        _need_root(d, "image folder", archives.FOLDER_HOW), split, d.train_split),
}


def get_source(data_config, split: str):
    """The source of `split` of the dataset `data_config.source` names; a per-class slice
    such as `train[:10%]` (data/splits.py) is cut from its base split's source."""
    try:
        make = SOURCES[data_config.source]
    except KeyError:
        raise DataError(f"unknown dataset {data_config.source!r}; choose one of "
                        f"{', '.join(sorted(SOURCES))}") from None
    source = splits.select(make(data_config, splits.parse(split).base), split)
    return Recaptured(source, data_config.capture_size) if data_config.capture_size else source


class Recaptured:
    """`source` with every image reduced to `side` pixels on its shorter side (area
    averaging; an image already that small is kept): the same scenes taken by a camera of
    lower resolution (config.data.capture_size). Everything else is the source's."""

    def __init__(self, source, side: int):
        self._source, self.side = source, int(side)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        example = self._source[index]
        if example is None:
            return None
        image = example["image"]
        h, w = image.shape[:2]
        if min(h, w) > self.side:
            f = self.side / min(h, w)
            size = (max(1, round(w * f)), max(1, round(h * f)))   # cv2: (width, height)
            example = {**example, "image": cv2.resize(image, size, interpolation=cv2.INTER_AREA)}
            if "bbox" in example:
                example["bbox"] = tuple(v * f for v in example["bbox"])
        return example

    def __getattr__(self, name):       # class_names, labels(), object_sizes(), ...
        return getattr(self._source, name)

    def __repr__(self) -> str:
        return f"Recaptured({self._source!r}, {self.side} px)"
