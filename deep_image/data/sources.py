"""Dataset sources: a name in `config.data.source` -> a random-access source per split.

A source has `len()`, `[i] -> {'image': uint8 HxWx3 RGB, 'label': int}` and `class_names`.
Add a dataset by writing a function `(data_config, split) -> source` and listing it in SOURCES.
"""

from __future__ import annotations

from deep_image.data import synthetic


class DataError(ValueError):
    """A dataset that cannot be read: the message says what is missing and how to prepare it."""


def _synthetic(data_config, split: str):
    s = data_config.synthetic
    spec = synthetic.SynthBirdsSpec(num_classes=s.num_classes, native_size=s.native_size,
                                    train_size=s.train_size, val_size=s.val_size,
                                    test_size=s.test_size, seed=s.seed,
                                    object_scale=tuple(s.object_scale), clutter=s.clutter)
    if split not in synthetic.SPLITS:
        raise DataError(f"the synthetic benchmark has no split {split!r}; it has "
                        f"{', '.join(synthetic.SPLITS)}")
    return synthetic.SynthBirds(spec, split)


SOURCES = {
    "synthetic": _synthetic,
}


def get_source(data_config, split: str):
    """The source of `split` of the dataset `data_config.source` names."""
    try:
        make = SOURCES[data_config.source]
    except KeyError:
        raise DataError(f"unknown dataset {data_config.source!r}; choose one of "
                        f"{', '.join(sorted(SOURCES))}") from None
    return make(data_config, split)
