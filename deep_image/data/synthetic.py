"""SynthBirds: the embedded fine-grained benchmark, generated on the fly (no files, no download).

Every image shows one small stylized bird over textured clutter. All birds share one silhouette;
a class is a combination of small markings, as in CUB-200 where species differ in a wing bar or
an eye stripe:

    wing marking  : plain | one bar | two bars | spots
    head marking  : eye stripe | crest | cap | throat patch
    tail shape    : fan | fork

`num_classes` picks how many of these attributes define the class (4, 16 or 32 classes); the
others are drawn at random and become nuisances. Body and marking colours never depend on the
class. Nuisances the paper's augmentations (§4.1) target are baked into the images: random
position, size, orientation and facing direction (rotation, flipping, cropping), an illuminant
colour cast (colour casting), vignetting and barrel/pincushion distortion (lens distortion).
The markings span a few pixels at the default native size of 128, so downsizing loses them
(the §4.2 argument for high-resolution training).

An image is a pure function of (seed, split, index): `np.random.default_rng((seed, split, index))`
drives everything, so the splits are fixed, disjoint by construction, and any index can be
rendered at any `native_size`.

Two more things serve the claims study (deep_image/study):
- `species="B"`: a second family of 16/32 classes with its own markings (wing: streaked, scaled,
  edged, patched; head: masked, tufted, spectacled, moustached) on the same silhouette, clutter
  and optics: a pre-training task that shares no class with species A (the paper pre-trains on
  ILSVRC, then fine-tunes on CUB).
- `species="C"` (32 classes): one of A's wing markings with one of B's head markings (labels
  0-15) or one of B's wing markings with one of A's head markings (16-31): no class is a
  species-A class, every A marking is in some class, as ILSVRC's birds teach CUB's parts and
  not its species. The claims study pre-trains on it (species B transfers poorly: pilot).
- split `test_shifted`: the birds of `test`, photographed under harsher capture conditions than
  any training image or augmentation (`capture_shift`: a colour cast of 30-45 levels on two or
  three channels, vignetting from radius 0.10-0.20 darkening the corners by 90-98%, barrel or
  pincushion distortion |k| 0.40-0.55, a rotation of 15-25 degrees), for §5.5's robustness claim.
`object_size(spec, split, index)` is the bird's length over the image side (`object_scale`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os

import cv2
import numpy as np

WING_MARKS = ("plain", "one-barred", "two-barred", "spotted")
HEAD_MARKS = ("eye-striped", "crested", "capped", "throated")
TAILS = ("fan-tailed", "fork-tailed")
# Species B: other markings on the same bird (a disjoint pre-training task).
WING_MARKS_B = ("streaked", "scaled", "edged", "patched")
HEAD_MARKS_B = ("masked", "tufted", "spectacled", "moustached")
# The attributes in the order they become class-defining, per species, and the bird's name.
ATTRIBUTES = (("wing", WING_MARKS), ("head", HEAD_MARKS), ("tail", TAILS))
SPECIES = {"A": (ATTRIBUTES, "warbler"),
           "B": ((("wing", WING_MARKS_B), ("head", HEAD_MARKS_B), ("tail", TAILS)), "finch"),
           "C": (None, "")}      # mixed: 32 classes, see _mixed_attributes
_STREAM = {"A": (), "B": (1,), "C": (2,)}   # each species draws from its own generators
VALID_NUM_CLASSES = (4, 16, 32)
SPLITS = {"train": 0, "val": 1, "test": 2, "test_shifted": 2}   # shifted: test's birds
_SHIFT_STREAM = 3            # the generator stream of test_shifted's capture conditions

_PALETTE_MARK = np.array([[20, 20, 20], [240, 240, 240], [230, 200, 30], [200, 40, 40],
                          [40, 60, 200]], np.float32)
_SHIFT = 4            # fixed-point bits for sub-pixel polygon drawing
_ELLIPSE_POINTS = 24


@dataclasses.dataclass(frozen=True)
class SynthBirdsSpec:
    """What defines the benchmark; same spec and index, same image, on any machine."""
    num_classes: int = 16
    native_size: int = 128
    train_size: int = 12_000
    val_size: int = 1_000
    test_size: int = 2_000
    seed: int = 0
    object_scale: tuple[float, float] = (0.45, 0.70)  # body length / image side
    max_tilt_degrees: float = 35.0
    clutter: int = 8                                   # distractor strokes per image
    species: str = "A"              # A (the benchmark) | B (pre-training) | C (A's and B's marks)

    def __post_init__(self):
        if self.species not in SPECIES:
            raise ValueError(f"synthetic species must be one of {tuple(SPECIES)}, got "
                             f"{self.species!r}")
        if self.species == "C" and self.num_classes != 32:
            raise ValueError(f"synthetic species C has 32 classes; set num_classes=32, got "
                             f"{self.num_classes}")
        if self.num_classes not in VALID_NUM_CLASSES:
            raise ValueError(f"synthetic num_classes must be one of {VALID_NUM_CLASSES}, "
                             f"got {self.num_classes}")
        if self.native_size < 16:
            raise ValueError(f"synthetic native_size must be at least 16, got {self.native_size}")

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size,
                "test_shifted": self.test_size}[split]


def _defining_attributes(num_classes: int) -> int:
    n, count = 1, 0
    for _, values in ATTRIBUTES:
        if n == num_classes:
            break
        n *= len(values)
        count += 1
    return count


def class_names(num_classes: int, species: str = "A") -> list[str]:
    """Readable names, e.g. 'two-barred crested warbler'; index = label."""
    if species == "C":
        return [f"{w} {h} {'warbler-finch' if half else 'finch-warbler'}"
                for half, (wings, heads) in enumerate(((WING_MARKS, HEAD_MARKS_B),
                                                       (WING_MARKS_B, HEAD_MARKS)))
                for h in heads for w in wings]
    attributes, bird = SPECIES[species]
    k = _defining_attributes(num_classes)
    combos = itertools.product(*[values for _, values in reversed(attributes[:k])])
    return [" ".join(reversed(c)) + f" {bird}" for c in combos]


def _mixed_attributes(label: int, rng: np.random.Generator) -> dict:
    """Species C (32 classes): labels 0-15 put one of A's four wing markings with one of B's
    four head markings, labels 16-31 one of B's wing markings with one of A's head markings;
    the tail is drawn. No class is a species-A class, yet every A marking is in some class:
    a pre-training task that, as ILSVRC's birds for CUB, teaches the target's parts, never its
    classes."""
    half, rest = divmod(label, 16)
    return {"wing": rest % 4, "head": rest // 4, "wing_from": "B" if half else "A",
            "head_from": "A" if half else "B", "tail": int(rng.integers(len(TAILS)))}


def _attributes_of(label: int, num_classes: int, rng: np.random.Generator,
                   species: str = "A") -> dict:
    if species == "C":
        return _mixed_attributes(label, rng)
    k = _defining_attributes(num_classes)
    out = {}
    for i, (name, values) in enumerate(ATTRIBUTES):
        if i < k:
            out[name] = label % len(values)
            label //= len(values)
        else:
            out[name] = int(rng.integers(len(values)))
    return out


# ----------------------------------------------------------------------------- shapes
# The bird is drawn in a local frame measured in body lengths: body along +x, head at +x.

def _ellipse(cx, cy, ax, ay, angle=0.0, n=_ELLIPSE_POINTS):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = ax * np.cos(t), ay * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _bar(x0, y0, x1, y1, half_width):
    d = np.array([x1 - x0, y1 - y0], np.float64)
    n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * half_width
    return np.array([[x0, y0] + n, [x1, y1] + n, [x1, y1] - n, [x0, y0] - n])


def _bird_parts(attrs: dict[str, int], species: str = "A"):
    """(polygon, colour role) list in local coordinates, drawn in order."""
    parts = []
    tail = attrs["tail"]
    if TAILS[tail] == "fan-tailed":
        parts.append((np.array([[-0.40, 0.0], [-0.78, -0.20], [-0.78, 0.20]]), "wing"))
    else:
        parts.append((np.array([[-0.40, -0.03], [-0.82, -0.24], [-0.68, -0.02]]), "wing"))
        parts.append((np.array([[-0.40, 0.03], [-0.82, 0.24], [-0.68, 0.02]]), "wing"))
    parts.append((_ellipse(0.0, 0.0, 0.48, 0.22), "body"))
    parts.append((np.array([[0.62, -0.16], [0.80, -0.11], [0.62, -0.06]]), "beak"))
    parts.append((_ellipse(0.50, -0.13, 0.15, 0.15), "body"))
    parts.append((_ellipse(-0.06, 0.02, 0.30, 0.12), "wing"))
    if species == "B":
        return parts + _species_b_marks(attrs)
    if species == "C":          # one of A's markings and one of B's (attrs says which)
        wing = (_a_wing if attrs["wing_from"] == "A" else _b_wing)(attrs["wing"])
        head = (_a_head if attrs["head_from"] == "A" else _b_head)(attrs["head"])
        return parts + wing + head + [_EYE]
    return parts + _a_wing(attrs["wing"]) + _a_head(attrs["head"]) + [_EYE]


def _a_wing(index: int):
    parts, wing = [], WING_MARKS[index]
    if wing == "one-barred":
        parts.append((_bar(-0.10, -0.12, -0.02, 0.14, 0.06), "mark"))
    elif wing == "two-barred":
        parts.append((_bar(-0.24, -0.11, -0.16, 0.14, 0.05), "mark"))
        parts.append((_bar(0.04, -0.11, 0.12, 0.14, 0.05), "mark"))
    elif wing == "spotted":
        for x, y in ((-0.24, 0.03), (-0.06, -0.04), (0.12, 0.04)):
            parts.append((_ellipse(x, y, 0.065, 0.065, n=12), "mark"))
    return parts


def _a_head(index: int):
    head = HEAD_MARKS[index]
    if head == "eye-striped":
        return [(_bar(0.34, -0.17, 0.66, -0.14, 0.05), "mark")]
    if head == "crested":
        return [(np.array([[0.38, -0.22], [0.34, -0.50], [0.56, -0.26]]), "mark")]
    if head == "capped":
        return [(_ellipse(0.50, -0.23, 0.14, 0.08), "mark")]
    return [(_ellipse(0.56, -0.02, 0.10, 0.08), "mark")]     # throated


def _species_b_marks(attrs: dict[str, int]):
    """Species B's wing and head markings, drawn over the wing and head of _bird_parts, about
    as large as species A's (a task as learnable as the benchmark's)."""
    return _b_wing(attrs["wing"]) + _b_head(attrs["head"]) + [_EYE]


def _b_wing(index: int):
    parts, wing = [], WING_MARKS_B[index]
    if wing == "streaked":
        for y in (-0.06, 0.08):
            parts.append((_bar(-0.30, y, 0.16, y - 0.02, 0.04), "mark"))
    elif wing == "scaled":
        for x, y in ((-0.24, -0.02), (-0.04, 0.04), (0.14, -0.02)):
            parts.append((np.array([[x, y - 0.08], [x + 0.09, y + 0.06], [x - 0.09, y + 0.06]]),
                          "mark"))
    elif wing == "edged":
        parts.append((_bar(-0.32, 0.08, 0.20, 0.10, 0.06), "mark"))
    else:  # patched
        parts.append((_ellipse(0.10, -0.02, 0.13, 0.10), "mark"))
    return parts


def _b_head(index: int):
    head = HEAD_MARKS_B[index]
    if head == "masked":
        return [(_ellipse(0.56, -0.15, 0.11, 0.07), "mark")]
    if head == "tufted":     # a tuft behind the head: the silhouette changes, as a crest
        return [(np.array([[0.40, -0.20], [0.20, -0.42], [0.48, -0.27]]), "mark")]
    if head == "spectacled":
        return [(_ellipse(0.55, -0.16, 0.08, 0.08, n=14), "mark"),
                (_ellipse(0.55, -0.16, 0.04, 0.04, n=10), "body")]
    return [(_bar(0.64, -0.08, 0.40, -0.01, 0.05), "mark")]   # moustached


_EYE = (_ellipse(0.55, -0.16, 0.025, 0.025, n=10), "eye")


def _fill(img, poly, colour):
    pts = np.round(poly * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(img, [pts], tuple(float(c) for c in colour), cv2.LINE_AA, _SHIFT)


# ----------------------------------------------------------------------------- render

def _background(rng: np.random.Generator, size: int, clutter: int) -> np.ndarray:
    base = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 18, size=(max(2, size // 8),) * 2 + (3,)).astype(np.float32)
    img += cv2.resize(fine, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(clutter):   # branches, leaves and marking-like distractors
        colour = rng.uniform(0, 255, 3)
        kind = rng.integers(3)
        cx, cy = rng.uniform(0, 1, 2)
        if kind == 0:
            a = rng.uniform(0, np.pi)
            r = rng.uniform(0.1, 0.5)
            poly = _bar(cx - r * np.cos(a), cy - r * np.sin(a), cx + r * np.cos(a),
                        cy + r * np.sin(a), rng.uniform(0.004, 0.015))
        elif kind == 1:
            poly = _ellipse(cx, cy, *rng.uniform(0.02, 0.09, 2), angle=rng.uniform(0, np.pi))
        else:
            poly = _ellipse(cx, cy, *rng.uniform(0.008, 0.02, 2))
        _fill(img, poly * size, colour)
    return img


def _lens_maps(size: int, k: float, stretch: tuple[float, float]):
    """Barrel (k > 0: points pulled towards the centre) or pincushion (k < 0) radial distortion
    with axis stretching, as source coordinates for cv2.remap."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = (xx - c) / c, (yy - c) / c
    r2 = x * x + y * y
    f = 1 + k * r2
    return ((x * f * stretch[0]) * c + c).astype(np.float32), \
           ((y * f * stretch[1]) * c + c).astype(np.float32)


def _rng_and_label(spec: SynthBirdsSpec, split: str, index: int):
    """The generator that draws everything about an example, after drawing its label.
    Species A keeps the benchmark's original streams; B has its own."""
    key = (spec.seed, SPLITS[split], index) + _STREAM[spec.species]
    rng = np.random.default_rng(key)
    return rng, int(rng.integers(spec.num_classes))


def render(spec: SynthBirdsSpec, split: str, index: int) -> tuple[np.ndarray, int]:
    """The (image uint8 HxWx3 RGB, label) at `index` of `split`."""
    image, label, _ = _render(spec, split, index)
    return image, label


def object_size(spec: SynthBirdsSpec, split: str, index: int) -> float:
    """The bird's length over the image side (drawn from `object_scale`)."""
    return _render(spec, split, index)[2]


def _render(spec: SynthBirdsSpec, split: str, index: int) -> tuple[np.ndarray, int, float]:
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {tuple(SPLITS)}")
    n = spec.split_size(split)
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for the {n}-image {split} split")
    rng, label = _rng_and_label(spec, split, index)
    attrs = _attributes_of(label, spec.num_classes, rng, spec.species)
    size = spec.native_size
    img = _background(rng, size, spec.clutter)

    body = rng.uniform(30, 225, 3)
    wing = np.clip(body * rng.uniform(0.55, 0.8), 0, 255)
    marks = _PALETTE_MARK[rng.permutation(len(_PALETTE_MARK))]
    # A marking colour far from the body colour, so markings are visible, never class-coded.
    mark = max(marks, key=lambda m: np.abs(m - body).sum() + rng.uniform(0, 60))
    colours = {"body": body, "wing": wing, "mark": mark, "beak": (60, 50, 40),
               "eye": (10, 10, 10)}

    relative_size = rng.uniform(*spec.object_scale)
    length = relative_size * size
    tilt = np.deg2rad(rng.uniform(-spec.max_tilt_degrees, spec.max_tilt_degrees))
    facing = 1.0 if rng.random() < 0.5 else -1.0
    margin = min(0.7 * length, 0.5 * size)   # keeps the head and most of the tail in frame
    centre = rng.uniform(margin, size - margin, 2)
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    for poly, role in _bird_parts(attrs, spec.species):
        pts = (poly * [facing, 1.0]) @ rot.T * length + centre
        _fill(img, pts, colours[role])

    # Illuminant and optics: colour cast, vignetting, lens distortion, sensor noise.
    img *= rng.uniform(0.75, 1.25, 3).astype(np.float32) * rng.uniform(0.8, 1.15)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) / (size / np.sqrt(2))
    radius = rng.uniform(0.4, 0.9)
    img *= (1 - rng.uniform(0, 0.6) * np.clip((r - radius) / (1 - radius + 1e-6), 0, 1)
            ** 2)[..., None]
    k = rng.uniform(-0.25, 0.25)
    stretch = tuple(rng.uniform(0.92, 1.08, 2))
    img = cv2.remap(img, *_lens_maps(size, k, stretch), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    if split == "test_shifted":
        key = (spec.seed, _SHIFT_STREAM, index) + _STREAM[spec.species]
        image = capture_shift(image, np.random.default_rng(key))
    return image, label, float(relative_size)


def capture_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Harsher capture conditions than any training image or augmentation (§5.5, Figure 9):
    each beyond the range of the baked-in nuisances and of the §4.1 augmentations (colour cast
    +-20, vignetting from radius >= 0.2, lens |k| <= 0.30, rotation +-10 degrees)."""
    size = image.shape[0]
    img = image.astype(np.float32)
    # colour cast: two or three channels shifted by 30-45 levels, random signs
    shifted = rng.permutation(3)[:rng.integers(2, 4)]
    for c in shifted:
        img[..., c] += rng.choice((-1.0, 1.0)) * rng.uniform(30, 45)
    # vignetting: from radius 0.10-0.20 to 90-98% darker corners
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) / (size / np.sqrt(2))
    start = rng.uniform(0.10, 0.20)
    img *= (1 - rng.uniform(0.90, 0.98) * np.clip((r - start) / (1 - start), 0, 1) ** 2)[..., None]
    # lens distortion: barrel or pincushion, |k| 0.40-0.55
    k = rng.choice((-1.0, 1.0)) * rng.uniform(0.40, 0.55)
    img = cv2.remap(img, *_lens_maps(size, k, (1.0, 1.0)), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    # rotation by 15-25 degrees either way
    angle = rng.choice((-1.0, 1.0)) * rng.uniform(15, 25)
    m = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    return np.clip(img, 0, 255).astype(np.uint8)


class SynthBirds:
    """A Grain random-access source of one split: `len()` and `[i] -> {'image', 'label'}`.

    With `prerendered` (a directory where `prerender` wrote this spec's split) images are read
    from one memory-mapped file instead of rendered: runs in several processes share one
    rendering (the claims study)."""

    def __init__(self, spec: SynthBirdsSpec, split: str, prerendered: str = ""):
        if split not in SPLITS:
            raise ValueError(f"unknown synthetic split {split!r}; choose one of {tuple(SPLITS)}")
        self.spec, self.split = spec, split
        self.class_names = class_names(spec.num_classes, spec.species)
        self._images = self._labels = self._sizes = None
        path = _prerendered_path(prerendered, spec, split) if prerendered else ""
        if path and os.path.isfile(path + ".images.npy"):
            self._images = np.load(path + ".images.npy", mmap_mode="r")
            self._labels = np.load(path + ".labels.npy")
            self._sizes = np.load(path + ".sizes.npy")

    def __len__(self) -> int:
        return self.spec.split_size(self.split)

    def __getitem__(self, index: int) -> dict:
        if self._images is not None:
            return {"image": np.asarray(self._images[int(index)]),
                    "label": int(self._labels[int(index)])}
        image, label = render(self.spec, self.split, int(index))
        return {"image": image, "label": label}

    def labels(self) -> np.ndarray:
        """Every example's label, without rendering (for stratified slices)."""
        if self._labels is not None:
            return self._labels.copy()
        return np.array([_rng_and_label(self.spec, self.split, i)[1] for i in range(len(self))])

    def object_sizes(self) -> np.ndarray:
        """Every example's bird length over the image side (renders, or reads the record)."""
        if self._sizes is not None:
            return self._sizes.copy()
        return np.array([object_size(self.spec, self.split, i) for i in range(len(self))])

    def __repr__(self) -> str:
        return f"SynthBirds({self.split}, {len(self)} images, {self.spec})"


def _prerendered_path(directory: str, spec: SynthBirdsSpec, split: str) -> str:
    key = hashlib.sha1(repr((dataclasses.astuple(spec), split)).encode()).hexdigest()[:16]
    return os.path.join(directory, f"synthbirds_{split}_{key}")


def prerender(spec: SynthBirdsSpec, split: str, directory: str) -> str:
    """Renders a whole split once into DIRECTORY (images, labels, object sizes as .npy, written
    atomically); returns the path prefix. Nothing is done if it is there already."""
    path = _prerendered_path(directory, spec, split)
    if os.path.isfile(path + ".images.npy"):
        return path
    os.makedirs(directory, exist_ok=True)
    n, side = spec.split_size(split), spec.native_size
    images = np.zeros((n, side, side, 3), np.uint8)
    labels, sizes = np.zeros(n, np.int64), np.zeros(n, np.float64)
    for i in range(n):
        images[i], labels[i], sizes[i] = _render(spec, split, i)
    for suffix, array in ((".sizes.npy", sizes), (".labels.npy", labels),
                          (".images.npy", images)):          # images last: the marker
        tmp = f"{path}{suffix}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path + suffix)
    return path


def jpeg_files(n: int, size: int, quality: int = 90) -> list[bytes]:
    """The first `n` training images at `size` x `size` as JPEG files' bytes (benchmarks of
    the decoding pipeline: bench.pipeline, bench.step)."""
    spec = SynthBirdsSpec(native_size=size)
    return [cv2.imencode(".jpg", cv2.cvtColor(render(spec, "train", i)[0], cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for i in range(n)]


def write_image_folder(root: str, jpegs: list[bytes], num_classes: int = 1) -> None:
    """`jpegs` as an image folder under `root` (`train/class000/00000.jpg`, ...; labels
    i % num_classes), readable with config.data.source='folder' (data/archives.py)."""
    for i, data in enumerate(jpegs):
        folder = os.path.join(root, "train", f"class{i % num_classes:03d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(data)
