import hashlib
import os

import numpy as np
import pytest

from deep_image.data import synthetic
from deep_image.data.synthetic import SynthBirds, SynthBirdsSpec, class_names, render


def _digest(image):
    return hashlib.sha1(image.tobytes()).hexdigest()


def test_deterministic_from_seed_split_index():
    spec = SynthBirdsSpec()
    a, la = render(spec, "train", 17)
    b, lb = render(SynthBirdsSpec(), "train", 17)
    assert la == lb and np.array_equal(a, b)
    c, _ = render(SynthBirdsSpec(seed=1), "train", 17)
    d, _ = render(spec, "test", 17)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_image_format_and_any_native_resolution():
    for size in (32, 128, 300):
        image, label = render(SynthBirdsSpec(native_size=size), "val", 3)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert 0 <= label < 16
        assert image.std() > 10                    # textured, not blank


def test_splits_are_disjoint_and_fixed_size():
    spec = SynthBirdsSpec(native_size=32, train_size=300, val_size=100, test_size=200)
    seen = {}
    for split in ("train", "val", "test"):
        src = SynthBirds(spec, split)
        assert len(src) == spec.split_size(split)
        for i in range(len(src)):
            seen.setdefault(_digest(src[i]["image"]), set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())
    assert len(seen) == 600
    with pytest.raises(IndexError):
        SynthBirds(spec, "train")[300]


def test_classes_are_named_balanced_and_all_present():
    names = class_names(16)
    assert len(names) == len(set(names)) == 16
    assert names[0] == "plain eye-striped warbler"
    assert len(class_names(4)) == 4 and len(class_names(32)) == 32
    spec = SynthBirdsSpec(native_size=24)
    labels = [render(spec, "train", i)[1] for i in range(800)]
    counts = np.bincount(labels, minlength=16)
    assert counts.min() > 25 and counts.max() < 80    # uniform labels, 50 expected per class


def test_class_name_i_names_the_markings_of_label_i():
    """The module's contract, by hand: label = wing + 4 head (+ 16 tail), so name i says the
    markings the bird of label i carries (test_class_is_defined_by_markings_only pins the
    attributes of a label the same way)."""
    names = class_names(16)
    for label in range(16):
        wing, head = synthetic.WING_MARKS[label % 4], synthetic.HEAD_MARKS[label // 4]
        assert names[label] == f"{wing} {head} warbler", label
    assert class_names(16)[6] == "two-barred crested warbler"
    assert class_names(32)[16 + 4 + 1] == "one-barred crested fork-tailed warbler"
    assert class_names(4) == [f"{w} warbler" for w in synthetic.WING_MARKS]
    assert class_names(16, "B")[1] == "scaled masked finch"


def test_class_is_defined_by_markings_only():
    # The same index of two specs differing only in num_classes draws the same scene; the
    # attributes that are not class-defining at 4 classes become nuisances.
    rng = np.random.default_rng(0)
    attrs4 = synthetic._attributes_of(3, 4, rng)
    assert synthetic.WING_MARKS[attrs4["wing"]] == "spotted"
    attrs16 = synthetic._attributes_of(6, 16, rng)
    assert (synthetic.WING_MARKS[attrs16["wing"]], synthetic.HEAD_MARKS[attrs16["head"]]) == \
        ("two-barred", "crested")


def test_bad_spec_and_split():
    with pytest.raises(ValueError, match="num_classes"):
        SynthBirdsSpec(num_classes=10)
    with pytest.raises(ValueError, match="split"):
        SynthBirds(SynthBirdsSpec(), "validation")


def test_species_b_is_another_task_on_the_same_bird():
    a = SynthBirdsSpec(native_size=48)
    b = SynthBirdsSpec(native_size=48, species="B")
    assert not set(class_names(16)) & set(class_names(16, "B"))
    assert class_names(16, "B")[0].endswith("finch")
    ia, _ = render(a, "train", 5)
    ib, _ = render(b, "train", 5)
    ib2, _ = render(b, "train", 5)
    assert not np.array_equal(ia, ib) and np.array_equal(ib, ib2)
    assert ia.shape == ib.shape
    with pytest.raises(ValueError, match="species"):
        SynthBirdsSpec(species="D")


def _polygons(parts):
    return [p.round(6).tobytes() for p, _ in parts]


@pytest.mark.parametrize("label", [0, 7, 15, 16, 22, 31])
def test_species_c_draws_one_marking_of_a_and_one_of_b_and_shares_no_class(label):
    """Label l < 16: A's wing marking l % 4 with B's head marking l // 4; l >= 16: B's wing
    marking with A's head marking (restated here by hand). Its polygons are the bird's (as
    species A and B draw it), that wing marking's and that head marking's (as A and B draw
    them: A's and B's images are pinned elsewhere), then the eye."""
    attrs = synthetic._attributes_of(label, 32, np.random.default_rng(0), "C")
    wing, head = label % 4, label % 16 // 4
    wing_marks = synthetic._a_wing if label < 16 else synthetic._b_wing
    head_marks = synthetic._b_head if label < 16 else synthetic._a_head
    bird = synthetic._bird_parts({"wing": 0, "head": 0, "tail": attrs["tail"]}, "A")
    body = bird[:len(bird) - 1 - len(synthetic._a_head(0))]    # A's plain wing adds nothing
    expected = body + wing_marks(wing) + head_marks(head) + [synthetic._EYE]
    assert _polygons(synthetic._bird_parts(attrs, "C")) == _polygons(expected)
    name = class_names(32, "C")[label]
    wings = synthetic.WING_MARKS if label < 16 else synthetic.WING_MARKS_B
    heads = synthetic.HEAD_MARKS_B if label < 16 else synthetic.HEAD_MARKS
    assert name.startswith(f"{wings[wing]} {heads[head]} ")
    assert len(set(class_names(32, "C"))) == 32
    assert not set(class_names(32, "C")) & (set(class_names(16)) | set(class_names(16, "B")))
    with pytest.raises(ValueError, match="32 classes"):
        SynthBirdsSpec(species="C")


def test_shifted_test_split_shows_the_test_birds_under_harsher_capture():
    spec = SynthBirdsSpec(native_size=64, test_size=20)
    for i in range(5):
        plain, label = render(spec, "test", i)
        shifted, shifted_label = render(spec, "test_shifted", i)
        assert label == shifted_label and shifted.shape == plain.shape
        assert np.abs(plain.astype(int) - shifted.astype(int)).mean() > 20
    assert len(SynthBirds(spec, "test_shifted")) == 20
    assert np.array_equal(SynthBirds(spec, "test_shifted").labels(),
                          SynthBirds(spec, "test").labels())


def test_prerendered_split_equals_rendering(tmp_path):
    spec = SynthBirdsSpec(native_size=32, train_size=12, object_scale=(0.2, 0.7))
    path = synthetic.prerender(spec, "train", str(tmp_path))
    assert synthetic.prerender(spec, "train", str(tmp_path)) == path      # done once
    fast, slow = SynthBirds(spec, "train", str(tmp_path)), SynthBirds(spec, "train")
    for i in range(12):
        assert np.array_equal(fast[i]["image"], slow[i]["image"])
        assert fast[i]["label"] == slow[i]["label"]
    assert np.array_equal(fast.labels(), slow.labels())
    sizes = fast.object_sizes()
    assert np.allclose(sizes, slow.object_sizes()) and 0.2 <= sizes.min() <= sizes.max() <= 0.7
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # another spec is another file, never a stale hit
    other = SynthBirds(SynthBirdsSpec(native_size=32, train_size=12, seed=1), "train",
                       str(tmp_path))
    assert other._images is None


def test_shifted_capture_lens_sign_barrel_pulls_points_in():
    """test_shifted's lens (source = x (1 + k r^2)): k > 0 is barrel (an off-centre dot moves
    towards the centre), k < 0 pincushion, by hand for a dot 8 px right of the centre of 33."""
    import cv2
    image = np.zeros((33, 33), np.float32)
    image[16, 24] = 1.0
    for k, inwards in ((0.3, True), (-0.3, False)):
        out = cv2.remap(image, *synthetic._lens_maps(33, k, (1.0, 1.0)), cv2.INTER_LINEAR)
        col = (out.sum(0) * np.arange(33)).sum() / out.sum()
        # the output radius r (in half-widths) whose source is 8/16: r (1 + k r^2) = 0.5
        r = [x.real for x in np.roots([k, 0, 1, -0.5]) if abs(x.imag) < 1e-9 and 0 < x.real < 1]
        assert (col < 24) == inwards and abs(col - (16 + 16 * r[0])) < 0.3, (k, col)
