"""§3.1's device cache and the §4.1 augmentations on the device (data/device_cache.py,
data/device_augment.py): the device ops give the host ops' pixels (OpenCV, data/augment.py) to
within interpolation rounding, the device sampler draws from Table 1's spaces with the host
sampler's distributions, the cache is sized against the memory left after the state, and a
run with the device cache trains, stops and resumes bitwise (the layouts: test_parallel.py's
device-placement mode)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import (REPO, TINY, StopAt, assert_trees_equal, restore_weights, tiny_config,
                      xla_flags)
from deep_image import config as config_lib
from deep_image.data import augment, device_augment, device_cache
from deep_image.data.synthetic import SynthBirdsSpec, render
from deep_image.parallel import mesh as mesh_lib
from deep_image.training import loop

CROP = 80


def _all_on(**kw):
    a = config_lib.all_six()
    a.update(dict(rotation_prob=1.0, lens_prob=1.0, vignetting_prob=1.0))
    a.update(kw)
    return augment.Settings.of(a)


@pytest.fixture(scope="module")
def image():
    return render(SynthBirdsSpec(native_size=96), "train", 1)[0]


@pytest.fixture(scope="module")
def device_apply():
    settings = _all_on()
    return jax.jit(lambda im, d: device_augment.apply(im, d, CROP, settings))


def _diff(image, p, device_apply):
    host = augment.apply_fused(image, p, CROP).astype(int)
    dev = np.asarray(device_apply(image, device_augment.from_host(p, image.shape[:2], CROP)))
    assert dev.shape == host.shape == (CROP, CROP, 3) and dev.dtype == np.uint8
    return np.abs(host - dev.astype(int))


OPS = {"crop": augment.Params(crop=(3, 11)),
       "flip": augment.Params(crop=(3, 11), flip=True),
       "rotation+10": augment.Params(crop=(0, 15), rotation=10),
       "rotation-7_flip": augment.Params(crop=(15, 0), rotation=-7, flip=True),
       **{f"lens_{t}": augment.Params(crop=(5, 5), lens=(t, 65)) for t in augment.LENS_TYPES},
       "lens_barrel_1": augment.Params(crop=(5, 5), lens=("barrel", 1)),
       "color_cast_clipped": augment.Params(crop=(2, 2), color_cast=(20, -20, 0)),
       "vignette_strongest": augment.Params(crop=(2, 2), vignette=(0.2, 0.98)),
       "vignette_late": augment.Params(crop=(2, 2), vignette=(0.98, 0.5))}
EXACT = {"crop", "flip", "color_cast_clipped", "vignette_strongest", "vignette_late"}


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_gives_the_host_pixels(op, image, device_apply):
    """Crop, flip, cast and vignette: the host's pixels exactly. Resampling (rotation, lens):
    OpenCV rounds its bilinear weights to 15 bits, we do not: at most 2 grey levels on a
    pixel, under 0.1 on average (measured: <= 0.04)."""
    d = _diff(image, OPS[op], device_apply)
    if op in EXACT:
        assert d.max() == 0, (op, d.max())
    else:
        assert d.mean() < 0.1 and d.max() <= 2, (op, d.mean(), d.max())


def test_the_full_chain_gives_the_host_pixels(image, device_apply):
    """Every op on every image, 100 host draws: under 0.05 grey levels off on average, under
    0.1% of pixels more than 1 level off (the bound of the README)."""
    diffs = [_diff(image, augment.sample(np.random.default_rng(s), _all_on(), image.shape,
                                         CROP), device_apply) for s in range(100)]
    means = [d.mean() for d in diffs]
    assert np.mean(means) < 0.05 and max(means) < 0.1, (np.mean(means), max(means))
    assert np.mean([(d > 1).mean() for d in diffs]) < 1e-3


def test_the_device_ops_do_what_they_say_on_their_own(device_apply):
    """Against hand computation, not the host path: a flip mirrors, a +20 cast on 250 clips to
    255, the strongest vignette leaves the centre and darkens the corner by 98% (of 200: 4)."""
    ramp = np.arange(96 * 96 * 3, dtype=np.int64).reshape(96, 96, 3) % 251
    ramp = ramp.astype(np.uint8)
    draw = device_augment.from_host(augment.Params(crop=(0, 0), flip=True), (96, 96), CROP)
    np.testing.assert_array_equal(np.asarray(device_apply(ramp, draw)), ramp[:CROP, :CROP][:, ::-1])
    white = np.full((96, 96, 3), 250, np.uint8)
    cast = device_augment.from_host(augment.Params(crop=(0, 0), color_cast=(20, 0, -20)),
                                    (96, 96), CROP)
    assert np.asarray(device_apply(white, cast))[10, 10].tolist() == [255, 250, 230]
    grey = np.full((96, 96, 3), 200, np.uint8)
    vig = device_augment.from_host(augment.Params(crop=(0, 0), vignette=(0.2, 0.98)),
                                   (96, 96), CROP)
    out = np.asarray(device_apply(grey, vig))
    assert out[CROP // 2, CROP // 2, 0] == 200 and out[0, 0, 0] == 4


def _device_draws(settings, n, shape=(64, 64), crop=56, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    draws = jax.device_get(jax.jit(jax.vmap(
        lambda k: device_augment.sample(k, settings, shape, crop)))(keys))
    return [device_augment.to_host({k: v[i] for k, v in draws.items()}) for i in range(n)]


def _host_draws(settings, n, shape=(64, 64, 3), crop=56):
    return [augment.sample(np.random.default_rng(i), settings, shape, crop) for i in range(n)]


MARGINALS = {
    "crop_y": lambda p: p.crop[0], "crop_x": lambda p: p.crop[1], "flip": lambda p: p.flip,
    "rotation": lambda p: p.rotation or 0,
    "lens_type": lambda p: p.lens[0] if p.lens else "-",
    "lens_degree": lambda p: p.lens[1] if p.lens else 0,
    "cast_r": lambda p: p.color_cast[0] if p.color_cast else 99,
    "cast_b": lambda p: p.color_cast[2] if p.color_cast else 99,
    "vignette_radius": lambda p: p.vignette[0] if p.vignette else -1,
    "vignette_strength": lambda p: p.vignette[1] if p.vignette else -1,
}


@pytest.fixture(scope="module")
def draws():
    settings = augment.Settings.of(config_lib.all_six())     # the paper's probabilities
    return _device_draws(settings, 20_000), _host_draws(settings, 20_000)


def test_device_draws_stay_in_table1_spaces_and_cover_them(draws):
    dev, _ = draws
    casts, vignettes, lenses = (set(augment.color_cast_space()), set(augment.vignette_space()),
                                set(augment.lens_space()))
    crops = set(augment.crop_space(64, 56))
    for p in dev:
        assert p.crop in crops
        assert p.rotation is None or p.rotation in augment.ROTATION_ANGLES
        assert p.lens is None or p.lens in lenses
        assert p.color_cast is None or p.color_cast in casts
        assert p.vignette is None or p.vignette in vignettes
    # the small spaces are drawn whole: 20 angles, 260 lenses, 8 x 8 crop offsets
    assert {p.rotation for p in dev} - {None} == set(augment.ROTATION_ANGLES)
    assert {p.lens for p in dev} - {None} == lenses
    assert {p.crop for p in dev} == crops


@pytest.mark.parametrize("name", list(MARGINALS))
def test_device_draws_follow_the_host_distribution(draws, name):
    """20,000 draws of each sampler (the paper's probabilities: 1/2 per op, 1/2 per cast
    channel): a chi-square test of homogeneity per parameter cannot tell them apart
    (p > 0.001; a sampler off by a few percent on any value gives p < 1e-6 at this size)."""
    f = MARGINALS[name]
    values = sorted({f(p) for pair in draws for p in pair}, key=str)
    table = np.array([[sum(f(p) == v for p in side) for v in values] for side in draws])
    assert stats.chi2_contingency(table)[1] > 1e-3, (name, table)


def test_probabilities_are_the_configs():
    """Rotation always, the rest never: the switches and probabilities reach the sampler."""
    settings = augment.Settings(crop=False, flip=False, rotation=True, rotation_prob=1.0)
    dev = _device_draws(settings, 500)
    assert all(p.rotation in augment.ROTATION_ANGLES for p in dev)
    assert all(p.crop == (4, 4) and not p.flip and p.lens is None and p.color_cast is None
               and p.vignette is None for p in dev)


def test_draws_are_keyed_by_seed_step_and_example():
    settings = augment.Settings.of(config_lib.all_six())
    key = jax.random.PRNGKey(0)
    draw = jax.jit(lambda step, ex: device_augment.sample(
        device_augment.example_key(key, step, ex), settings, (64, 64), 56))
    a, again = jax.device_get(draw(3, 5)), jax.device_get(draw(3, 5))
    assert all(np.array_equal(a[k], again[k]) for k in a)
    for other in (draw(4, 5), draw(3, 6)):
        other = jax.device_get(other)
        assert not all(np.array_equal(a[k], other[k]) for k in a)


# ----------------------------------------------------------------------------- the cache

def _plan(memory, **overrides):
    config = tiny_config(data__placement="device", data__device_memory=memory, **overrides)
    mesh = mesh_lib.make_mesh((("data", 1), ("model", 1)))
    return device_cache.plan(256, config, mesh, {})


def test_the_cache_is_sized_against_the_memory_left():
    per_image = 40 * 40 * 3 + 4                    # the tiny config's scale, uint8 + label
    p = _plan(2 * 256 * per_image)                 # half may be used: it just fits
    assert p.shards == 1 and p.bytes_per_device == 256 * per_image
    with pytest.raises(device_cache.DeviceCacheError) as e:
        _plan(2 * 256 * per_image - 2)
    msg = str(e.value)
    assert "\n" not in msg and "needs 1.2 MiB" in msg and "placement='host'" in msg
    with pytest.raises(device_cache.DeviceCacheError, match="fewer than the 512 rows"):
        _plan(10**9, batch_size=512)


def test_a_cache_too_large_for_one_device_is_split_over_all():
    # half of it may hold the cache: too little for the whole split, enough for a quarter
    config = tiny_config(data__placement="device", data__device_memory=(40 * 40 * 3 + 4) * 256)
    mesh = mesh_lib.make_mesh((("data", 1), ("model", 1)))
    with pytest.raises(device_cache.DeviceCacheError):
        device_cache.plan(256, config, mesh, {})

    class FourDevices:                              # only the mesh's size and axes are read
        size, axis_names, shape = 4, ("data", "model"), {"data": 4, "model": 1}
    p = device_cache.plan(256, config, FourDevices(), {})
    assert p.shards == 4 and p.axes == ("data",) and p.rows_per_shard == 4


def _replicated_batches(images, batch_size, crop, settings):
    """step -> the global batch a one-shard (replicated) cache of `images` (labels 0..n-1)
    draws, jitted."""
    n, scale = images.shape[:2]
    cache = {"images": jnp.asarray(images[None]), "labels": jnp.arange(n, dtype=jnp.int32)[None]}
    p = device_cache.Plan(shards=1, axes=(), images=n, scale=scale, bytes_per_device=0,
                          left_per_device=0, crop=crop, batch_size=batch_size, seed=0,
                          settings=settings)
    return jax.jit(lambda step: device_cache.global_batch(cache, step, p))


def test_global_batch_draws_each_epoch_once_and_is_a_pure_function_of_step():
    """Replicated cache of 20 labelled images, batches of 8: the first 5 steps' 40 rows are two
    epochs, each a permutation of the 20; step 3 again is step 3; the crop is the image's."""
    n, b = 20, 8
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 40, 1)
    images = np.broadcast_to(images[:, :, :40], (n, 40, 40, 3)).copy()
    batch = _replicated_batches(images, b, 32, augment.Settings())
    labels = np.concatenate([np.asarray(batch(s)["label"]) for s in range(5)])
    assert sorted(labels[:20]) == sorted(labels[20:]) == list(range(n))
    assert not np.array_equal(labels[:20], labels[20:])          # a new order each epoch
    third = batch(3)
    np.testing.assert_array_equal(third["image"], batch(3)["image"])
    # every row's pixels are its label's image (the image/label pairing survives the gather)
    assert (np.asarray(third["image"])[:, 0, 0, 0] == np.asarray(third["label"])).all()


def test_each_step_draws_new_augmentations_for_its_rows():
    """Pixels that encode their own coordinates show each row's crop offset: row r of step t is
    augmented from the key (seed, t, r), so a row's crop changes from step to step (one offset
    for all 12 steps: about 64^-11 by chance) and stays within the 8 x 8 offsets of a 32 crop
    of a 40 image; the same step again draws the same crops."""
    n, b, side, crop = 16, 4, 40, 32
    yy, xx = np.mgrid[0:side, 0:side].astype(np.uint8)
    image = np.stack([yy, xx, np.zeros_like(yy)], -1)
    batch = _replicated_batches(np.broadcast_to(image, (n, side, side, 3)), b, crop,
                                augment.Settings(crop=True, flip=False))
    # [step, row, (y, x)]
    offsets = np.stack([np.asarray(batch(s)["image"])[:, 0, 0, :2] for s in range(12)])
    assert offsets.min() >= 0 and offsets.max() < side - crop
    for row in range(b):
        assert len({tuple(o) for o in offsets[:, row]}) > 1, (row, offsets[:, row])
    np.testing.assert_array_equal(np.asarray(batch(5)["image"])[:, 0, 0, :2], offsets[5])


# ----------------------------------------------------------------------------- training

def _device_config(**overrides):
    return tiny_config(data__placement="device", **overrides)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("device_straight")
    result = loop.train_and_evaluate(_device_config(), str(workdir))
    return workdir, result


def test_a_run_with_the_device_cache_trains_and_logs_where_the_data_are(straight, caplog):
    workdir, result = straight
    assert result["step"] == 40 and np.isfinite(result["train/loss"] if "train/loss" in result
                                                 else result["eval/loss"])
    import json
    meta = json.load(open(workdir / "checkpoints" / "40" / "meta" / "metadata"))
    assert meta["placement"] == "device"


def test_a_stopped_run_with_the_device_cache_resumes_bitwise(straight, tmp_path):
    reference, _ = straight
    stopped = loop.train_and_evaluate(_device_config(), str(tmp_path), notice=StopAt(13))
    assert stopped == {"preempted": True, "step": 13}
    loop.train_and_evaluate(_device_config(), str(tmp_path))
    assert_trees_equal(restore_weights(reference, 40), restore_weights(tmp_path, 40))


def test_the_device_cache_trains_on_other_batches_than_the_host_path(straight, tmp_path):
    """The placements see the same distribution, not the same batches (data/device_cache.py):
    a host-placement run of the same seed ends elsewhere, so the device run did not silently
    fall back to the host pipeline."""
    reference, _ = straight
    loop.train_and_evaluate(tiny_config(), str(tmp_path))
    host, device = restore_weights(tmp_path, 40), restore_weights(reference, 40)
    assert not np.array_equal(host["conv1_1"]["kernel"], device["conv1_1"]["kernel"])


def test_a_run_with_the_device_cache_resumes_on_another_device_count(straight, tmp_path):
    """Written by 2 devices at step 20 (the replicated cache: the stream does not depend on the
    mesh), resumed on 1: it continues the same batches, so it ends where the 1-device run
    does, up to float sums in another order (measured 1.3e-7; a run that restarted the stream or redrew the
    augmentations would be ~1e-2 away)."""
    reference, _ = straight
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(2)}
    proc = subprocess.run([sys.executable, "-m", "deep_image.train", f"--config={TINY}",
                           f"--workdir={tmp_path}", "--config.data.placement=device",
                           "--config.total_steps=20"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replicated on every device" in proc.stderr, proc.stderr[-3000:]
    loop.train_and_evaluate(_device_config(), str(tmp_path))
    ours, ref = restore_weights(tmp_path, 40), restore_weights(reference, 40)
    diff = max(float(np.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True))
    assert diff < 1e-5, diff      # measured: 1.3e-7


def test_too_little_device_memory_is_a_config_error_before_anything_is_written(tmp_path):
    workdir = tmp_path / "never"
    with pytest.raises(config_lib.ConfigError, match="needs 1.2 MiB"):
        loop.train_and_evaluate(_device_config(data__device_memory=100_000), str(workdir))
    assert not workdir.exists()


def test_placement_must_be_known_and_square():
    with pytest.raises(config_lib.ConfigError, match="choose host or device"):
        config_lib.check(tiny_config(data__placement="gpu"))
    with pytest.raises(config_lib.ConfigError, match="caches square images"):
        config_lib.check(_device_config(data__resize="shorter_side"))
