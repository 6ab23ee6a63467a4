"""Top-1, top-5 and mean per-class accuracy from per-class sums, and the benchmarks' headline.

`class_sums` turns one batch of posteriors into per-class example counts and hits; these add
up exactly over batches, devices and hosts, and padding (mask 0) adds nothing, so every example
counts once. Training, evaluate, ensemble and predict all reach their numbers through it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HEADLINE_NAMES = {"top1": "top-1 accuracy", "mean_per_class": "mean per-class accuracy",
                  "top5_error": "top-5 error"}
TOP_K = 5


def class_sums(probs: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Per-class sums of one batch of posteriors [N, C]: example counts, top-1 and top-5 hits,
    and the summed negative log-likelihood of the true class."""
    num_classes = probs.shape[-1]
    mask = mask.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
    top = jax.lax.top_k(probs, min(TOP_K, num_classes))[1]
    hit1 = (top[:, 0] == labels).astype(jnp.float32)
    hitk = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
    picked = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    nll = -jnp.log(jnp.clip(picked, 1e-12, 1.0))
    return {"count": onehot.sum(0), "top1": (onehot * hit1[:, None]).sum(0),
            "top5": (onehot * hitk[:, None]).sum(0), "loss": (nll * mask).sum()}


class ClassCounts:
    """Running per-class sums over an evaluation pass."""

    def __init__(self, num_classes: int):
        self.count = np.zeros(num_classes, np.float64)
        self.top1 = np.zeros(num_classes, np.float64)
        self.top5 = np.zeros(num_classes, np.float64)
        self.loss = 0.0

    def add(self, sums: dict) -> None:
        self.count += np.asarray(sums["count"], np.float64)
        self.top1 += np.asarray(sums["top1"], np.float64)
        self.top5 += np.asarray(sums["top5"], np.float64)
        self.loss += float(sums["loss"])

    def per_class_accuracy(self) -> np.ndarray:
        """Top-1 accuracy of each class; NaN for classes absent from the split."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.top1 / self.count, np.nan)

    def summary(self, prefix: str, headline: str | None = None) -> dict:
        """{prefix}/top1, top5, top5_error, mean_per_class, loss, examples (+ headline)."""
        n = max(self.count.sum(), 1.0)
        present = self.count > 0
        out = {
            f"{prefix}/top1": float(self.top1.sum() / n),
            f"{prefix}/top5": float(self.top5.sum() / n),
            f"{prefix}/top5_error": float(1.0 - self.top5.sum() / n),
            f"{prefix}/mean_per_class": float(np.mean(self.top1[present] / self.count[present]))
            if present.any() else 0.0,
            f"{prefix}/loss": float(self.loss / n),
            f"{prefix}/examples": float(self.count.sum()),
        }
        if headline is not None:
            out[f"{prefix}/headline"] = out[f"{prefix}/{headline}"]
        return out


def of_posteriors(probs: np.ndarray, labels: np.ndarray) -> ClassCounts:
    """The counts of posteriors held on the host (ensembles), through `class_sums`."""
    counts = ClassCounts(probs.shape[1])
    counts.add(jax.device_get(jax.jit(class_sums)(
        jnp.asarray(probs, jnp.float32), jnp.asarray(labels, jnp.int32),
        jnp.ones(len(labels), bool))))
    return counts


def decision_error(values: dict, prefix: str, headline: str) -> float:
    """What the §5.1 schedule minimizes: the benchmark's own metric on `prefix`'s split as an
    error (1 - accuracy; top-5 error as is)."""
    value = values[f"{prefix}/{headline}"]
    return float(value if headline.endswith("error") else 1.0 - value)
