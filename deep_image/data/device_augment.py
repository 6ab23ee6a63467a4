"""The §4.1 augmentations (Table 1) as jitted array ops: the device path of `data/augment.py`.

The same contract as the host path: parameters are drawn from exactly Table 1's discrete
spaces (`augment`'s tables), with the same switches and probabilities, and each op is a pure
function of its parameters. Draws are keyed by (seed, step, example) instead of a numpy
generator, so a run and its resume draw the same augmentations, on any device layout.

One image's parameters are a dict of int32/bool scalars (`Draw`):
  y, x           crop offset (the centre when random cropping is off)
  flip           horizontal flip
  angle          rotation in degrees, 0 = none (OpenCV's sign, as `augment`)
  lens_type      index into augment.LENS_TYPES, -1 = none; lens_degree 1..65
  cast           per-channel shifts (int32[3]), all 0 = none
  vig_radius     index into augment.VIGNETTE_RADII, -1 = none; vig_strength index into
                 augment.VIGNETTE_STRENGTHS

`apply` follows `augment.apply_fused`: crop; then one resampling (flip, rotation and lens as
one source map, F R L(q)), bilinear on the map quantized to 1/32 pixel with reflected borders
(what `cv2.remap` does with fixed-point maps); then the saturating cast; then the vignette
(brightness factor x 255 rounded to 8 bits, as the host's mask). The remaining difference to
the host ops is OpenCV's fixed-point rounding of the bilinear weights (tests/test_device_data.py
bounds it). Ops a config switches off are not traced at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deep_image.data import augment

Draw = dict   # one image's parameters (see above); vmapped: each value gains a batch axis

_SUBPIXEL = 32          # cv2's INTER_TAB_SIZE: fixed-point maps in 1/32 pixel


def _uniform(key, shape=()):
    return jax.random.uniform(key, shape)


def sample(key, settings, image_hw: tuple[int, int], crop: int) -> Draw:
    """One image's parameters from `key`, following `settings` (augment.Settings or
    config.data.augment): the host sampler's spaces and probabilities (augment.sample)."""
    s = augment.Settings.of(settings)
    h, w = image_hw
    k = iter(jax.random.split(key, 14))   # one per draw below
    if s.crop:
        y = jax.random.randint(next(k), (), 0, max(1, h - crop))
        x = jax.random.randint(next(k), (), 0, max(1, w - crop))
    else:
        cy, cx = augment.center_offset((h, w), crop)
        y, x = jnp.int32(cy), jnp.int32(cx)
    flip = _uniform(next(k)) < 0.5 if s.flip else jnp.bool_(False)
    angle = jnp.int32(0)
    if s.rotation:
        angles = jnp.asarray(augment.ROTATION_ANGLES, jnp.int32)
        pick = angles[jax.random.randint(next(k), (), 0, len(angles))]
        angle = jnp.where(_uniform(next(k)) < s.rotation_prob, pick, 0)
    lens_type, lens_degree = jnp.int32(-1), jnp.int32(1)
    if s.lens_distortion:
        on = _uniform(next(k)) < s.lens_prob
        lens_type = jnp.where(on, jax.random.randint(next(k), (), 0, len(augment.LENS_TYPES)),
                              -1)
        lens_degree = jax.random.randint(next(k), (), 1, augment.LENS_DEGREES + 1)
    cast = jnp.zeros(3, jnp.int32)
    if s.color_cast:
        altered = _uniform(next(k), (3,)) < s.color_cast_channel_prob
        size = jax.random.randint(next(k), (3,), 1, augment.COLOR_SHIFT + 1)
        sign = 2 * jax.random.randint(next(k), (3,), 0, 2) - 1
        cast = jnp.where(altered, size * sign, 0)
    vig_radius, vig_strength = jnp.int32(-1), jnp.int32(0)
    if s.vignetting:
        on = _uniform(next(k)) < s.vignetting_prob
        vig_radius = jnp.where(on, jax.random.randint(next(k), (), 0,
                                                      len(augment.VIGNETTE_RADII)), -1)
        vig_strength = jax.random.randint(next(k), (), 0, len(augment.VIGNETTE_STRENGTHS))
    return {"y": jnp.int32(y), "x": jnp.int32(x), "flip": flip, "angle": angle,
            "lens_type": jnp.int32(lens_type), "lens_degree": jnp.int32(lens_degree),
            "cast": cast.astype(jnp.int32), "vig_radius": jnp.int32(vig_radius),
            "vig_strength": jnp.int32(vig_strength)}


def from_host(p: augment.Params, image_hw: tuple[int, int], crop: int) -> Draw:
    """The host path's Params as a Draw (numpy), for comparing the two paths."""
    y, x = p.crop if p.crop else augment.center_offset(image_hw, crop)
    lens = (-1, 1) if p.lens is None else (augment.LENS_TYPES.index(p.lens[0]), p.lens[1])
    vig = ((-1, 0) if p.vignette is None else
           (augment.VIGNETTE_RADII.index(p.vignette[0]),
            augment.VIGNETTE_STRENGTHS.index(p.vignette[1])))
    return {"y": np.int32(y), "x": np.int32(x), "flip": np.bool_(p.flip),
            "angle": np.int32(p.rotation or 0), "lens_type": np.int32(lens[0]),
            "lens_degree": np.int32(lens[1]),
            "cast": np.asarray(p.color_cast or (0, 0, 0), np.int32),
            "vig_radius": np.int32(vig[0]), "vig_strength": np.int32(vig[1])}


def to_host(d: Draw) -> augment.Params:
    """A Draw (one image's, on the host) as the host path's Params."""
    d = {k: np.asarray(v) for k, v in d.items()}
    lens = (None if d["lens_type"] < 0 else
            (augment.LENS_TYPES[int(d["lens_type"])], int(d["lens_degree"])))
    vig = (None if d["vig_radius"] < 0 else
           (augment.VIGNETTE_RADII[int(d["vig_radius"])],
            augment.VIGNETTE_STRENGTHS[int(d["vig_strength"])]))
    cast = tuple(int(c) for c in d["cast"])
    return augment.Params(crop=(int(d["y"]), int(d["x"])), flip=bool(d["flip"]),
                          rotation=int(d["angle"]) or None, lens=lens,
                          color_cast=cast if any(cast) else None, vignette=vig)


# ----------------------------------------------------------------------------- ops

def _normalized_grid(size: int):
    c = (size - 1) / 2.0
    yy, xx = jnp.mgrid[0:size, 0:size].astype(jnp.float32)
    return xx, yy, (xx - c) / c, (yy - c) / c, c


def _source_map(d: Draw, size: int):
    """Source pixel (x, y) of every output pixel: the lens map, then flip x rotation about the
    centre (augment._affine_px): the host's F R L(q)."""
    xx, yy, xn, yn, c = _normalized_grid(size)
    t = d["lens_degree"].astype(jnp.float32) / augment.LENS_DEGREES
    kind = d["lens_type"]
    k = augment.LENS_MAX_RADIAL * t * jnp.where(kind == 0, 1.0, -1.0)
    f = 1 + k * (xn * xn + yn * yn) / 2
    stretch = 1 + augment.LENS_MAX_STRETCH * t
    sx = jnp.where(kind < 2, xn * f, jnp.where(kind == 2, xn / stretch, xn))
    sy = jnp.where(kind < 2, yn * f, jnp.where(kind == 3, yn / stretch, yn))
    on = kind >= 0
    lx = jnp.where(on, sx * jnp.float32(c) + jnp.float32(c), xx)
    ly = jnp.where(on, sy * jnp.float32(c) + jnp.float32(c), yy)
    a = jnp.deg2rad(d["angle"].astype(jnp.float32))
    cos, sin = jnp.cos(a), jnp.sin(a)
    fx = jnp.where(d["flip"], -1.0, 1.0)
    m00, m01, m10, m11 = fx * cos, -fx * sin, sin, cos   # diag(fx, 1) @ rotation
    t0, t1 = c * (1 - m00 - m01), c * (1 - m10 - m11)
    return m00 * lx + m01 * ly + t0, m10 * lx + m11 * ly + t1


def _reflect101(i, n: int):
    """cv2.BORDER_REFLECT_101: ... 2 1 | 0 1 2 ... n-1 | n-2 ..."""
    if n == 1:
        return jnp.zeros_like(i)
    period = 2 * (n - 1)
    i = jnp.mod(i, period)
    return jnp.where(i >= n, period - i, i)


def _remap(image, sx, sy):
    """Bilinear sampling of `image` (HxWx3 uint8) at (sx, sy) quantized to 1/32 pixel, reflected
    borders: cv2.remap(INTER_LINEAR, BORDER_REFLECT_101) on fixed-point maps."""
    n = image.shape[0]
    qx = jnp.round(sx * _SUBPIXEL).astype(jnp.int32)
    qy = jnp.round(sy * _SUBPIXEL).astype(jnp.int32)
    x0, y0 = qx // _SUBPIXEL, qy // _SUBPIXEL
    ax = ((qx % _SUBPIXEL).astype(jnp.float32) / _SUBPIXEL)[..., None]
    ay = ((qy % _SUBPIXEL).astype(jnp.float32) / _SUBPIXEL)[..., None]
    xs = (_reflect101(x0, n), _reflect101(x0 + 1, n))
    ys = (_reflect101(y0, n), _reflect101(y0 + 1, n))
    img = image.astype(jnp.float32)
    top = img[ys[0], xs[0]] * (1 - ax) + img[ys[0], xs[1]] * ax
    bottom = img[ys[1], xs[0]] * (1 - ax) + img[ys[1], xs[1]] * ax
    out = top * (1 - ay) + bottom * ay
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def _vignette(image, d: Draw):
    """The host's mask: profile rounded to 8 bits, factor 255 - strength x profile rounded,
    then image x factor / 255 rounded."""
    size = image.shape[0]
    _, _, xn, yn, _ = _normalized_grid(size)
    radius = jnp.asarray(augment.VIGNETTE_RADII, jnp.float32)[jnp.maximum(d["vig_radius"], 0)]
    strength = jnp.asarray(augment.VIGNETTE_STRENGTHS, jnp.float32)[d["vig_strength"]]
    r = jnp.sqrt(xn * xn + yn * yn) / np.float32(np.sqrt(2.0))
    t = jnp.clip((r - radius) / (1.0 - radius), 0.0, 1.0)
    profile = jnp.round(t * t * (3 - 2 * t) * 255)
    factor = jnp.round(jnp.abs(255 - strength * profile))[..., None]
    out = jnp.clip(jnp.round(image.astype(jnp.float32) * factor * np.float32(1 / 255)), 0, 255)
    return jnp.where(d["vig_radius"] >= 0, out.astype(jnp.uint8), image)


def apply(image, d: Draw, crop: int, settings):
    """One image (HxWx3 uint8, at the training scale) -> its crop x crop augmentation."""
    s = augment.Settings.of(settings)
    image = jax.lax.dynamic_slice(image, (d["y"], d["x"], 0), (crop, crop, image.shape[2]))
    if s.rotation or s.lens_distortion:
        image = _remap(image, *_source_map(d, crop))
    elif s.flip:
        image = jnp.where(d["flip"], image[:, ::-1], image)
    if s.color_cast:
        image = jnp.clip(image.astype(jnp.int32) + d["cast"], 0, 255).astype(jnp.uint8)
    if s.vignetting:
        image = _vignette(image, d)
    return image


def example_key(seed_key, step, example):
    """The key of one example of one step's global batch: (seed, step, example)."""
    return jax.random.fold_in(jax.random.fold_in(seed_key, step), example)


def augment_batch(images, keys, crop: int, settings):
    """A batch (B x S x S x 3 uint8) and one key per example -> B x crop x crop x 3."""
    hw = images.shape[1:3]
    draws = jax.vmap(lambda k: sample(k, settings, hw, crop))(keys)
    return jax.vmap(lambda im, d: apply(im, d, crop, settings))(images, draws)
