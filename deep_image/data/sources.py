"""Dataset sources: a name in `config.data.source` -> a random-access source per split.

A source has `len()`, `[i] -> {'image': uint8 HxWx3 RGB, 'label': int[, 'bbox']}` or None for
an example that cannot be read (the pipeline skips it), `class_names`, and `labels()` (every
example's label, cheaply: it defines the per-class validation slices of data/splits.py). Add a dataset by
writing a function `(data_config, split) -> source` and listing it in SOURCES.
"""

from __future__ import annotations

from deep_image.data import archives, splits, synthetic, tfds_sources
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


def _tfds(name):
    return lambda data_config, split: tfds_sources.TfdsSource(name, split, data_config.root)


def _need_root(data_config, what: str, how: str) -> str:
    if not data_config.root:
        raise DataError(f"set config.data.root to the {what} directory: {how}")
    return data_config.root


SOURCES = {
    "synthetic": _synthetic,
    **{name: _tfds(name) for name in tfds_sources.TFDS_DATASETS},
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
    return splits.select(make(data_config, splits.parse(split).base), split)
