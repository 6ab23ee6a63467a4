"""The Grain input pipeline: source -> per-epoch shuffle -> this process's slice -> random_map
(decode, resize, crop, augment) -> threaded reads -> skip unreadable -> batch -> (worker
processes) -> (on the devices, `device_prefetch` batches ahead of the step).

Every element is a pure function of (seed, position in the stream), and the iterator's state is
a position, so a resumed run sees exactly the batches an uninterrupted one would have seen
(also with batches prefetched: Grain's prefetch iterator saves the position of the last batch
the loop took, not of the last one it read).

Host parallelism: `data.workers` and `data.threads` of -1 are derived from the CPUs this
process may use (`usable_cpus`: its affinity mask, and SLURM's CPUs per task); OpenCV runs
single-threaded, since the pipeline's threads and workers are the parallelism.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys

import cv2
import grain
from absl import flags
import numpy as np

from deep_image.data import augment, transforms


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (what `taskset`, cgroups' cpusets and
    SLURM's binding leave it), at most SLURM's CPUs per task when SLURM says."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(cpus or 1, int(slurm)) if slurm.isdigit() and int(slurm) > 0
               else cpus or 1)


def host_parallelism(data_config, backend: str, cpus: int | None = None) -> tuple[int, int]:
    """(Grain worker processes, read threads per process) for `data_config`: its own values
    where they are >= 0; -1: one worker per usable CPU but one (the training process's own)
    with 2 read threads each when the step runs on an accelerator, and no workers, one thread
    per CPU, when the step itself runs on the CPUs (`backend` "cpu": workers would take the
    cores the step needs) or `cache` is set."""
    cpus = cpus or usable_cpus()
    workers = data_config.workers
    if workers < 0:     # (a host cache is per process: its read threads share it)
        workers = 0 if backend == "cpu" or cpus < 3 or data_config.cache else cpus - 1
    threads = data_config.threads
    if threads < 0:
        threads = 2 if workers else cpus
    return workers, max(1, threads)


def _one_opencv_thread(*_):
    cv2.setNumThreads(1)


def on_devices(ds: grain.IterDataset, put, depth: int) -> grain.IterDataset:
    """`ds`'s batches through `put` (host arrays -> device arrays), `depth` batches ahead of
    the consumer in a thread, so the copy overlaps the step (0: put when taken)."""
    if depth <= 0:
        return ds.map(put)
    from grain.experimental import ThreadPrefetchIterDataset
    return ThreadPrefetchIterDataset(ds.map(put), prefetch_buffer_size=depth)


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
                  start_step: int = 0, backend: str = "cpu") -> grain.IterDataset:
    """Endless shuffled, augmented training batches of this process: {'image', 'label'},
    from global batch `start_step` on (a resumed run whose saved iterator does not fit).
    `backend` (the step's: jax.default_backend()) decides automatic host parallelism."""
    d = config.data
    workers, threads = host_parallelism(d, backend)
    if start_step == 0:
        logging.info("input pipeline: %d Grain worker processes x %d read threads (%d usable "
                     "CPUs), OpenCV single-threaded", workers, threads, usable_cpus())
    _one_opencv_thread()
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
        num_threads=threads, prefetch_buffer_size=max(threads, d.prefetch * local_batch)))
    it = it.filter(lambda x: x is not None)       # unreadable images, logged by the source
    it = it.batch(local_batch, drop_remainder=True)
    if workers > 0:
        if not flags.FLAGS.is_parsed():   # Grain's workers read absl flags (library use)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=d.prefetch),
                            worker_init_fn=_one_opencv_thread)
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
        self._threads = max(1, d.threads if d.threads >= 0 else usable_cpus())
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
