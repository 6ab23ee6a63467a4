"""The one evaluation path: a split scored under a test protocol (§5.1), used by training's
periodic evaluation and by `evaluate`, `ensemble` and `predict`, so the same protocol gives the
same number everywhere.

An `Evaluator` owns normalization, the protocol's views of each image (one centre crop, or the
whole image at each test scale for the fully convolutional net; mirrored too with `flip`),
softmax posteriors averaged over views (what ensembles average, §4.2, §5.4), and the metrics
(per-class sums, evaluation/metrics.py). Batches are sharded over the mesh's devices and padded
with a mask, so every process and device count gives the same sums.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from deep_image.data import pipeline
from deep_image.evaluation import dense as dense_lib
from deep_image.evaluation.metrics import ClassCounts, class_sums
from deep_image.parallel import mesh as mesh_lib


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 RGB -> float32, per-channel standardized (on device, for training and tests)."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a split is tested: `dense` (whole image, fully convolutional) or a centre crop, at
    each of `scales`, with mirrored views when `flip`, cropped to the box when `bbox`."""
    dense: bool
    scales: tuple[int, ...]
    flip: bool = False
    bbox: bool = False

    @classmethod
    def of(cls, config) -> "Protocol":
        """config.eval's protocol (evaluate, ensemble, predict)."""
        e = config.eval
        return cls(e.protocol == "dense", tuple(e.scales) or (config.data.scale,),
                   bool(e.flip), bool(e.bbox))

    @classmethod
    def quick(cls, config) -> "Protocol":
        """One centre crop at the training scale: training's periodic evaluation."""
        return cls(False, (config.data.scale,))

    def describe(self) -> str:
        kind = f"dense, scales {self.scales}" if self.dense else f"centre crop of {self.scales}"
        return kind + (" +flip" if self.flip else "") + (" +bbox" if self.bbox else "")


class Evaluator:
    """Scores `source` under `protocol` with any parameters of `model`."""

    def __init__(self, model, config, source, protocol: Protocol, *, mesh=None,
                 process_index: int = 0, process_count: int = 1, cache: bool = True,
                 batch_size: int | None = None):
        self.mesh = mesh if mesh is not None else mesh_lib.make_mesh(
            (("data", 1), ("model", 1)), jax.local_devices()[:1])
        self.protocol, self.num_classes = protocol, len(source.class_names)
        self.process_count = process_count
        crop = None if protocol.dense else config.data.crop
        self._data = [pipeline.EvalData(source, config, process_index=process_index,
                                        process_count=process_count, cache=cache, scale=s,
                                        crop=crop, use_box=protocol.bbox,
                                        batch_size=batch_size)
                      for s in protocol.scales]
        mean, std = tuple(config.data.mean), tuple(config.data.std)
        dense, flip = protocol.dense, protocol.flip
        batch = mesh_lib.batch_sharding(self.mesh)
        replicated = mesh_lib.replicated(self.mesh)

        def score(params, stats, views):
            probs = [dense_lib.posteriors(model, params, normalize(v, mean, std), dense=dense,
                                          flip=flip, stats=stats) for v in views]
            return sum(probs) / len(probs)

        self._score = jax.jit(score, out_shardings=batch)
        self._sums = jax.jit(class_sums, out_shardings=replicated)
        self._batch_sharding, self._replicated = batch, replicated

    def _put(self, x: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self._batch_sharding, x)

    def _scored_batches(self, params, stats):
        """(posteriors, labels, mask) per batch, all views of an example averaged."""
        for views in zip(*self._data):
            labels, mask = views[0]["label"], views[0]["mask"]
            if any(not (np.array_equal(v["label"], labels) and np.array_equal(v["mask"], mask))
                   for v in views[1:]):
                raise RuntimeError("the test scales read different examples")
            probs = self._score(params, stats, [self._put(v["image"]) for v in views])
            yield probs, self._put(labels), self._put(mask)

    def counts(self, params, stats=None) -> ClassCounts:
        """Per-class sums over the whole split (every process gets the global sums); `stats`:
        the model's BatchNorm statistics, if it has any."""
        counts = ClassCounts(self.num_classes)
        for probs, labels, mask in self._scored_batches(params, stats):
            counts.add(jax.device_get(self._sums(probs, labels, mask)))
        return counts

    def run(self, params, prefix: str, headline: str | None = None, stats=None) -> dict:
        """The split's metrics as {prefix}/top1, ... (see ClassCounts.summary)."""
        return self.counts(params, stats).summary(prefix, headline)

    def posteriors(self, params, stats=None) -> tuple[np.ndarray, np.ndarray]:
        """(posteriors [N, C], labels [N]) of the readable examples, in the source's order (one
        process: what ensembles average and predict prints)."""
        if self.process_count != 1:
            raise ValueError("Evaluator.posteriors gathers on one process; use counts()")
        out, labs = [], []
        for probs, labels, mask in self._scored_batches(params, stats):
            keep = np.asarray(jax.device_get(mask))
            out.append(np.asarray(jax.device_get(probs))[keep])
            labs.append(np.asarray(jax.device_get(labels))[keep])
        return np.concatenate(out), np.concatenate(labs)
