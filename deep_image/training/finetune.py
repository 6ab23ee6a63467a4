"""Starting a run from another run's weights (§5: pre-train on ILSVRC, then fine-tune).

`config.init_from` names a workdir (its latest checkpoint is used) or a `checkpoints/`
directory, e.g. the output of `deep_image.tools.import_weights`. Layers are matched by name and
shape; the classifier (the model's: VGG's fc3, ResNet's fc) is re-initialized when the classes
differ (by count, or by the names the pre-trained checkpoint records), and the log says so.
BatchNorm statistics come with the weights.
Any other mismatch is an error: fine-tune with the pre-trained model's variant, width and crop.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from deep_image.config import ConfigError
from deep_image.training.checkpoint import Checkpointer, checkpoint_dir


def load_pretrained(init_from: str) -> tuple[dict, dict, int, list | None]:
    """(params, stats, step, class names or None) of the latest checkpoint under `init_from`."""
    path = checkpoint_dir(init_from)
    if not os.path.isdir(path):
        path = init_from
    if not os.path.isdir(path):
        raise ConfigError(f"config.init_from={init_from!r} is not a directory; name a trained "
                          "workdir or the output of deep_image.tools.import_weights")
    ckpt = Checkpointer(path, read_only=True)
    step = ckpt.latest_step()
    if step is None:
        raise ConfigError(f"config.init_from={init_from!r} holds no complete checkpoint")
    params, stats = ckpt.restore_weights(step)
    return params, stats, step, (ckpt.meta(step) or {}).get("class_names")


def merge(fresh: dict, loaded: dict, source: str, classifier: str,
          same_classes: bool = True) -> dict:
    """`fresh` with every layer taken from `loaded`, but the classifier when it has another
    class count or (`same_classes=False`) other classes."""
    out = {}
    for layer, leaves in fresh.items():
        if layer not in loaded:
            raise ConfigError(f"config.init_from={source!r} has no layer {layer}: pre-trained "
                              "with another model variant?")
        out[layer] = {}
        for name, value in leaves.items():
            got = np.asarray(loaded[layer][name])
            if layer == classifier and not same_classes and got.shape == value.shape:
                logging.warning("init_from: re-initializing the classifier %s/%s: the "
                                "pre-trained model has other classes than this dataset",
                                layer, name)
                out[layer][name] = value
            elif got.shape == value.shape:
                out[layer][name] = got.astype(value.dtype)
            elif layer == classifier:
                logging.warning("init_from: re-initializing the classifier %s/%s: pre-trained "
                                "shape %s, this dataset needs %s", layer, name, got.shape,
                                value.shape)
                out[layer][name] = value
            else:
                raise ConfigError(
                    f"config.init_from={source!r}: {layer}/{name} has shape {got.shape}, this "
                    f"model needs {tuple(value.shape)}; use the pre-trained model's variant, "
                    "width and crop size")
    return out


def warm_start(state, params_shardings, layout, init_from: str, canonical, model,
               class_names: list[str] | None = None):
    """`state` with its parameters and statistics from `init_from` (its fresh classifier kept
    where the classes differ), in `layout`'s stored form; `canonical` maps stored parameters to
    whole, replicated ones. The merge happens on the host; each device receives its blocks."""
    loaded, loaded_stats, step, pretrained_classes = load_pretrained(init_from)
    fresh = jax.device_get(canonical(state.params))
    same = (pretrained_classes is None or class_names is None
            or list(pretrained_classes) == list(class_names))
    stored = layout.to_stored(merge(fresh, loaded, init_from, model.classifier,
                                    same_classes=same))
    stats = merge(jax.device_get(state.stats), loaded_stats, init_from, model.classifier)
    logging.info("initialized from %s (step %d)", init_from, step)
    place = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])  # noqa
    params = jax.tree.map(place, stored, params_shardings)
    return state.replace(params=params,
                         stats=jax.tree.map(place, stats,
                                            jax.tree.map(lambda a: a.sharding, state.stats)),
                         ema=None if state.ema is None else jax.tree.map(jnp.copy, params))
