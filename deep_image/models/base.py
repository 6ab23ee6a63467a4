"""The interface every model family gives the rest of the package, and nothing else.

A family is a module in deep_image/models/ (chosen by `config.model.name`, imported by name)
with `VARIANTS`, `check(model_config) -> None` (raises ValueError naming a setting it cannot
run) and `build(model_config, num_classes, input_size) -> Model`. Its `Model` is a set of pure
functions over plain nested dicts:

- parameters `{layer: {name: array}}` (`abstract_params`; sharding rules, checkpoints and
  weight import all see these names) and non-parameter state, e.g. BatchNorm statistics, in
  the same form (`abstract_stats`; empty for VGG);
- `features(params, images, ...)`: the part every device runs on its own rows (§3.2: the
  convolutional layers), returning one flat feature vector per image;
- `head(params, x, ...)`: the layers that may be split over the FC axis (`head_layers`),
  each computed as the parallel layout says (`split`: layer -> "columns" | "rows" | "whole"),
  with dropout masks drawn for the global batch so a split head drops what a whole one drops;
- `dense_scores(params, images, ...)`: the fully convolutional form for dense testing (§5.1);
- `classifier` (re-initialized for a new class set, trained by finetune=last) and `fc_layers`
  (trained by finetune=fc);
- `forward_dtypes()`: the dtype each parameter is computed in (the compute dtype for what the
  forward pass casts, float32 for what it keeps, e.g. BatchNorm's scale and bias).
Models know layer names, never meshes: collectives run over axis names the caller passes.
"""

from __future__ import annotations

import jax
from flax import nnx


REMAT = ("none", "blocks")       # config.model.remat
BLOCK_OUTPUT = "block_output"    # the checkpoint_name of each VGG block's / ResNet block's output


def rematerialized(fn, remat: str):
    """`fn` under config.model.remat. "blocks": `jax.checkpoint` with the named policy that
    saves only the values named BLOCK_OUTPUT, so the backward pass keeps each block's output
    and recomputes the activations inside the block from it (activation memory: one tensor
    per block instead of every layer's). "none": `fn` as it is."""
    if remat == "none":
        return fn
    if remat != "blocks":
        raise ValueError(f"config.model.remat={remat!r}; choose one of {', '.join(REMAT)}")
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(
        BLOCK_OUTPUT))


class Model:
    """The NNX module built abstractly once; init/apply are pure functions of dicts, and the
    module is rebuilt (`nnx.merge`) inside a trace, so the hot loop pays no graph traversal."""

    classifier: str = ""
    fc_layers: tuple[str, ...] = ()
    head_layers: tuple[str, ...] = ()

    def __init__(self, make, *, num_classes: int, input_size: int, variant: str):
        self._make = make
        self.variant, self.num_classes, self.input_size = variant, num_classes, input_size
        abstract = nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0)))
        self.graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        self.abstract_params = nnx.to_pure_dict(params)      # ShapeDtypeStructs
        self.abstract_stats = nnx.to_pure_dict(stats)

    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """Fresh (parameters, statistics) from a PRNG key."""
        module = self._make(rngs=nnx.Rngs(key))
        return (nnx.to_pure_dict(nnx.state(module, nnx.Param)),
                nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)))

    def module(self, params: dict, stats: dict | None = None):
        if stats is None:
            if jax.tree.leaves(self.abstract_stats):
                raise ValueError(f"{self.variant} keeps BatchNorm statistics: pass the trained "
                                 "state's `stats` (e.g. Trained(...).stats) with its params")
            stats = self.abstract_stats
        return nnx.merge(self.graphdef, params, stats)

    def forward_dtypes(self) -> dict:
        """{layer: {name: dtype}}: the dtype the forward pass computes with each parameter in
        (the lazy update gathers a weight in it: parallel/butterfly.py). Default: as stored."""
        return {k: {n: x.dtype for n, x in v.items()} for k, v in self.abstract_params.items()}

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract_params))

    # -- the computation: families implement features, head and dense_scores --
    def features(self, params, images, *, stats=None, train=False, update_stats=False,
                 batch_axes=None) -> tuple[jax.Array, dict]:
        """(one flat feature vector per image, statistics after this batch)."""
        raise NotImplementedError

    def head(self, params, x, *, keys=None, rate=0.0, split=None, axis=None,
             rows=None) -> jax.Array:
        """float32 logits of features `x` through `head_layers`; `split` (layer -> kind) and
        `axis` describe a head split over the FC axis; `keys` and `rows` = (global batch, first
        row, or a vector of the rows' indices) place dropout masks."""
        raise NotImplementedError

    def dense_scores(self, params, images, *, stats=None) -> jax.Array:
        """Class scores of whole images of any size >= input_size (§5.1)."""
        raise NotImplementedError

    def apply(self, params, images, *, stats=None, train=False, dropout_key=None,
              update_stats=False) -> jax.Array:
        """float32 logits of NHWC images of side `input_size` on one device."""
        return self.apply_with_stats(params, images, stats=stats, train=train,
                                     dropout_key=dropout_key, update_stats=update_stats)[0]

    def apply_with_stats(self, params, images, *, stats=None, train=False, dropout_key=None,
                         update_stats=False) -> tuple[jax.Array, dict]:
        if images.shape[1] != self.input_size or images.shape[2] != self.input_size:
            raise ValueError(f"{self.variant} built for {self.input_size}x{self.input_size} "
                             f"inputs got {images.shape[1]}x{images.shape[2]}")
        x, stats = self.features(params, images, stats=stats, train=train,
                                 update_stats=update_stats)
        keys = jax.random.split(dropout_key) if train and dropout_key is not None else None
        logits = self.head(params, x, keys=keys, rate=self.dropout_rate if train else 0.0,
                           rows=(x.shape[0], 0))
        return logits, stats

    dropout_rate: float = 0.0
