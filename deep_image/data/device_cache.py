"""§3.1's device-memory data cache: "We also use device memory to cache the training data if
there is free memory space on the device after the model is loaded".

With `config.data.placement = "device"` the training split is decoded and resized once (as
`data.cache` does in host memory), into uint8 arrays on the devices, and every step draws its
batch and its §4.1 augmentations there (`data/device_augment.py`), inside the train step: a
step needs nothing from the host.

Where the images live (`plan`, checked against the memory each device has left after the
model and optimizer state, before anything is written):
- **replicated** (shards = 1) when the whole split fits on every device: the global batch of
  step t is positions t*B .. (t+1)*B - 1 of a stream of per-epoch permutations of all readable
  images, keyed by (seed, epoch). The same on every mesh and process count, so every layout
  trains on the global batches one device would, and a resume on another device count
  continues the same stream.
- **split over all S devices** (shards = S) when it does not: shard s holds every S-th
  readable image (s, s + S, ...; N mod S of them are left out, logged) and device s draws its
  B/S rows from its own per-epoch permutations of them, keyed by (seed, s, epoch). The data
  order then depends on S: still a pure function of (seed, step), so a resume on the same
  device count is exact, but one on another count continues with another order.
In both, example r of step t is augmented with the key (seed, t, r), r its row in the global
batch. Unreadable images are left out of the cache (counted and logged). The host order
(Grain's shuffle) is not reproduced: the two placements see the same distribution, not the
same batches.

The cache is built from host memory: each process decodes the whole split once (its threads in
parallel), then places the parts its own devices hold.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from deep_image.data import augment, device_augment, transforms

PLACEMENTS = ("host", "device")
_PERMUTATION, _AUGMENTATION = 1, 2     # fold_in tags of the two streams drawn from config.seed


class DeviceCacheError(ValueError):
    """The training split does not fit in device memory: the message says how much is needed
    and what to do."""


@dataclasses.dataclass(frozen=True)
class Plan:
    shards: int               # 1: every device holds every image; S: split over all S devices
    axes: tuple               # the mesh axes the shards are split over (the batch's)
    images: int               # training images (before unreadable ones are left out)
    scale: int
    bytes_per_device: int
    left_per_device: int      # device memory left after the state, per device
    crop: int
    batch_size: int           # global
    seed: int
    settings: augment.Settings

    @property
    def rows_per_shard(self) -> int:
        return self.batch_size // self.shards

    def describe(self) -> str:
        where = ("replicated on every device" if self.shards == 1 else
                 f"split over {self.shards} devices ({self.images // self.shards:,} images "
                 "each)")
        return (f"training data on the devices: {self.images:,} images at {self.scale}x"
                f"{self.scale}, {self.bytes_per_device / 2**20:,.1f} MiB per device, {where}; "
                f"{self.left_per_device / 2**20:,.1f} MiB per device were left after the model "
                "and optimizer state; crops and the §4.1 augmentations are drawn in the step")


def image_bytes(scale: int) -> int:
    return scale * scale * 3 + 4          # uint8 RGB and an int32 label


def available_host_memory() -> int:
    """MemAvailable of /proc/meminfo (bytes), or 0 where there is none."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_left(state, data_config) -> int:
    """Bytes the first local device has left after `state`: `data.device_memory` (bytes per
    device) minus the state's blocks on it when set, else what the device reports (GPU:
    bytes_limit - bytes_in_use), else (CPU) the host's available memory shared by the local
    devices."""
    device = jax.local_devices()[0]
    if data_config.device_memory > 0:
        own = sum(s.data.nbytes for x in jax.tree.leaves(state) if hasattr(x, "addressable_shards")
                  for s in x.addressable_shards if s.device == device)
        return int(data_config.device_memory) - own
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return available_host_memory() // max(1, jax.local_device_count())


def plan(num_images: int, config, mesh, state) -> Plan:
    """Where the training split goes: replicated if it fits in `data.device_cache_share` of the
    memory every device has left after `state`, else split over every device; a
    DeviceCacheError with the sizes and what to do when neither fits."""
    d = config.data
    left = memory_left(state, d)
    budget = int(max(0, left) * d.device_cache_share)
    whole = num_images * image_bytes(d.scale)
    devices = mesh.size
    axes = tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)
    if whole <= budget:
        shards = 1
    elif devices > 1 and -(-whole // devices) <= budget:
        shards = devices
    else:
        mib = 2**20
        raise DeviceCacheError(
            f"config.data.placement='device': the training split needs {whole / mib:,.1f} MiB "
            f"({num_images:,} images at {d.scale}x{d.scale}), {whole / devices / mib:,.1f} MiB "
            f"per device split over {devices}, but each device has {max(0, left) / mib:,.1f} "
            f"MiB left after the model and optimizer state, of which the cache may take "
            f"{d.device_cache_share:g} (config.data.device_cache_share): use "
            "config.data.placement='host', a smaller config.data.scale, or more devices")
    per_shard = num_images // shards
    if config.batch_size // shards > per_shard:
        raise DeviceCacheError(
            f"config.data.placement='device': each of the {shards} cache shards holds "
            f"{per_shard} images, fewer than the {config.batch_size // shards} rows of a batch "
            "it must give each step; lower config.batch_size or use placement='host'")
    return Plan(shards=shards, axes=axes, images=num_images, scale=d.scale,
                bytes_per_device=-(-whole // shards), left_per_device=left, crop=d.crop,
                batch_size=config.batch_size, seed=config.seed,
                settings=augment.Settings.of(d.augment))


def sharding(p: Plan, mesh) -> NamedSharding:
    return NamedSharding(mesh, P(p.axes or None) if p.shards > 1 else P())


def spec(p: Plan):
    """The shard_map spec of the cache arrays (leading axis: shards)."""
    return P(p.axes or None) if p.shards > 1 else P()


def decode_resized(source, scale: int, threads: int):
    """(images N x scale x scale x 3 uint8, labels int32, readable bool) of the whole source,
    decoded and resized in `threads` read threads, in order."""
    n = len(source)
    images = np.zeros((n, scale, scale, 3), np.uint8)
    labels = np.zeros((n,), np.int32)
    readable = np.zeros((n,), bool)

    def load(i):
        example = source[int(i)]
        if example is None:
            return {"i": i, "ok": False}
        return {"i": i, "ok": True, "label": example["label"],
                "image": transforms.resize(example["image"], scale)}
    ds = grain.MapDataset.range(n).map(load).to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads))
    for x in ds:
        if x["ok"]:
            images[x["i"]], labels[x["i"]], readable[x["i"]] = x["image"], x["label"], True
    return images, labels, readable


def build(source, p: Plan, mesh, threads: int) -> dict:
    """The cache arrays on the devices: {"images": S x n x scale x scale x 3 uint8, "labels":
    S x n int32}, S = p.shards, placed as `sharding(p, mesh)`."""
    images, labels, readable = decode_resized(source, p.scale, threads)
    keep = np.flatnonzero(readable)
    if len(keep) < len(readable):
        logging.warning("device cache: %d of %d training images are unreadable and left out",
                        len(readable) - len(keep), len(readable))
    n = len(keep) // p.shards
    if n * p.shards < len(keep):
        logging.info("device cache: %d images left out so that %d shards hold %d each",
                     len(keep) - n * p.shards, p.shards, n)
    if n < p.rows_per_shard:
        raise DeviceCacheError(f"config.data.placement='device': {len(keep)} readable training "
                               f"images give {n} per shard, fewer than a batch needs "
                               f"({p.rows_per_shard}); lower config.batch_size")
    order = np.stack([keep[s::p.shards][:n] for s in range(p.shards)])   # S x n
    host = {"images": images[order], "labels": labels[order]}
    del images
    target = sharding(p, mesh)
    return {k: jax.make_array_from_callback(v.shape, target, lambda index, v=v: v[index])
            for k, v in host.items()}


def _shard_rows(images, labels, p: Plan, step, shard, positions, rows):
    """Rows `positions` (of p.rows_per_shard per step) of shard `shard`'s draw at `step`,
    augmented as global batch rows `rows`: (images crop x crop, labels)."""
    n = images.shape[0]
    per_step = p.rows_per_shard
    first = step * per_step
    base = jax.random.fold_in(jax.random.PRNGKey(p.seed), _PERMUTATION)
    epoch0 = first // n

    def permutation(epoch):
        return jax.random.permutation(jax.random.fold_in(jax.random.fold_in(base, shard),
                                                         epoch), n)
    pos = first + positions
    # one step's rows span at most two epochs (rows_per_shard <= n)
    index = jnp.where(pos // n == epoch0, permutation(epoch0)[pos % n],
                      permutation(epoch0 + 1)[pos % n])
    aug = jax.random.fold_in(jax.random.PRNGKey(p.seed), _AUGMENTATION)
    keys = jax.vmap(lambda r: device_augment.example_key(aug, step, r))(rows)
    return (device_augment.augment_batch(images[index], keys, p.crop, p.settings),
            labels[index])


def global_batch(cache: dict, step, p: Plan) -> dict:
    """Step `step`'s whole global batch from the whole cache (one device): shard after shard,
    the rows a mesh's devices would draw."""
    per = p.rows_per_shard
    parts = [_shard_rows(cache["images"][s], cache["labels"][s], p, step, s,
                         jnp.arange(per), s * per + jnp.arange(per))
             for s in range(cache["images"].shape[0])]
    return {"image": jnp.concatenate([a for a, _ in parts]),
            "label": jnp.concatenate([b for _, b in parts])}


def local_batch(cache: dict, step, p: Plan, block, rows: int) -> dict:
    """Inside the shard_map step: this device's `rows` rows of the global batch (it is row
    block `block`), from its part of the cache (the whole cache, or its own shard)."""
    offsets = jnp.arange(rows)
    if p.shards == 1:
        positions = block * rows + offsets      # its rows of the one stream
    else:
        positions = offsets                     # its own shard's stream
    image, label = _shard_rows(cache["images"][0], cache["labels"][0], p, step,
                               block if p.shards > 1 else 0, positions, block * rows + offsets)
    return {"image": image, "label": label}


class DeviceStream:
    """The cache as the loop's training iterator: each step takes the same arrays and draws its
    batch from them. Nothing to checkpoint: the position is the step. `build` (-> the arrays)
    runs at the first step, so a finished run's rerun decodes nothing."""

    def __init__(self, build):
        self._build, self._arrays = build, None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._arrays is None:
            self._arrays = self._build()
        return self._arrays

    def close(self) -> None:
        self._arrays = None

