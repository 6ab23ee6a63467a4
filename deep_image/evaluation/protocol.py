"""A split's softmax posteriors under a config's test protocol, and metrics from them.

`center_crop`: one centre crop at config.data.scale. `dense` (§5.1): the fully convolutional net
on the whole image at each of config.eval.scales, score maps averaged over space, softmax
posteriors averaged over scales (and over flips with config.eval.flip). Posteriors are what
ensembles average (§4.2, §5.4).
"""

from __future__ import annotations

import jax
import numpy as np

from deep_image.data import pipeline
from deep_image.evaluation import dense as dense_lib
from deep_image.evaluation.metrics import ClassCounts
from deep_image.training.step import normalize

HEADLINE_NAMES = {"top1": "top-1 accuracy", "mean_per_class": "mean per-class accuracy",
                  "top5_error": "top-5 error"}


def split_posteriors(model, params, source, config) -> tuple[np.ndarray, np.ndarray]:
    """(posteriors [N, C] float32, labels [N]) over the readable examples of `source`, in order."""
    is_dense = config.eval.protocol == "dense"
    scales = tuple(config.eval.scales) or (config.data.scale,)
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    @jax.jit
    def score(params, images):
        return dense_lib.posteriors(model, params, normalize(images, mean, std),
                                    dense=is_dense, flip=bool(config.eval.flip))

    total, labels = None, None
    for scale in scales:
        data = pipeline.EvalData(source, config, cache=False, scale=scale,
                                 crop=None if is_dense else config.data.crop,
                                 use_box=bool(config.eval.bbox))
        probs, labs = [], []
        for batch in data:
            keep = batch["mask"]
            probs.append(np.asarray(score(params, batch["image"]))[keep])
            labs.append(batch["label"][keep])
        probs, labs = np.concatenate(probs), np.concatenate(labs)
        if labels is not None and not np.array_equal(labels, labs):
            raise RuntimeError("examples differ between test scales")
        labels = labs
        total = probs if total is None else total + probs
    return total / len(scales), labels


def metrics(probs: np.ndarray, labels: np.ndarray,
            headline: str = "top1") -> tuple[dict, np.ndarray]:
    """(eval/* metrics with the headline, per-class top-1 accuracy)."""
    counts = ClassCounts(probs.shape[1])
    counts.add_predictions(probs, labels)
    out = counts.summary("eval")
    out["eval/top5_error"] = 1.0 - out["eval/top5"]
    key = {"top1": "eval/top1", "mean_per_class": "eval/mean_per_class",
           "top5_error": "eval/top5_error"}[headline]
    out["eval/headline"] = out[key]
    out["eval/headline_name"] = HEADLINE_NAMES[headline]
    return out, counts.per_class_accuracy()
