"""Models. They know layer names and shapes, never meshes, data or training."""

from deep_image.models.functional import Model, build
from deep_image.models.vgg import VARIANTS, VGG

__all__ = ["VARIANTS", "VGG", "Model", "build"]
