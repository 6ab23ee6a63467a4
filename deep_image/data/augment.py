"""The paper's augmentations (§4.1, Table 1) as discrete parameter spaces and fused ops.

Each augmentation draws its parameters from an `np.random.Generator` out of a finite space whose
size is Table 1's count, and is deterministic given them. Cropping happens first; every other op
acts on the crop, "to ensure that the whole augmented image feeds into the training net" (§4.1).

Discretization (each chosen so the space has exactly Table 1's size):

| op | parameters | size |
|---|---|---|
| colour casting | per channel: unaltered, or a shift in {-20..-1, 1..20}; not all unaltered | 41^3 - 1 = 68,920 |
| vignetting | area: darkening starts at radius r0 in {0.20, 0.22, ..., 0.98} (40); strength: brightness at the corner reduced by {2%, 4%, ..., 98%} (49) | 40 x 49 = 1,960 |
| lens distortion | type: barrel, pincushion, horizontal stretch, vertical stretch (4); degree 1..65 | 4 x 65 = 260 |
| rotation | {-10, ..., -1, 1, ..., 10} degrees | 20 |
| flipping | none, horizontal | 2 |
| cropping | top-left offsets {0..S-C-1}^2 | (512 - 224)^2 = 82,944 |

Colour casting: a channel with shift 0 equals an unaltered one, so the paper's three Booleans and
[-20, 20] shifts give 41^3 distinct images, one of them the original: 68,920 are changes.

Fusion: flip, rotation and lens distortion become one resampling (one interpolation instead of
three): a fixed-point `cv2.remap` whose lens map (or plain pixel grid) is cached per (type,
degree, size) and composed with the flip/rotation affine per image. Colour cast and vignetting
become one pixel pass each in C (a saturating add; a multiply by a mask built from a cached
radial profile). `warm_caches` builds every lens map and profile up front (about 105 MB for 224
crops), as a long run has them anyway.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

from deep_image import constants

# Discretizations (see the table above).
COLOR_SHIFT = constants.COLOR_CAST_MAX_SHIFT
VIGNETTE_RADII = tuple(round(0.20 + 0.02 * i, 2) for i in range(40))
VIGNETTE_STRENGTHS = tuple(round(0.02 * (i + 1), 2) for i in range(49))
LENS_TYPES = ("barrel", "pincushion", "stretch_x", "stretch_y")
LENS_DEGREES = 65
LENS_MAX_RADIAL = 0.30       # |k| at degree 65: r_src = r (1 + k r^2)
LENS_MAX_STRETCH = 0.20      # s at degree 65: x_src = x / (1 + s)
ROTATION_ANGLES = tuple(a for a in range(-10, 11) if a != 0)


@dataclasses.dataclass(frozen=True)
class Params:
    """One draw of every op; None means the op is not applied to this image."""
    crop: tuple[int, int] | None = None              # (y, x) offset
    flip: bool = False
    rotation: int | None = None                      # degrees, > 0: counter-clockwise as
                                                     # displayed (OpenCV's sign)
    lens: tuple[str, int] | None = None              # (type, degree); barrel pulls points
                                                     # towards the centre, pincushion out
    color_cast: tuple[int, int, int] | None = None   # per-channel shifts, 0 = unaltered
    vignette: tuple[float, float] | None = None      # (start radius, strength)


# ----------------------------------------------------------------------------- spaces

def color_cast_space(max_shift: int = COLOR_SHIFT):
    r = range(-max_shift, max_shift + 1)
    return [(a, b, c) for a in r for b in r for c in r if (a, b, c) != (0, 0, 0)]


def vignette_space():
    return [(r, s) for r in VIGNETTE_RADII for s in VIGNETTE_STRENGTHS]


def lens_space():
    return [(t, d) for t in LENS_TYPES for d in range(1, LENS_DEGREES + 1)]


def rotation_space():
    return list(ROTATION_ANGLES)


def flip_space():
    return [False, True]


def crop_space(image_size: int, crop: int):
    n = max(1, image_size - crop)
    return [(y, x) for y in range(n) for x in range(n)]


SPACES = {"color_cast": color_cast_space, "vignetting": vignette_space,
          "lens_distortion": lens_space, "rotation": rotation_space, "flipping": flip_space}


# ----------------------------------------------------------------------------- sampling

@dataclasses.dataclass(frozen=True)
class Settings:
    """config.data.augment as plain attributes (read once per pipeline, not per image)."""
    crop: bool = True
    flip: bool = True
    rotation: bool = False
    rotation_prob: float = 0.5
    lens_distortion: bool = False
    lens_prob: float = 0.5
    color_cast: bool = False
    color_cast_channel_prob: float = 0.5
    vignetting: bool = False
    vignetting_prob: float = 0.5

    @classmethod
    def of(cls, aug) -> "Settings":
        if isinstance(aug, cls):
            return aug
        return cls(**{f.name: aug[f.name] for f in dataclasses.fields(cls)})


def sample(rng: np.random.Generator, aug, image_shape, crop: int) -> Params:
    """Draws one Params from the spaces, following the `aug` switches and probabilities
    (config.data.augment or Settings). The draw order is fixed, so equal generators give equal
    Params."""
    aug = Settings.of(aug)
    h, w = image_shape[:2]
    offset = None
    if aug.crop:
        offset = (int(rng.integers(max(1, h - crop))), int(rng.integers(max(1, w - crop))))
    flip = bool(aug.flip and rng.random() < 0.5)
    rotation = lens = cast = vignette = None
    if aug.rotation and rng.random() < aug.rotation_prob:
        rotation = ROTATION_ANGLES[int(rng.integers(len(ROTATION_ANGLES)))]
    if aug.lens_distortion and rng.random() < aug.lens_prob:
        lens = (LENS_TYPES[int(rng.integers(len(LENS_TYPES)))],
                int(rng.integers(1, LENS_DEGREES + 1)))
    if aug.color_cast:
        altered = rng.random(3) < aug.color_cast_channel_prob
        shifts = rng.integers(1, COLOR_SHIFT + 1, 3) * (2 * rng.integers(0, 2, 3) - 1)
        if altered.any():
            cast = tuple(int(s) if a else 0 for s, a in zip(shifts, altered))
    if aug.vignetting and rng.random() < aug.vignetting_prob:
        vignette = (VIGNETTE_RADII[int(rng.integers(len(VIGNETTE_RADII)))],
                    VIGNETTE_STRENGTHS[int(rng.integers(len(VIGNETTE_STRENGTHS)))])
    return Params(offset, flip, rotation, lens, cast, vignette)


# ----------------------------------------------------------------------------- single ops
# Reference implementations, one op at a time. The fused path below must agree with them.

def apply_crop(image, offset, crop):
    y, x = offset
    return image[y:y + crop, x:x + crop]


def center_offset(image_shape, crop):
    return ((image_shape[0] - crop) // 2, (image_shape[1] - crop) // 2)


def _grid(size: int):
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xx - c) / c, (yy - c) / c, c


@functools.lru_cache(maxsize=4 * LENS_DEGREES * 2)
def lens_map(lens_type: str, degree: int, size: int):
    """Source coordinates (normalized to [-1, 1]) of each output pixel, for one lens."""
    x, y, _ = _grid(size)
    t = degree / LENS_DEGREES
    if lens_type in ("barrel", "pincushion"):
        k = LENS_MAX_RADIAL * t * (1 if lens_type == "barrel" else -1)
        f = 1 + k * (x * x + y * y) / 2       # r^2 / 2: 1 at the edge midpoints' corners
        sx, sy = x * f, y * f
    elif lens_type == "stretch_x":
        sx, sy = x / (1 + LENS_MAX_STRETCH * t), y
    elif lens_type == "stretch_y":
        sx, sy = x, y / (1 + LENS_MAX_STRETCH * t)
    else:
        raise ValueError(f"unknown lens type {lens_type!r}; choose one of {LENS_TYPES}")
    out = np.stack([sx, sy], -1).astype(np.float32)
    out.flags.writeable = False
    return out


def _affine(flip: bool, rotation: int | None):
    """2x2 matrix taking an output point to its source point (normalized coordinates)."""
    m = np.eye(2, dtype=np.float32)
    if rotation:
        a = np.deg2rad(rotation)
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    if flip:
        m = m @ np.diag([-1.0, 1.0]).astype(np.float32)
    return m


def _warp(image, norm_map):
    c = (image.shape[0] - 1) / 2.0
    pix = norm_map * c + c
    return cv2.remap(image, pix[..., 0], pix[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)


def apply_flip(image):
    return np.ascontiguousarray(image[:, ::-1])


def apply_rotation(image, degrees):
    x, y, _ = _grid(image.shape[0])
    pts = np.stack([x, y], -1) @ _affine(False, degrees).T
    return _warp(image, pts)


def apply_lens(image, lens):
    return _warp(image, lens_map(lens[0], lens[1], image.shape[0]))


def apply_color_cast(image, shifts):
    out = image.astype(np.int16) + np.asarray(shifts, np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=len(VIGNETTE_RADII) * 4)
def _vignette_profile(radius: float, size: int):
    """Darkening profile in [0, 1]: 0 inside `radius` (of the half-diagonal), 1 at corners."""
    x, y, _ = _grid(size)
    r = np.sqrt(x * x + y * y) / np.sqrt(2.0)
    t = np.clip((r - radius) / (1.0 - radius), 0.0, 1.0)
    out = (t * t * (3 - 2 * t)).astype(np.float32)      # smoothstep: no visible ring
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=len(VIGNETTE_RADII) * len(VIGNETTE_STRENGTHS) // 4)
def _vignette_mask_q8(radius: float, strength: float, size: int):
    """The brightness factor as fixed-point uint16 (x256), HxWx1."""
    m = 1.0 - strength * _vignette_profile(radius, size)
    out = np.round(m * 256).astype(np.uint16)[..., None]
    out.flags.writeable = False
    return out


def apply_vignette(image, vignette):
    return ((image.astype(np.uint16) * _vignette_mask_q8(*vignette, image.shape[0]) + 128)
            >> 8).astype(np.uint8)


def apply_sequential(image, p: Params, crop: int):
    """Reference: every op on its own, in the fused path's order."""
    image = apply_crop(image, p.crop if p.crop else center_offset(image.shape, crop), crop)
    if p.flip:
        image = apply_flip(image)
    if p.rotation:
        image = apply_rotation(image, p.rotation)
    if p.lens:
        image = apply_lens(image, p.lens)
    if p.color_cast:
        image = apply_color_cast(image, p.color_cast)
    if p.vignette:
        image = apply_vignette(image, p.vignette)
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------- fused

@functools.lru_cache(maxsize=4 * LENS_DEGREES * 2)
def _lens_map_px(lens_type: str, degree: int, size: int):
    """The lens map in pixel coordinates (cached: 4 x 65 per crop size, 400 KB each at 224)."""
    c = (size - 1) / 2.0
    out = lens_map(lens_type, degree, size) * np.float32(c) + np.float32(c)
    out.flags.writeable = False
    return out


def _affine_px(p: Params, size: int):
    """2x3 matrix taking an output pixel to its source pixel under flip then rotation.

    Applying ops one after another, the output of the last op at point q samples the previous
    op's output at lens(q), which samples the one before at rot(lens(q)), which samples the
    crop at flip(rot(lens(q))). So the source of q is F R L(q): the cached lens map, then this
    affine (F R, about the centre)."""
    m = np.eye(2, dtype=np.float64)
    if p.flip:
        m = np.diag([-1.0, 1.0])
    if p.rotation:
        m = m @ _affine(False, p.rotation).astype(np.float64)
    c = (size - 1) / 2.0
    t = c * (np.ones(2) - m @ np.ones(2))
    return np.hstack([m, t[:, None]]).astype(np.float32)


@functools.lru_cache(maxsize=len(VIGNETTE_RADII) * 2)
def _vignette_profile_u8(radius: float, size: int):
    out = np.round(_vignette_profile(radius, size) * 255).astype(np.uint8)
    out.flags.writeable = False
    return out


def _vignette_mask3(vignette, size: int):
    """Brightness factor x 255 as HxWx3 uint8: 255 - strength x profile, in one C pass."""
    radius, strength = vignette
    mask = cv2.convertScaleAbs(_vignette_profile_u8(radius, size), alpha=-strength, beta=255)
    return cv2.merge((mask, mask, mask))


def warm_caches(crop: int) -> None:
    for t, d in lens_space():
        _lens_map_px(t, d, crop)
    for r in VIGNETTE_RADII:
        _vignette_profile_u8(r, crop)


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.stack([xx, yy], -1)
    out.flags.writeable = False
    return out


def apply_fused(image, p: Params, crop: int):
    """Crop, then one resampling pass (flip, rotation, lens), then one pixel pass each for the
    cast (saturating add) and the vignette (multiply)."""
    image = apply_crop(image, p.crop if p.crop else center_offset(image.shape, crop), crop)
    if p.lens or p.rotation:
        base = _lens_map_px(p.lens[0], p.lens[1], crop) if p.lens else _pixel_grid(crop)
        maps = cv2.transform(base, _affine_px(p, crop))
        # Fixed-point maps (1/32 pixel): the remap runs ~30% faster than with float maps.
        xy, frac = cv2.convertMaps(maps, None, cv2.CV_16SC2)
        image = cv2.remap(image, xy, frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    elif p.flip:
        image = image[:, ::-1]
    image = np.ascontiguousarray(image)
    if p.color_cast:   # saturating per-channel add: the cast, clipped to [0, 255]
        image = cv2.add(image, (*map(float, p.color_cast), 0.0))
    if p.vignette:
        image = cv2.multiply(image, _vignette_mask3(p.vignette, crop), scale=1 / 255)
    return image
