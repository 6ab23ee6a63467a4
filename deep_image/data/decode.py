"""Decoding any image file to uint8 RGB, or None (and a logged warning) when it cannot be read.

Grayscale, alpha (composited over white), 16-bit and CMYK inputs become 8-bit RGB; corrupt and
truncated files are skipped by the pipeline and counted, never a crash, never a wrong label.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from deep_image.data.errors import DataError


class SkipCounter:
    """Counts skipped examples of one source; warns for each with its reason. When most reads
    fail (over half of them, after 100 failures) the data has gone, not a few files: that is a
    DataError, not an endless stream of skips."""

    GIVE_UP_AFTER = 100

    def __init__(self, name: str):
        self.name, self.count, self.reads = name, 0, 0
        self._lock = threading.Lock()

    def __getstate__(self):      # Grain's worker processes get a pickled copy of the source;
        return {"name": self.name}   # a lock cannot travel: each copy counts its own skips

    def __setstate__(self, state):
        self.__init__(state["name"])

    def read(self) -> None:
        """Called for every example read, good or bad."""
        with self._lock:
            self.reads += 1

    def skip(self, what: str, reason: str) -> None:
        with self._lock:
            self.count += 1
            n, reads = self.count, self.reads
        logging.warning("%s: skipping %s (%s); %d skipped so far", self.name, what, reason, n)
        if n >= self.GIVE_UP_AFTER and n > reads / 2:
            raise DataError(f"{self.name}: {n} of the last {reads} examples could not be read "
                            f"(the latest: {what}, {reason}); is the data still there?")


def to_rgb(image: np.ndarray | None) -> np.ndarray | None:
    """An OpenCV-decoded array (BGR/BGRA/gray, 8 or 16 bit) as HxWx3 uint8 RGB."""
    if image is None or image.size == 0:
        return None
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:     # composite over white, as viewers show transparent images
        alpha = image[..., 3:].astype(np.float32) / 255.0
        bgr = image[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(bgr.round().astype(np.uint8), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB)


def decode(data: bytes) -> np.ndarray | None:
    """RGB uint8 from encoded bytes (JPEG incl. CMYK, PNG, BMP, WebP, ...), None if unreadable.

    A truncated JPEG that libjpeg can still partially decode is returned as decoded (what every
    framework does); a file that yields no image is None.
    """
    if not data:
        return None
    buf = np.frombuffer(data, np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    return to_rgb(image)


def read(path: str) -> tuple[np.ndarray | None, str]:
    """(RGB image or None, reason when None)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot open: {e.strerror}"
    image = decode(data)
    return (image, "") if image is not None else (None, "not a decodable image")
