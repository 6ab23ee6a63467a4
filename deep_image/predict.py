"""Top-k classes of image files with a trained model and its test protocol:

    python -m deep_image.predict --workdir=DIR [--top=5] IMAGE...

An unreadable file gets a one-line error and the others are still predicted; the exit code is
1 if any file failed.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags

from deep_image import errors

flags.DEFINE_string("workdir", None, "The run's directory.")
flags.DEFINE_integer("top", 5, "How many classes to print per image.")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name at least one image file")
    import jax

    from deep_image.data import decode, transforms
    from deep_image.evaluation import dense as dense_lib
    from deep_image.training.checkpoint import Trained
    from deep_image.training.step import normalize

    with errors.one_line():
        run = Trained(flags.FLAGS.workdir)
    c = run.config
    is_dense = c.eval.protocol == "dense"
    scales = tuple(c.eval.scales) or (c.data.scale,)

    @jax.jit
    def score(params, images):
        return dense_lib.posteriors(run.model, params, normalize(images, c.data.mean, c.data.std),
                                    dense=is_dense, flip=bool(c.eval.flip))

    failed = 0
    k = min(flags.FLAGS.top, len(run.class_names))
    for path in paths:
        image, reason = decode.read(path)
        if image is None:
            print(f"error: {path}: {reason}", file=sys.stderr)
            failed += 1
            continue
        probs = 0
        for scale in scales:
            x = transforms.eval_transform({"image": image, "label": 0}, scale=scale,
                                          crop=None if is_dense else c.data.crop,
                                          resize_mode="square" if is_dense else c.data.resize)
            probs = probs + np.asarray(score(run.params, x["image"][None]))[0]
        probs = probs / len(scales)
        best = np.argsort(-probs)[:k]
        print(f"{path}: " + ", ".join(f"{run.class_names[i]} {probs[i]:.3f}" for i in best))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    errors.run_app(main, required=["workdir"])
