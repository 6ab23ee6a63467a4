"""Preprocessing ops on one uint8 HxWx3 image, each small, pure and driven by an explicit rng.

Resizing follows §4.2/§5.1: "The input images are first resized to different resolutions for
different models" (scale x scale, so a 512 model sees 4x the pixels of a 256 model), then cropped.
The paper's colour, vignetting and lens ops join these in the augmentation issue.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize(image: np.ndarray, scale: int) -> np.ndarray:
    """Square resize to scale x scale: area averaging when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (scale, scale):
        return image
    interp = cv2.INTER_AREA if scale < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (scale, scale), interpolation=interp)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One of the (H - size + 1) x (W - size + 1) crops, uniformly."""
    h, w = image.shape[:2]
    y = int(rng.integers(h - size + 1))
    x = int(rng.integers(w - size + 1))
    return image[y:y + size, x:x + size]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def train_transform(example: dict, rng: np.random.Generator, *, scale: int, crop: int,
                    augment) -> dict:
    image = resize(example["image"], scale)
    image = random_crop(image, crop, rng) if augment.crop else center_crop(image, crop)
    if augment.flip:
        image = random_flip(image, rng)
    return {"image": np.ascontiguousarray(image), "label": np.int32(example["label"])}


def eval_transform(example: dict, *, scale: int, crop: int) -> dict:
    image = center_crop(resize(example["image"], scale), crop)
    return {"image": np.ascontiguousarray(image), "label": np.int32(example["label"])}
