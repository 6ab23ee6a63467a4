"""§4.1 / Table 1: the augmentation spaces have the paper's sizes, draws are deterministic given
the generator, the fused path agrees with applying the ops one by one, and each op does what it
says against a reference of its own (OpenCV's rotation and flip, hand-computed dot positions
for rotation and lens distortion, numpy for the cast and the vignette's radii)."""

import dataclasses

import cv2
import numpy as np
import pytest

from deep_image import config as config_lib
from deep_image import constants
from deep_image.data import augment
from deep_image.data.synthetic import SynthBirdsSpec, render


@pytest.mark.parametrize("name", sorted(augment.SPACES))
def test_space_sizes_equal_table1(name):
    space = augment.SPACES[name]()
    assert len(space) == len(set(space)) == constants.TABLE1_SPACE_SIZES[name]


def test_crop_space_of_512_image_equals_table1():
    space = augment.crop_space(512, 224)
    assert len(space) == constants.TABLE1_SPACE_SIZES["cropping"] == 82_944


def _all_on(**kw):
    a = config_lib.all_six()
    a.update(dict(rotation_prob=1.0, lens_prob=1.0, vignetting_prob=1.0))
    a.update(kw)
    return a


def test_draws_stay_in_their_spaces_and_are_deterministic():
    aug = _all_on()
    casts, vignettes, lenses = (set(augment.color_cast_space()), set(augment.vignette_space()),
                                set(augment.lens_space()))
    crops = set(augment.crop_space(64, 56))
    a = [augment.sample(np.random.default_rng(i), aug, (64, 64, 3), 56) for i in range(300)]
    b = [augment.sample(np.random.default_rng(i), aug, (64, 64, 3), 56) for i in range(300)]
    assert a == b
    for p in a:
        assert p.crop in crops and p.rotation in augment.ROTATION_ANGLES
        assert p.lens in lenses and p.vignette in vignettes
        assert p.color_cast is None or p.color_cast in casts
    assert 0.05 < np.mean([p.color_cast is None for p in a]) < 0.25     # 1/8 expected
    assert 0.35 < np.mean([p.flip for p in a]) < 0.65


def test_switches_turn_ops_off():
    off = _all_on(crop=False, flip=False, rotation=False, lens_distortion=False,
                  color_cast=False, vignetting=False)
    p = augment.sample(np.random.default_rng(0), off, (64, 64, 3), 56)
    assert p == augment.Params()
    image = render(SynthBirdsSpec(native_size=64), "train", 0)[0]
    np.testing.assert_array_equal(augment.apply_fused(image, p, 56), image[4:60, 4:60])


def test_fused_matches_sequential():
    image = render(SynthBirdsSpec(native_size=96), "train", 1)[0]
    aug = _all_on()
    for seed in range(25):
        p = augment.sample(np.random.default_rng(seed), aug, image.shape, 80)
        fused = augment.apply_fused(image, p, 80).astype(np.float32)
        seq = augment.apply_sequential(image, p, 80).astype(np.float32)
        assert fused.shape == seq.shape == (80, 80, 3)
        inner = np.abs(fused - seq)[8:-8, 8:-8]       # borders: reflection differs by design
        # One bilinear resampling instead of two or three: small differences in the interior.
        assert inner.mean() < 6.0, (p, inner.mean())


def test_exact_ops():
    image = np.full((8, 8, 3), 100, np.uint8)
    out = augment.apply_fused(image, augment.Params(color_cast=(20, 0, -20)), 8)
    assert out[0, 0].tolist() == [120, 100, 80]
    white = np.full((8, 8, 3), 250, np.uint8)
    assert augment.apply_color_cast(white, (20, 0, 0))[0, 0, 0] == 255       # clipped
    ramp = np.arange(64, dtype=np.uint8).reshape(8, 8, 1).repeat(3, -1)
    flipped = augment.apply_fused(ramp, augment.Params(flip=True), 8)
    np.testing.assert_array_equal(flipped, ramp[:, ::-1])
    v = augment.apply_vignette(np.full((33, 33, 3), 200, np.uint8), (0.2, 0.5))
    assert v[16, 16, 0] == 200 and v[0, 0, 0] == 100                          # corner halved
    f = augment.apply_fused(np.full((33, 33, 3), 200, np.uint8),
                            augment.Params(vignette=(0.2, 0.5)), 33)
    assert f[16, 16, 0] == 200 and abs(int(f[0, 0, 0]) - 100) <= 1


# ------------------------------------------------------------------ independent references
# The fused and the sequential path share lens_map, _affine and _grid, so their agreement says
# nothing about what the ops do. These check each op against OpenCV or numpy directly, or
# against hand-computed coordinates.

S, C = 65, 32.0          # an odd size: the centre is pixel (32, 32)


def _dot(row, col, size=S):
    """A black image with one bright 3x3 dot centred on (row, col)."""
    image = np.zeros((size, size, 3), np.uint8)
    image[row - 1:row + 2, col - 1:col + 2] = 255
    return image


def _centroid(image):
    """(row, col) of the image's brightness."""
    w = image[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()


def _smooth(size=S, seed=0):
    """A textured image with no sharp edges (bilinear resampling is then near exact)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def _interior(size=S, frac=0.85):
    """Pixels well inside the inscribed circle (where no op reaches the border)."""
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    return np.hypot(yy - c, xx - c) < frac * c


def _both(image, p):
    """The op by the fused path and by the one-op references (crop = the whole image)."""
    size = image.shape[0]
    p = dataclasses.replace(p, crop=(0, 0))
    return {"fused": augment.apply_fused(image, p, size),
            "sequential": augment.apply_sequential(image, p, size)}


@pytest.mark.parametrize("angle", [10, 3, -10])
def test_a_positive_angle_turns_the_image_counter_clockwise(angle):
    """As displayed (rows down): a dot right of the centre goes up for a positive angle, by
    hand: to (32 - 20 sin a, 32 + 20 cos a); OpenCV's getRotationMatrix2D sign."""
    a = np.deg2rad(angle)
    expected = (C - 20 * np.sin(a), C + 20 * np.cos(a))
    for path, out in _both(_dot(32, 52), augment.Params(rotation=angle)).items():
        np.testing.assert_allclose(_centroid(out), expected, atol=0.1, err_msg=path)
    # and the whole image, as cv2.warpAffine rotates it about the centre
    image = _smooth()
    reference = cv2.warpAffine(image, cv2.getRotationMatrix2D((C, C), angle, 1.0), (S, S),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    for path, out in _both(image, augment.Params(rotation=angle)).items():
        diff = np.abs(out.astype(int) - reference.astype(int))[_interior()]
        assert diff.max() <= 2, (path, diff.max())


def test_flip_then_rotation_as_opencv_composes_them():
    """The chain's order (§4.1 after the crop): mirror, then rotate the mirrored image."""
    image = _smooth(seed=1)
    reference = cv2.warpAffine(cv2.flip(image, 1), cv2.getRotationMatrix2D((C, C), 7, 1.0),
                               (S, S), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)
    for path, out in _both(image, augment.Params(flip=True, rotation=7)).items():
        diff = np.abs(out.astype(int) - reference.astype(int))[_interior()]
        assert diff.max() <= 2, (path, diff.max())
    # the other order would be visibly different: the test can tell them apart
    other = cv2.flip(cv2.warpAffine(image, cv2.getRotationMatrix2D((C, C), 7, 1.0), (S, S),
                                    borderMode=cv2.BORDER_REFLECT_101), 1)
    assert np.abs(other.astype(int) - reference.astype(int))[_interior()].mean() > 10


def test_crop_and_flip_are_exact_slices():
    image = _smooth(size=40, seed=2)
    for p, expected in ((augment.Params(crop=(3, 5)), image[3:35, 5:37]),
                        (augment.Params(crop=(7, 0), flip=True), image[7:39, 0:32][:, ::-1]),
                        (augment.Params(), image[4:36, 4:36])):          # centre: (40-32)//2
        np.testing.assert_array_equal(augment.apply_fused(image, p, 32), expected)
        np.testing.assert_array_equal(augment.apply_sequential(image, p, 32), expected)


def _radial_solution(R, k):
    """The output radius r (units of the half-width) whose source is at R, for the module's
    documented lens r_src = r (1 + k r_d^2), r_d = r / sqrt(2) (radius in half-diagonals)."""
    roots = np.roots([k / 2, 0, 1, -R])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return real[np.argmin(np.abs(real - R))]


@pytest.mark.parametrize("lens_type,sign", [("barrel", -1), ("pincushion", +1)])
def test_barrel_pulls_points_towards_the_centre_and_pincushion_pushes_them_out(lens_type, sign):
    """Barrel distortion: magnification falls with the distance from the centre, so an
    off-centre point moves inwards; pincushion: outwards. The centre stays put."""
    for row, col in ((32, 56), (49, 49), (12, 32)):
        before = np.array(_centroid(_dot(row, col))) - C
        for degree in (20, 65):
            outs = _both(_dot(row, col), augment.Params(lens=(lens_type, degree)))
            for path, out in outs.items():
                after = np.array(_centroid(out)) - C
                moved = np.hypot(*after) - np.hypot(*before)
                assert sign * moved > 0.3, (path, degree, row, col, moved)
                # along the same ray from the centre
                assert abs(before[0] * after[1] - before[1] * after[0]) < 0.2 * np.hypot(*before)
    # by hand at degree 65: k = +0.30 (barrel) or -0.30; the dot 24 px right of the centre
    k = -sign * augment.LENS_MAX_RADIAL
    expected_col = C + C * _radial_solution(24 / C, k)       # barrel: 54.27, pincushion: 58.95
    for path, out in _both(_dot(32, 56), augment.Params(lens=(lens_type, 65))).items():
        np.testing.assert_allclose(_centroid(out), (C, expected_col), atol=0.15, err_msg=path)
    centre = _both(_dot(32, 32), augment.Params(lens=(lens_type, 65)))
    for path, out in centre.items():
        np.testing.assert_allclose(_centroid(out), (C, C), atol=1e-6, err_msg=path)


def test_stretches_scale_one_axis_only():
    """stretch_x at degree 65: horizontal offsets from the centre x (1 + 0.20), rows kept."""
    for lens_type, expected in (("stretch_x", (40.0, C + 24 * 1.2)),
                                ("stretch_y", (C + 8 * 1.2, 56.0))):
        for path, out in _both(_dot(40, 56), augment.Params(lens=(lens_type, 65))).items():
            np.testing.assert_allclose(_centroid(out), expected, atol=0.15,
                                       err_msg=f"{lens_type} {path}")


def test_colour_cast_adds_its_shift_to_each_channel_and_clips():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    image[0, 0], image[0, 1] = (0, 0, 0), (255, 255, 255)               # both ends present
    for shifts in ((20, -20, 7), (0, 0, -1), (-13, 5, 0)):
        expected = np.clip(image.astype(int) + np.array(shifts), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(augment.apply_color_cast(image, shifts), expected)
        np.testing.assert_array_equal(
            augment.apply_fused(image, augment.Params(color_cast=shifts), 16), expected)
    # channel 0 is the image's first channel (red in RGB), and only it moves
    out = augment.apply_fused(image, augment.Params(color_cast=(9, 0, 0)), 16)
    np.testing.assert_array_equal(out[..., 1:], image[..., 1:])
    assert (out[..., 0].astype(int) - image[..., 0] == 9)[image[..., 0] <= 246].all()


@pytest.mark.parametrize("vignette", [(0.2, 0.5), (0.5, 0.98), (0.9, 0.1), (0.36, 0.3)])
def test_vignetting_darkens_with_the_radius_from_its_start_to_the_corners(vignette):
    """Unchanged inside the start radius (a fraction of the half-diagonal), darker beyond it,
    never brighter further out, the corners reduced by the strength: by hand from numpy
    radii, not the module's grid."""
    r0, strength = vignette
    yy, xx = np.mgrid[0:S, 0:S]
    radius = np.hypot(yy - C, xx - C) / (C * np.sqrt(2))                # 1 at the corners
    for path, out in _both(np.full((S, S, 3), 200, np.uint8),
                           augment.Params(vignette=vignette)).items():
        v = out[..., 0].astype(int)
        assert (out == out[..., :1]).all(), path                        # grey stays grey
        assert (v[radius <= r0] == 200).all(), path
        assert (v[radius > r0 + 0.05] < 200).all(), path
        corners = v[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (np.abs(corners - 200 * (1 - strength)) <= 1).all(), (path, corners)
        order = np.argsort(radius.ravel(), kind="stable")
        along = v.ravel()[order]
        assert (np.diff(along) <= 1).all(), path                        # monotone, to rounding
        # symmetric: the same radius, the same darkening (to rounding)
        np.testing.assert_allclose(v, v[::-1, ::-1], atol=1, err_msg=path)
        np.testing.assert_allclose(v, v.T, atol=1, err_msg=path)
