"""Top-1, top-5 and mean per-class accuracy from per-class sums.

The eval step returns, per batch, per-class example counts and hits; these add up exactly over
batches, devices and hosts, and padding (mask 0) adds nothing, so every example counts once.
"""

from __future__ import annotations

import numpy as np


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

    def add_predictions(self, probs: np.ndarray, labels: np.ndarray) -> None:
        """Adds scored examples: probs [N, C], integer labels [N]."""
        c = self.count.shape[0]
        top = np.argsort(-probs, axis=1)[:, :5]
        onehot = np.eye(c)[labels]
        self.count += onehot.sum(0)
        self.top1 += (onehot * (top[:, 0] == labels)[:, None]).sum(0)
        self.top5 += (onehot * (top == labels[:, None]).any(1)[:, None]).sum(0)
        picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
        self.loss += float(-np.log(picked).sum())

    @property
    def num_examples(self) -> int:
        return int(round(self.count.sum()))

    def per_class_accuracy(self) -> np.ndarray:
        """Top-1 accuracy of each class; NaN for classes absent from the split."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.top1 / self.count, np.nan)

    def summary(self, prefix: str = "eval") -> dict[str, float]:
        n = max(self.count.sum(), 1.0)
        present = self.count > 0
        return {
            f"{prefix}/top1": float(self.top1.sum() / n),
            f"{prefix}/top5": float(self.top5.sum() / n),
            f"{prefix}/mean_per_class": float(np.mean(self.top1[present] / self.count[present]))
            if present.any() else 0.0,
            f"{prefix}/loss": float(self.loss / n),
            f"{prefix}/examples": float(self.count.sum()),
        }
