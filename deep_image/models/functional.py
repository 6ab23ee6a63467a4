"""A pure-function view of an NNX model: parameters are a plain nested dict of arrays.

The jitted train step, the sharding rules, orbax checkpoints and weight import all work on the
same dict of `{layer: {kernel, bias}}`; `nnx.merge` rebuilds the module inside the trace, so the
compiled step pays no Python graph traversal per call.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from deep_image.models.vgg import VGG


class Model:
    """Builds a VGG once abstractly; `init` and `apply` are pure functions of arrays."""

    def __init__(self, variant: str, num_classes: int, *, width: float, input_size: int,
                 dtype: str, dropout_rate: float, head_init: str = "he"):
        self._make = functools.partial(VGG, variant, num_classes, width=width,
                                       input_size=input_size, dtype=dtype,
                                       dropout_rate=dropout_rate, head_init=head_init)
        self.variant, self.num_classes, self.input_size = variant, num_classes, input_size
        abstract = nnx.eval_shape(lambda: self._make(rngs=nnx.Rngs(0)))
        self.graphdef, state = nnx.split(abstract)
        self.abstract_params = nnx.to_pure_dict(state)   # ShapeDtypeStructs

    def init(self, key: jax.Array) -> dict:
        """Fresh He-initialized parameters from a PRNG key."""
        return nnx.to_pure_dict(nnx.state(self._make(rngs=nnx.Rngs(key)), nnx.Param))

    def module(self, params: dict) -> VGG:
        return nnx.merge(self.graphdef, params)

    def apply(self, params: dict, images: jax.Array, *, train: bool = False,
              dropout_key: jax.Array | None = None) -> jax.Array:
        return self.module(params)(images, train=train, dropout_key=dropout_key)

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.abstract_params))


def build(model_config, num_classes: int, input_size: int) -> Model:
    """The model a config's `model` section describes, for `num_classes` and square inputs."""
    return Model(model_config.variant, num_classes, width=model_config.width,
                 input_size=input_size, dtype=model_config.dtype,
                 dropout_rate=model_config.dropout_rate, head_init=model_config.head_init)
