"""The paper's benchmarks that TFDS prepares, read as array_record with `tfds.data_source`
(no TensorFlow needed at train time; preparing them once needs it, see the README)."""

from __future__ import annotations

import numpy as np

from deep_image.data import decode
from deep_image.data.errors import DataError

# Our source name -> (TFDS name, box feature or None). Boxes are TFDS-normalized
# (ymin, xmin, ymax, xmax); we hand them on as pixel (xmin, ymin, xmax, ymax), like FGVC's.
TFDS_DATASETS = {
    "cub": ("caltech_birds2011", "bbox"),          # §5.2 CUB-200-2011, 200 species
    "flowers102": ("oxford_flowers102", None),     # §5.2 Oxford 102 Flowers
    "pets": ("oxford_iiit_pet", None),             # §5.2 Oxford-IIIT Pets, 37 breeds
    "imagenet": ("imagenet2012", None),            # §5.4 ILSVRC-2012 (manual download)
}


def how_to_prepare(tfds_name: str, data_dir: str) -> str:
    where = f" --data_dir={data_dir}" if data_dir else ""
    manual = (" (first put the ILSVRC2012 train/val tars in ~/tensorflow_datasets/downloads/"
              "manual)" if tfds_name == "imagenet2012" else "")
    return (f"prepare it once with `pip install tensorflow && tfds build {tfds_name}{where} "
            f"--file_format=array_record`{manual}")


class TfdsSource:
    def __init__(self, name: str, split: str, data_dir: str = ""):
        import tensorflow_datasets as tfds
        self.tfds_name, self._box = TFDS_DATASETS[name]
        try:
            self._ds = tfds.data_source(self.tfds_name, split=split, data_dir=data_dir or None,
                                        download=False)
        except Exception as e:   # TFDS raises several types for "not prepared" / "bad split"
            first = " ".join(str(e).split())[:300]
            raise DataError(f"cannot read TFDS {self.tfds_name} split {split!r} "
                            f"({type(e).__name__}: {first}); "
                            f"{how_to_prepare(self.tfds_name, data_dir)}") from None
        self.class_names = list(self._ds.dataset_info.features["label"].names)
        self._split, self._data_dir = split, data_dir
        self.skips = decode.SkipCounter(f"{name}/{split}")

    def __len__(self) -> int:
        return len(self._ds)

    def labels(self) -> np.ndarray:
        """Every record's label (for stratified slices), read without decoding images where
        TFDS allows it (real array_record files), else from whole records."""
        import tensorflow_datasets as tfds
        ds = self._ds
        try:
            fast = tfds.data_source(self.tfds_name, split=self._split,
                                    data_dir=self._data_dir or None, download=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
            fast[0]
            ds = fast
        except Exception:   # e.g. TFDS mock data, which encodes examples with TensorFlow
            pass
        return np.array([int(ds[i]["label"]) for i in range(len(ds))], np.int64)

    def __getitem__(self, index: int):
        self.skips.read()
        try:
            ex = self._ds[int(index)]
            image = decode.to_rgb(np.asarray(ex["image"]))
        except Exception as e:   # a record that does not decode is skipped, never fatal
            self.skips.skip(f"record {index}", f"{type(e).__name__}: {e}")
            return None
        if image is None:
            self.skips.skip(f"record {index}", "empty image")
            return None
        out = {"image": image, "label": int(ex["label"])}
        if self._box and self._box in ex:
            h, w = image.shape[:2]
            ymin, xmin, ymax, xmax = np.asarray(ex[self._box], np.float64)
            out["bbox"] = (xmin * w, ymin * h, xmax * w, ymax * h)
        return out
