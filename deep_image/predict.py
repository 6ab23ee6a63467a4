"""Top-k classes of image files with a trained model and its test protocol:

    python -m deep_image.predict --workdir=DIR [--top=5] IMAGE...

An unreadable file gets a one-line error and the others are still predicted; the exit code is
1 if any file failed.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from absl import app, flags

from deep_image import errors

flags.DEFINE_string("workdir", None, "The run's directory.")
flags.DEFINE_integer("top", 5, "How many classes to print per image.")


class _Images:
    """The readable files as a source, for the evaluator (labels are placeholders)."""

    def __init__(self, images, class_names):
        self._images, self.class_names = images, class_names

    def __len__(self):
        return len(self._images)

    def __getitem__(self, index):
        return {"image": self._images[int(index)], "label": 0}


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name at least one image file")
    from deep_image.data import decode
    from deep_image.evaluation.evaluator import Evaluator, Protocol
    from deep_image.training.checkpoint import Trained

    with errors.one_line():
        run = Trained(flags.FLAGS.workdir)
    readable, images, failed = [], [], 0
    for path in paths:
        image, reason = decode.read(path)
        if image is None:
            print(f"error: {path}: {reason}", file=sys.stderr)
            failed += 1
        else:
            readable.append(path)
            images.append(image)
    if images:
        # the config's test protocol, through the same evaluator as `evaluate`
        probs, _ = Evaluator(run.model, run.config, _Images(images, run.class_names),
                             Protocol.of(run.config), cache=False,
                             batch_size=min(len(images), run.config.eval_batch_size)
                             ).posteriors(run.params, run.stats)
        k = min(flags.FLAGS.top, len(run.class_names))
        for path, p in zip(readable, probs):
            best = np.argsort(-p)[:k]
            print(f"{path}: " + ", ".join(f"{run.class_names[i]} {p[i]:.3f}" for i in best))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    errors.run_app(main, required=["workdir"], library_level=logging.ERROR)
