"""Convert torchvision's ImageNet-trained VGG-16/19 or ResNet-18/50 weights into a checkpoint
that `config.init_from` (and evaluate / predict) accepts:

    python -m deep_image.tools.import_weights --from=torchvision --variant=vgg16 IN.pth OUT_DIR
    python -m deep_image.tools.import_weights --variant=resnet50 resnet50-11ad3fa6.pth OUT_DIR

IN.pth is the state dict you downloaded (e.g. vgg16-397923af.pth). It is read with
`torch.load(weights_only=True)`: tensors only, never arbitrary pickled objects. Layouts:
conv kernels OIHW -> HWIO; FC weights (out, in) -> (in, out); FC1's input is torchvision's
NCHW feature map flattened as (C, H, W), ours is NHWC flattened as (H, W, C), so FC1's rows are
permuted accordingly. ResNets: module `layer1.0.conv1` becomes layer `layer1_0_conv1`;
BatchNorm running statistics go into the state's statistics. OUT_DIR gets `checkpoints/0/` and
a `config.json` (ImageNet, 224 crops, torchvision's mean/std normalization, also our default).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import sys

import numpy as np
from absl import app, flags

from deep_image import config as config_lib
from deep_image import constants

flags.DEFINE_enum("from", "torchvision", ["torchvision"], "Where the weights come from.")
flags.DEFINE_enum("variant", None, [*constants.CONVS_PER_BLOCK, "resnet18", "resnet50"],
                  "Model variant.")
flags.DEFINE_string("classes", None, "Optional file with one class name per line.")
FLAGS = flags.FLAGS


class WeightImportError(ValueError):
    """Weights that cannot be converted: the message says why."""


def _indexed(state: dict, prefix: str, suffix: str) -> list[tuple[int, np.ndarray]]:
    rx = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.{suffix}$")
    found = [(int(m.group(1)), v) for k, v in state.items() if (m := rx.match(k))]
    return sorted(found, key=lambda kv: kv[0])


def convert_torchvision(state: dict, variant: str) -> tuple[dict, dict]:
    """(params in our layout, model facts: width, input_size, num_classes)."""
    convs_w, convs_b = _indexed(state, "features", "weight"), _indexed(state, "features", "bias")
    fcs_w, fcs_b = (_indexed(state, "classifier", "weight"),
                    _indexed(state, "classifier", "bias"))
    names = [f"conv{b + 1}_{i + 1}" for b, n in enumerate(constants.CONVS_PER_BLOCK[variant])
             for i in range(n)]
    if len(convs_w) != len(names) or len(fcs_w) != 3:
        raise WeightImportError(f"the state dict has {len(convs_w)} conv and {len(fcs_w)} FC layers; "
                           f"{variant} has {len(names)} and 3 (is it torchvision's "
                           f"{variant}, without batch norm?)")
    params = {}
    for name, (_, w), (_, b) in zip(names, convs_w, convs_b):
        params[name] = {"kernel": np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0)),
                        "bias": np.asarray(b)}
    channels = params[names[-1]]["kernel"].shape[-1]
    w1 = np.asarray(fcs_w[0][1])
    side = math.isqrt(w1.shape[1] // channels)
    if side * side * channels != w1.shape[1]:
        raise WeightImportError(f"FC1 takes {w1.shape[1]} inputs, not a square map of {channels} "
                           "channels")
    k1 = w1.reshape(-1, channels, side, side).transpose(2, 3, 1, 0).reshape(-1, w1.shape[0])
    params["fc1"] = {"kernel": np.ascontiguousarray(k1), "bias": np.asarray(fcs_b[0][1])}
    for i in (1, 2):
        params[f"fc{i + 1}"] = {"kernel": np.ascontiguousarray(np.asarray(fcs_w[i][1]).T),
                                "bias": np.asarray(fcs_b[i][1])}
    width = params["conv1_1"]["kernel"].shape[-1] / constants.BLOCK_CHANNELS[0]
    facts = {"width": width, "input_size": side * 2 ** 5,
             "num_classes": params["fc3"]["kernel"].shape[1]}
    return {k: {n: v.astype(np.float32) for n, v in d.items()} for k, d in params.items()}, facts


def convert_torchvision_resnet(state: dict, variant: str) -> tuple[dict, dict, dict]:
    """(params, BatchNorm statistics, model facts) of a torchvision ResNet state dict: each
    module `a.b.c` becomes layer `a_b_c`; conv weights OIHW -> HWIO; BatchNorm weight/bias ->
    scale/bias parameters and running_mean/var -> mean/var statistics; fc (out, in) -> (in,
    out)."""
    from deep_image.models import resnet
    params, stats = {}, {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        layer = module.replace(".", "_")
        v = np.asarray(value, np.float32)
        if leaf == "num_batches_tracked":
            continue
        if layer == "fc":
            params["fc"] = {**params.get("fc", {}),
                            **({"kernel": np.ascontiguousarray(v.T)} if leaf == "weight"
                               else {"bias": v})}
        elif v.ndim == 4:
            params[layer] = {"kernel": np.ascontiguousarray(v.transpose(2, 3, 1, 0))}
        elif leaf in ("weight", "bias"):
            params.setdefault(layer, {})["scale" if leaf == "weight" else "bias"] = v
        elif leaf in ("running_mean", "running_var"):
            stats.setdefault(layer, {})["mean" if leaf == "running_mean" else "var"] = v
        else:
            raise WeightImportError(f"unexpected entry {key} for torchvision's {variant}")
    block = resnet.STAGES[variant][0]
    if ("layer1_0_conv3" in params) != (block == "bottleneck") or "fc" not in params:
        raise WeightImportError(f"the state dict is not torchvision's {variant} (its blocks "
                                "or its fc layer differ); pass the matching --variant")
    width = params["conv1"]["kernel"].shape[-1] / 64
    facts = {"width": width, "input_size": constants.CROP_SIZE,
             "num_classes": params["fc"]["kernel"].shape[1]}
    return params, stats, facts


def load_state_dict(path: str) -> dict:
    import torch
    if not os.path.isfile(path):
        raise WeightImportError(f"{path} does not exist: pass the .pth file of the weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # pickled modules or code: refused by weights_only
        what = ("a pickled model object (torch.save(model)), which is never unpickled here"
                if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e)
                else f"not a file torch.load reads ({type(e).__name__})")
        raise WeightImportError(
            f"{path} is {what}: save the weights alone with "
            "torch.save(model.state_dict(), 'weights.pth') and import that file") from None
    if not isinstance(state, dict):
        raise WeightImportError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def write_checkpoint(out_dir: str, params: dict, facts: dict, variant: str,
                     class_names: list[str], stats: dict | None = None) -> None:
    from deep_image.training.checkpoint import Checkpointer, checkpoint_dir, write_weights
    ckpt = Checkpointer(checkpoint_dir(out_dir), async_save=False)
    held = ckpt.latest_step() is not None
    ckpt.close()
    if held:
        raise WeightImportError(f"{out_dir} already holds a checkpoint; choose a new OUT_DIR")
    c = config_lib.base()
    c.model.name = "resnet" if variant.startswith("resnet") else "vgg"
    c.model.variant, c.model.width = variant, facts["width"]
    c.data.source, c.data.train_split, c.data.val_split = "imagenet", "train", ""
    c.data.eval_split = "validation"
    c.data.crop = facts["input_size"]
    c.data.scale = max(c.data.crop, constants.TRAIN_SCALES[0])
    c.data.resize = "shorter_side"     # torchvision: shorter side 256, centre crop 224
    write_weights(out_dir, params, stats or {}, class_names, imported_from="torchvision")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(c.to_json(indent=2))


def main(argv):
    if len(argv) != 3:
        raise app.UsageError("usage: import_weights --variant=vgg16 IN.pth OUT_DIR")
    src, out_dir = argv[1], argv[2]
    if not FLAGS.variant:
        raise app.UsageError("--variant is required (vgg16, vgg19, resnet18 or resnet50)")
    try:
        stats = {}
        if FLAGS.variant.startswith("resnet"):
            params, stats, facts = convert_torchvision_resnet(load_state_dict(src),
                                                              FLAGS.variant)
        else:
            params, facts = convert_torchvision(load_state_dict(src), FLAGS.variant)
        names = ([l.strip() for l in open(FLAGS.classes) if l.strip()] if FLAGS.classes
                 else [f"class {i}" for i in range(facts["num_classes"])])
        if len(names) != facts["num_classes"]:
            raise WeightImportError(f"{FLAGS.classes} names {len(names)} classes, the weights have "
                               f"{facts['num_classes']}")
        write_checkpoint(out_dir, params, facts, FLAGS.variant, names, stats)
    except (WeightImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    n = sum(v.size for d in params.values() for v in d.values())
    print(f"wrote {out_dir}: {FLAGS.variant}, {n:,} parameters, {facts['num_classes']} classes, "
          f"{facts['input_size']}px input; use --config.init_from={out_dir}")


if __name__ == "__main__":
    from deep_image import errors
    errors.run_app(main, library_level=logging.ERROR)
