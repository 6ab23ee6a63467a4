"""§4.1 / Table 1: the augmentation spaces have the paper's sizes, draws are deterministic given
the generator, and the fused path agrees with applying the ops one by one."""

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
