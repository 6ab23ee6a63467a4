"""Preprocessing of one uint8 HxWx3 image: resize to the model's scale, then crop and augment.

Resizing follows §4.2/§5.1: "The input images are first resized to different resolutions for
different models". `square` (the default) resizes to scale x scale, as the paper's Table 1 count
of 224 crops in a 512x512 image implies; `shorter_side` keeps the aspect ratio with the shorter
side at `scale` (crops then have more horizontal or vertical freedom).
"""

from __future__ import annotations

import cv2
import numpy as np

from deep_image.data import augment
from deep_image.data.errors import DataError


def resize(image: np.ndarray, scale: int, mode: str = "square") -> np.ndarray:
    """Resize to scale x scale (`square`) or shorter side = scale (`shorter_side`); area
    averaging when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if mode == "square":
        size = (scale, scale)
    else:
        f = scale / min(h, w)
        size = (max(scale, round(w * f)), max(scale, round(h * f)))
    if (w, h) == size:
        return image
    interp = cv2.INTER_AREA if size[0] * size[1] < w * h else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    y, x = augment.center_offset(image.shape, size)
    return image[y:y + size, x:x + size]


def train_transform(example: dict, rng: np.random.Generator, *, scale: int, crop: int,
                    augment_config, resize_mode: str = "square") -> dict | None:
    """Resize, then the §4.1 chain: crop, then every other op on the crop (fused)."""
    if example is None:
        return None
    image = resize(example["image"], scale, resize_mode)
    params = augment.sample(rng, augment_config, image.shape, crop)   # config or Settings
    return {"image": augment.apply_fused(image, params, crop),
            "label": np.int32(example["label"])}


def crop_to_box(image: np.ndarray, box) -> np.ndarray:
    """The (xmin, ymin, xmax, ymax) pixel box, clipped to the image. A box that leaves less
    than 2x2 pixels is a DataError: scoring the whole image instead would be silent."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise DataError(f"box {tuple(box)} leaves no pixels of a {w}x{h} image")
    return image[y0:y1, x0:x1]


def eval_transform(example: dict, *, scale: int, crop: int | None,
                   resize_mode: str = "square", use_box: bool = False) -> dict | None:
    """Resize (after cutting to the box when asked), then the centre crop; with `crop=None`
    the whole resized image (dense testing). `use_box` on an example without a box is a
    DataError (config.eval.bbox needs a dataset with boxes for every test image)."""
    if example is None:
        return None
    image = example["image"]
    if use_box:
        if example.get("bbox") is None:
            raise DataError("config.eval.bbox=True, but a test example has no box; evaluate "
                            "with boxes only on a dataset that has one for every image (CUB)")
        image = crop_to_box(image, example["bbox"])
    image = resize(image, scale, resize_mode)
    if crop is not None:
        image = center_crop(image, crop)
    return {"image": np.ascontiguousarray(image), "label": np.int32(example["label"])}
