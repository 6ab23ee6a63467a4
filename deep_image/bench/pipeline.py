"""Input-pipeline throughput: 512x512 source JPEGs to 224 crops, images/s per core.

    python -m deep_image.bench.pipeline [--json PATH] [--images N] [--workers W]

Stages, each timed on the same images in the same run:
  decode            JPEG bytes -> RGB (cv2.imdecode)
  crop_flip         decode + resize to the scale + crop + flip
  full_chain        decode + resize + the paper's six augmentations (§4.1), all switched on
  augment_only      the six augmentations on already-decoded images
  albumentations    the closest albumentations chain (RandomCrop, HorizontalFlip, Rotate,
                    OpticalDistortion, RGBShift; it has no vignetting), augmentation only,
                    with the same per-op probabilities as ours (0.5; 7/8 for the cast)
  *_all_ops         both chains with every op applied to every image (probabilities 1)
Each with one process and with one process per core (per-core figures divide by the cores).
Also the cost and saving of `config.data.cache` (resized images kept in memory) and peak RSS.

The device path (`data/device_augment.py`, placement 'device'): the same augmentations as
jitted array ops on batches drawn from images already in device memory (`--device_batch`),
crop+flip, all six at the paper's probabilities and every op on every image, in images/s of
the process on whatever JAX runs on (on this CPU: every core, so per core = / cores), beside
the host chain's augment_only figures. `--parts` picks host stages, grain, device.

Then the pipeline training runs (`data/pipeline.py`: Grain, an image folder of the same q90
JPEGs, all six augmentations, batches of 32) against the number of Grain worker processes
(`--grain_workers`; 0: read threads in this process), in steady state (after a warm-up that
starts the workers), and what it means for a GPU: the images/s one H100 trains at for VGG-16
and ResNet-50 at 224 (train FLOPs = 3 x forward, at `--gpu_mfu` of the bfloat16 dense peak),
divided by the pipeline's images/s per core: the host cores each GPU needs.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import resource
import time

import cv2
import numpy as np
from absl import app, flags

from deep_image import config as config_lib
from deep_image.bench import hardware
from deep_image.data import augment, synthetic, transforms

flags.DEFINE_string("json", None, "Write the results here as JSON.")
flags.DEFINE_integer("images", 200, "Distinct source images.")
flags.DEFINE_integer("workers", 0, "Processes for the all-cores run (0: os.cpu_count()).")
flags.DEFINE_float("seconds", 3.0, "Minimum time per measurement.")
flags.DEFINE_list("grain_workers", ["0", "1", "2"], "Grain worker counts of the pipeline run.")
flags.DEFINE_list("parts", ["host", "grain", "device"], "What to measure: host stages, the "
                  "grain pipeline, the device augmentation.")
flags.DEFINE_integer("device_batch", 32, "Batch of the device augmentation.")
flags.DEFINE_float("gpu_mfu", 0.5, "Model FLOP utilization assumed for the cores-per-GPU "
                   "figure.")
FLAGS = flags.FLAGS

SCALE, CROP = 512, 224


def make_jpegs(n: int, size: int = SCALE) -> list[bytes]:
    return synthetic.jpeg_files(n, size)


def _decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def _albumentations_chain(p: float = 0.5):
    try:
        import albumentations as A
    except ImportError:
        return None
    return A.Compose([
        A.RandomCrop(CROP, CROP), A.HorizontalFlip(p=0.5), A.Rotate(limit=10, p=p),
        A.OpticalDistortion(distort_limit=0.3, p=p),
        A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20,
                   p=1.0 if p == 1.0 else 0.875),
    ])


def _stage_fn(stage: str):
    """A function (item, rng) -> output for one stage."""
    full = augment.Settings.of(config_lib.all_six())
    basic = augment.Settings.of(config_lib.base().data.augment)
    if stage == "decode":
        return lambda data, rng: _decode(data)
    if stage == "crop_flip":
        return lambda data, rng: transforms.train_transform(
            {"image": _decode(data), "label": 0}, rng, scale=SCALE, crop=CROP,
            augment_config=basic)
    if stage == "full_chain":
        return lambda data, rng: transforms.train_transform(
            {"image": _decode(data), "label": 0}, rng, scale=SCALE, crop=CROP,
            augment_config=full)
    if stage in ("augment_only", "augment_all_ops"):
        if stage == "augment_all_ops":
            full = dataclasses.replace(full, rotation_prob=1.0, lens_prob=1.0,
                                       vignetting_prob=1.0, color_cast_channel_prob=1.0)
        return lambda image, rng: augment.apply_fused(
            image, augment.sample(rng, full, image.shape, CROP), CROP)
    if stage in ("albumentations", "albumentations_all_ops"):
        chain = _albumentations_chain(1.0 if stage.endswith("all_ops") else 0.5)
        return lambda image, rng: chain(image=image)["image"]
    raise ValueError(stage)


def _rate(stage: str, items: list, seconds: float, seed: int = 0) -> float:
    """Images/s of one process over `items`, cycling until `seconds` have passed."""
    cv2.setNumThreads(1)
    augment.warm_caches(CROP)
    fn, rng = _stage_fn(stage), np.random.default_rng(seed)
    for item in items[:5]:     # warm caches (lens maps, vignette masks) as a long run would
        fn(item, rng)
    n, t0 = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item, rng)
        n += len(items)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


def _rate_worker(args):
    return _rate(*args)


def measure(stage: str, items: list, seconds: float, workers: int) -> tuple[float, float]:
    """(images/s of one process, images/s per core with `workers` processes)."""
    one = _rate(stage, items, seconds)
    with mp.get_context("spawn").Pool(workers) as pool:
        rates = pool.map(_rate_worker, [(stage, items, seconds, s) for s in range(workers)])
    return one, sum(rates) / workers


def grain_rate(jpegs: list[bytes], workers: int, seconds: float, batch: int = 32) -> float:
    """Images/s of the training pipeline (data/pipeline.py) with `workers` Grain processes
    (0: its read threads in this process) on an image folder of `jpegs`, in steady state."""
    import tempfile

    from deep_image.data import pipeline, sources
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_image_folder(root, jpegs)
        c = config_lib.base()
        c.data.source, c.data.root = "folder", root
        c.data.scale, c.data.crop = SCALE, CROP
        c.data.augment.update(config_lib.all_six())
        c.data.workers, c.batch_size = workers, batch
        it = iter(pipeline.train_dataset(sources.get_source(c.data, "train"), c,
                                         backend="gpu"))
        try:
            for _ in range(max(3, 2 * workers)):     # start the workers, fill the buffers
                next(it)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                n += len(next(it)["label"])
            return n / (time.perf_counter() - t0)
        finally:
            it.close()


DEVICE_STAGES = {   # the device path's settings, named after the host stages they match
    "device_crop_flip": lambda: augment.Settings.of(config_lib.base().data.augment),
    "device_augment_only": lambda: augment.Settings.of(config_lib.all_six()),
    "device_augment_all_ops": lambda: dataclasses.replace(
        augment.Settings.of(config_lib.all_six()), rotation_prob=1.0, lens_prob=1.0,
        vignetting_prob=1.0, color_cast_channel_prob=1.0),
}


def device_rate(images: np.ndarray, settings, seconds: float, batch: int) -> float:
    """Images/s of the device augmentation: each step draws `batch` of `images` (placed on the
    default device once, as the device cache holds them) and augments them in one jitted
    program; every step waited for."""
    import jax
    import jax.numpy as jnp

    from deep_image.data import device_augment
    cache = jax.device_put(images)
    key = jax.random.PRNGKey(0)

    @jax.jit
    def step(cache, t):
        index = jax.random.randint(jax.random.fold_in(key, t), (batch,), 0, cache.shape[0])
        keys = jax.vmap(lambda r: device_augment.example_key(key, t, r))(jnp.arange(batch))
        return device_augment.augment_batch(cache[index], keys, CROP, settings)
    step(cache, 0).block_until_ready()            # compile
    n, t, t0 = 0, 1, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(cache, t).block_until_ready()
        n, t = n + batch, t + 1
    return n / (time.perf_counter() - t0)


def main(argv):
    del argv
    workers = FLAGS.workers or os.cpu_count()
    jpegs = make_jpegs(FLAGS.images)
    decoded = [_decode(j) for j in jpegs]
    stages = (["decode", "crop_flip", "full_chain", "augment_only", "augment_all_ops"]
              if "host" in FLAGS.parts else [])
    if stages and _albumentations_chain() is not None:
        stages += ["albumentations", "albumentations_all_ops"]
    rows, result = [], {"cores": workers, "images": FLAGS.images, "scale": SCALE, "crop": CROP}
    if "device" in FLAGS.parts:
        import jax
        result["device"] = {"backend": jax.default_backend(), "batch": FLAGS.device_batch,
                            "device_kind": jax.devices()[0].device_kind}
        images = np.stack(decoded)
        print(f"device augmentation on {jax.default_backend()} "
              f"({jax.devices()[0].device_kind}), batches of {FLAGS.device_batch}, "
              f"{SCALE} -> {CROP}")
        on_cpu = jax.default_backend() == "cpu"
        print(f"{'stage':<26}{'images/s':>12}{'per core' if on_cpu else '':>10}")
        for name, settings in DEVICE_STAGES.items():
            rate = device_rate(images, settings(), FLAGS.seconds, FLAGS.device_batch)
            result["device"][name] = rate
            if on_cpu:      # XLA:CPU runs the program on every core of the process
                result["device"][f"{name}_per_core"] = rate / len(os.sched_getaffinity(0))
            print(f"{name:<26}{rate:>12.1f}"
                  f"{result['device'].get(f'{name}_per_core', ''):>10.1f}" if on_cpu else
                  f"{name:<26}{rate:>12.1f}")
        _write(result)        # kept if a time limit stops the host stages
    if stages:
        for stage in stages:
            items = decoded if stage.startswith(("augment", "albumentations")) else jpegs
            one, per_core = measure(stage, items, FLAGS.seconds, workers)
            rows.append((stage, one, per_core))
            key = "albumentations_augment_only" if stage == "albumentations" else stage
            result[f"{key}_per_core"] = per_core
            result[f"{key}_one_process"] = one

        # config.data.cache: memory it costs, decode+resize time per epoch it saves.
        result["cache_bytes_per_image"] = SCALE * SCALE * 3
        result["cache_saves_seconds_per_image"] = 1.0 / result["decode_per_core"]
        result["full_chain_over_decode_time"] = result["decode_per_core"] / result[
            "full_chain_per_core"]
        if "albumentations_augment_only_per_core" in result:
            result["augment_speedup_vs_albumentations"] = (
                result["augment_only_per_core"] / result["albumentations_augment_only_per_core"])
            result["augment_speedup_vs_albumentations_all_ops"] = (
                result["augment_all_ops_per_core"] / result["albumentations_all_ops_per_core"])
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        print(f"{'stage':<24}{'1 process img/s':>18}{f'per core ({workers} procs)':>24}")
        for stage, one, per_core in rows:
            print(f"{stage:<24}{one:>18.1f}{per_core:>24.1f}")
        print(f"full chain time / decode time: {result['full_chain_over_decode_time']:.2f} "
              f"(target <= 1.5)")
        if "augment_speedup_vs_albumentations" in result:
            print(f"our augmentation vs albumentations: "
                  f"{result['augment_speedup_vs_albumentations']:.2f}x at p=0.5, "
                  f"{result['augment_speedup_vs_albumentations_all_ops']:.2f}x with every op "
                  "(target >= 2)")
        print(f"cache: {result['cache_bytes_per_image'] / 2**20:.2f} MiB per image at {SCALE}, "
              f"saves {1e3 * result['cache_saves_seconds_per_image']:.2f} ms decode per image "
              "per epoch; peak RSS " f"{result['peak_rss_mib']:.0f} MiB")
    if "grain" in FLAGS.parts:
        # the pipeline a run uses, against Grain worker counts
        cpus = len(os.sched_getaffinity(0))
        result["grain"] = {}
        print(f"\ntraining pipeline (Grain, image folder, all six, batch 32) on {cpus} CPUs")
        print(f"{'workers':>8}{'images/s':>12}{'per core':>10}")
        for w in sorted({int(x) for x in FLAGS.grain_workers}):
            rate = grain_rate(jpegs, w, FLAGS.seconds)
            busy = min(cpus, max(1, w))           # cores the pipeline can keep busy
            result["grain"][str(w)] = {"images_per_second": rate, "per_core": rate / busy}
            print(f"{w:>8}{rate:>12.1f}{rate / busy:>10.1f}")
        best = max(v["per_core"] for v in result["grain"].values())
        result["cores_per_gpu"] = hardware.cores_per_gpu(best, FLAGS.gpu_mfu, CROP)
        result["cores_per_gpu_at_per_core"] = best
        print(f"host cores per GPU at {best:.0f} images/s per core (MFU {FLAGS.gpu_mfu:g}, "
              f"{CROP} crops):")
        for model, gpus in result["cores_per_gpu"].items():
            print("  " + model + ": " + ", ".join(
                f"{gpu} {v['images_per_second']:,.0f} img/s -> {v['cores']:.1f} cores"
                for gpu, v in gpus.items()))
    _write(result)


def _write(result: dict) -> None:
    if FLAGS.json:        # atomically: a kill mid-write keeps the last complete file
        with open(FLAGS.json + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(FLAGS.json + ".tmp", FLAGS.json)


if __name__ == "__main__":
    app.run(main)
