"""The Grain input pipeline: source -> per-epoch shuffle -> this process's slice -> random_map
(decode, resize, crop, augment) -> threaded reads -> skip unreadable -> batch -> (worker
processes when configured).

Every element is a pure function of (seed, position in the stream), and the iterator's state is
a position, so a resumed run sees exactly the batches an uninterrupted one would have seen.
""" 

from __future__ import annotations

import functools
import math
import sys

import grain
from absl import flags
import numpy as np

from deep_image.data import augment, transforms


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"batch size {global_batch} does not divide over {process_count} "
                         "processes; make it a multiple of the process count")
    return global_batch // process_count


class ResizedCache:
    """A source whose images are decoded and resized to `scale` once, then served from memory.

    The paper caches training data in free device memory (§3.1); we cache in host memory, in
    one preallocated uint8 array: len x scale x scale x 3 bytes (147 MB for 12,000 images at 64,
    9.4 GB for 12,000 at 512). Each Grain worker process holds its own copy, so use it with
    `data.workers = 0` (read threads share it).
    """

    def __init__(self, source, scale: int):
        self._source, self._scale = source, scale
        self._images = np.zeros((len(source), scale, scale, 3), np.uint8)   # square resize
        self._labels = np.full((len(source),), -1, np.int64)
        self.class_names = source.class_names

    def __len__(self) -> int:
        return len(self._source)

    _UNREADABLE = -2

    def __getitem__(self, index: int) -> dict | None:
        index = int(index)
        if self._labels[index] == -1:
            example = self._source[index]
            if example is None:
                self._labels[index] = self._UNREADABLE
            else:
                self._images[index] = transforms.resize(example["image"], self._scale)
                self._labels[index] = example["label"]
        if self._labels[index] == self._UNREADABLE:
            return None
        return {"image": self._images[index], "label": int(self._labels[index])}


def train_dataset(source, config, *, process_index: int = 0, process_count: int = 1,
                  start_step: int = 0) -> grain.IterDataset:
    """Endless shuffled, augmented training batches of this process: {'image', 'label'},
    from global batch `start_step` on (a resumed run whose saved iterator does not fit)."""
    d = config.data
    if d.cache:
        if d.resize != "square":
            raise ValueError("config.data.cache needs config.data.resize='square'")
        source = ResizedCache(source, d.scale)
    local_batch = local_batch_size(config.batch_size, process_count)
    # The global stream: shuffled per epoch, each position augmented from its own seed.
    stream = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat(None)
    stream = stream.random_map(functools.partial(
        transforms.train_transform, scale=d.scale, crop=d.crop,
        augment_config=augment.Settings.of(d.augment), resize_mode=d.resize))
    # This process's rows of every global batch: rows p*b .. (p+1)*b - 1, so P processes
    # assemble exactly the global batches (and augmentations) one process would see.
    g = config.batch_size
    ds = grain.MapDataset.range(start_step * local_batch, sys.maxsize // g * local_batch).map(
        lambda i: stream[(i // local_batch) * g + process_index * local_batch + i % local_batch])
    # Read threads work on single examples; buffer `prefetch` batches' worth of them.
    it = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=d.threads, prefetch_buffer_size=max(d.threads, d.prefetch * local_batch)))
    it = it.filter(lambda x: x is not None)       # unreadable images, logged by the source
    it = it.batch(local_batch, drop_remainder=True)
    if d.workers > 0:
        if not flags.FLAGS.is_parsed():   # Grain's workers read absl flags (library use)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.workers,
                                                         per_worker_buffer_size=d.prefetch))
    return it


class EvalData:
    """This process's share of a split as fixed-size batches with a `mask`.

    Every process yields the same number of batches (collectives need that); padding examples
    have mask 0, so each example counts exactly once. Preprocessed batches are kept in memory
    after the first pass when `cache` is set (eval sets are small next to training sets).
    """

    def __init__(self, source, config, *, process_index: int = 0, process_count: int = 1,
                 cache: bool = True, scale: int | None = None, crop: int | None = -1,
                 use_box: bool = False, batch_size: int | None = None):
        """`scale` defaults to config.data.scale, `crop` to config.data.crop (None: the whole
        resized image, for dense testing), `batch_size` (global) to config.eval_batch_size."""
        d = config.data
        scale = d.scale if scale is None else scale
        crop = d.crop if crop == -1 else crop
        self.batch_size = local_batch_size(batch_size or config.eval_batch_size, process_count)
        self.size = len(source)
        per_process = math.ceil(self.size / process_count)
        self.num_batches = max(1, math.ceil(per_process / self.batch_size))
        ds = grain.MapDataset.source(source)[process_index::process_count]
        self._ds = ds.map(functools.partial(transforms.eval_transform, scale=scale, crop=crop,
                                            # whole images batch only at one square size
                                            resize_mode=d.resize if crop else "square",
                                            use_box=use_box))
        self._threads = d.threads
        side = scale if crop is None else crop
        self._shape = (side, side, 3)
        self._cache = [] if cache else None

    def _batches(self):
        it = self._ds.to_iter_dataset(grain.ReadOptions(num_threads=self._threads,
                                                        prefetch_buffer_size=4 * self._threads))
        it = iter(it.filter(lambda x: x is not None).batch(self.batch_size,
                                                            drop_remainder=False))
        for i in range(self.num_batches):
            b = next(it, None)
            n = 0 if b is None else len(b["label"])
            images = np.zeros((self.batch_size,) + self._shape, np.uint8)
            labels = np.zeros((self.batch_size,), np.int32)
            mask = np.zeros((self.batch_size,), bool)
            if n:
                images[:n], labels[:n], mask[:n] = b["image"], b["label"], True
            yield {"image": images, "label": labels, "mask": mask}

    def __iter__(self):
        if self._cache:
            yield from self._cache
            return
        for batch in self._batches():
            if self._cache is not None:
                self._cache.append(batch)
            yield batch
