"""Model families, chosen by name: `config.model.name` is a module here (vgg, resnet) with
`VARIANTS`, `check(model_config)` and `build(model_config, num_classes, input_size)`; see
base.py for the interface the rest of the package uses. Adding a family adds a module here and
a config; nothing else names it. Models know layer names and shapes, never meshes, data or
training."""

from __future__ import annotations

import importlib

from deep_image.models.base import Model

__all__ = ["Model", "build", "check", "family"]


def family(name: str):
    """The module of the family `name` (config.model.name)."""
    if not name.isidentifier() or name == "base":
        raise ValueError(f"config.model.name={name!r} is not a model family")
    try:
        return importlib.import_module(f"deep_image.models.{name}")
    except ModuleNotFoundError:
        raise ValueError(f"config.model.name={name!r}: there is no deep_image/models/{name}.py"
                         " (families: vgg, resnet)") from None


def check(model_config) -> None:
    """ValueError naming a model setting the chosen family cannot run."""
    family(model_config.name).check(model_config)


def build(model_config, num_classes: int, input_size: int) -> Model:
    """The model a config's `model` section describes, for `num_classes` and square inputs."""
    return family(model_config.name).build(model_config, num_classes, input_size)
