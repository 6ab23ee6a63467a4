"""A grid of each §4.1 augmentation applied to a few images (the paper's Figure 4).

    python -m deep_image.tools.gallery --out gallery.png [--images a.jpg,b.jpg] [--seed 0]

Rows are images (SynthBirds samples unless --images is given), columns are: the resized image,
its centre crop, then the crop under each augmentation alone at a clearly visible setting drawn
from its Table 1 space, then all six together as training draws them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from deep_image import config as config_lib  # noqa: E402
from deep_image.data import augment, decode, synthetic, transforms  # noqa: E402

flags.DEFINE_string("out", None, "Where to write the PNG.")
flags.DEFINE_list("images", [], "Image files (default: three SynthBirds images).")
flags.DEFINE_integer("scale", 512, "Resize images to scale x scale.")
flags.DEFINE_integer("crop", 224, "Crop size.")
flags.DEFINE_integer("seed", 0, "Seed of the random crops and of the 'all six' column.")
FLAGS = flags.FLAGS

# One visible member of each space; `crop` is filled in per image.
COLUMNS = [
    ("random crop", lambda c: augment.Params(crop=c)),
    ("flip", lambda c: augment.Params(crop=c, flip=True)),
    ("rotation +10°", lambda c: augment.Params(crop=c, rotation=10)),
    ("barrel", lambda c: augment.Params(crop=c, lens=("barrel", 65))),
    ("pincushion", lambda c: augment.Params(crop=c, lens=("pincushion", 65))),
    ("stretch x", lambda c: augment.Params(crop=c, lens=("stretch_x", 65))),
    ("colour cast (+20,0,-20)", lambda c: augment.Params(crop=c, color_cast=(20, 0, -20))),
    ("vignetting (0.3, 70%)", lambda c: augment.Params(crop=c, vignette=(0.3, 0.7))),
]


def _images(paths, scale):
    if not paths:
        spec = synthetic.SynthBirdsSpec(native_size=scale)
        return [synthetic.render(spec, "test", i)[0] for i in range(3)]
    out = []
    for p in paths:
        image, reason = decode.read(p)
        if image is None:
            raise app.UsageError(f"cannot read {p}: {reason}")
        out.append(image)
    return out


def gallery(images, scale: int, crop: int, seed: int, out: str) -> None:
    rng = np.random.default_rng(seed)
    cols = 2 + len(COLUMNS) + 1
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 2.0 * len(images)),
                             squeeze=False)
    every = config_lib.all_six()
    for r, image in enumerate(images):
        image = transforms.resize(image, scale)
        offset = augment.sample(rng, every, image.shape, crop).crop
        panels = [("resized", image), ("centre crop", transforms.center_crop(image, crop))]
        panels += [(name, augment.apply_fused(image, make(offset), crop))
                   for name, make in COLUMNS]
        panels.append(("all six", augment.apply_fused(
            image, augment.sample(rng, every, image.shape, crop), crop)))
        for c, (name, panel) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle("Deep Image §4.1 augmentations (all but cropping act on the crop)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv):
    del argv
    if not FLAGS.out:
        raise app.UsageError("--out is required")
    gallery(_images(FLAGS.images, FLAGS.scale), FLAGS.scale, FLAGS.crop, FLAGS.seed, FLAGS.out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
