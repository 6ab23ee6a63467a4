"""VGG-16 and VGG-19 as the paper uses them (§5.1, Figure 8), in Flax NNX.

13 (VGG-16) or 16 (VGG-19) 3x3 convolutions with padding 1 in five blocks, each block closed by a
2x2 stride-2 max-pool; then three fully-connected layers. ReLU follows every weight layer but the
last; dropout 0.5 follows FC1 and FC2. `width` scales every conv and FC width: the paper's
"larger" models (§5.1) are width > 1, the CPU models width < 1.

Parameters are named `conv{block}_{i}` and `fc{1,2,3}`, each with `kernel` (HWIO for convs,
(in, out) for FCs) and `bias`; sharding rules and weight import match on these paths. The model
knows nothing of meshes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from deep_image import constants
from deep_image.models.base import BLOCK_OUTPUT, Model, rematerialized

VARIANTS = tuple(constants.CONVS_PER_BLOCK)
NUM_POOLS = len(constants.BLOCK_CHANNELS)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def fc_input_side(input_size: int) -> int:
    """Side of the last feature map: `input_size` halved by each of the five pools."""
    side = input_size
    for _ in range(NUM_POOLS):
        side //= constants.POOL_STRIDE
    return side


def multiply_adds(variant: str, width: float, size: int, num_classes: int) -> int:
    """Forward multiply-adds of one image (VGG-16 at 224, 1000 classes: 15.47 G)."""
    total, cin, side = 0, 3, size
    for b, n in enumerate(constants.CONVS_PER_BLOCK[variant]):
        cout = scaled(constants.BLOCK_CHANNELS[b], width)
        for _ in range(n):
            total += side * side * constants.CONV_KERNEL ** 2 * cin * cout
            cin = cout
        side //= constants.POOL_STRIDE
    fc = scaled(constants.FC_WIDTH, width)
    return total + side * side * cin * fc + fc * fc + fc * num_classes


class VGG(nnx.Module):
    """VGG-16/19 classifier over NHWC images of side `input_size`."""

    def __init__(self, variant: str, num_classes: int, *, width: float = 1.0,
                 input_size: int = constants.CROP_SIZE, dtype: str = "float32",
                 head_init: str = "he", rngs: nnx.Rngs):
        if variant not in constants.CONVS_PER_BLOCK:
            raise ValueError(f"unknown model variant {variant!r}; choose one of {VARIANTS}")
        if dtype not in _DTYPES:
            raise ValueError(f"unknown compute dtype {dtype!r}; choose one of {tuple(_DTYPES)}")
        side = fc_input_side(input_size)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for {NUM_POOLS} 2x2 pools; "
                             f"use at least {2 ** NUM_POOLS}")
        self.variant, self.num_classes, self.width = variant, num_classes, width
        self.input_size = input_size
        compute = _DTYPES[dtype]
        he = nnx.initializers.he_normal()   # He et al. 2015, fan-in, for ReLU nets
        zeros = nnx.initializers.zeros_init()
        in_ch = 3
        # (name, closes_block): each block's last conv is followed by the max-pool.
        self._convs = []
        for b, n in enumerate(constants.CONVS_PER_BLOCK[variant]):
            out_ch = scaled(constants.BLOCK_CHANNELS[b], width)
            for i in range(n):
                name = f"conv{b + 1}_{i + 1}"
                setattr(self, name, nnx.Conv(
                    in_ch, out_ch, (constants.CONV_KERNEL,) * 2, padding=1, dtype=compute,
                    param_dtype=jnp.float32, kernel_init=he, bias_init=zeros, rngs=rngs))
                self._convs.append((name, i == n - 1))
                in_ch = out_ch
        fc = scaled(constants.FC_WIDTH, width)
        dims = [side * side * in_ch, fc, fc, num_classes]
        for i in range(3):
            # head_init="zeros": the classifier starts at zero (uniform posteriors, loss ln C)
            # instead of He-scaled logits that the first steps must first shrink
            init = zeros if i == 2 and head_init == "zeros" else he
            setattr(self, f"fc{i + 1}", nnx.Linear(
                dims[i], dims[i + 1], dtype=compute, param_dtype=jnp.float32,
                kernel_init=init, bias_init=zeros, rngs=rngs))
        self.compute_dtype = compute

    def features(self, x: jax.Array) -> jax.Array:
        """The conv part: NHWC images -> the last pooled feature map."""
        x = x.astype(self.compute_dtype)
        for name, closes_block in self._convs:
            x = jax.nn.relu(getattr(self, name)(x))
            if closes_block:
                x = nnx.max_pool(x, (constants.POOL_WINDOW,) * 2,
                                 strides=(constants.POOL_STRIDE,) * 2)
                x = checkpoint_name(x, BLOCK_OUTPUT)   # config.model.remat
        return x


FC_LAYERS = ("fc1", "fc2", "fc3")


class VGGModel(Model):
    """VGG as the package sees it (models/base.py): features = the conv layers, head = FC1-FC3
    (§3.2 splits them over the FC axis), dense scores = the FC layers as convolutions."""

    classifier = "fc3"
    fc_layers = head_layers = FC_LAYERS

    def __init__(self, model_config, num_classes: int, input_size: int):
        self.dropout_rate = model_config.dropout_rate
        self.compute_dtype = _DTYPES[model_config.dtype]
        self.remat = model_config.get("remat", "none")
        make = functools.partial(VGG, model_config.variant, num_classes,
                                 width=model_config.width, input_size=input_size,
                                 dtype=model_config.dtype, head_init=model_config.head_init)
        super().__init__(make, num_classes=num_classes, input_size=input_size,
                         variant=model_config.variant)

    def forward_dtypes(self):
        """Every weight, conv and FC, kernel and bias, is computed in the compute dtype."""
        return {k: {n: self.compute_dtype for n in v} for k, v in self.abstract_params.items()}

    def _convs_only(self, params):
        """The module with these conv weights; FC leaves stay abstract (they may be split)."""
        return self.module({**{k: self.abstract_params[k] for k in FC_LAYERS},
                            **{k: v for k, v in params.items() if k not in FC_LAYERS}})

    def features(self, params, images, *, stats=None, train=False, update_stats=False,
                 batch_axes=None):
        x = rematerialized(lambda p, im: self._convs_only(p).features(im), self.remat)(
            params, images)
        return x.reshape(x.shape[0], -1), {}

    def head(self, params, x, *, keys=None, rate=0.0, split=None, axis=None, rows=None):
        """FC1-FC3, ReLU and dropout after FC1 and FC2, each layer computed as `split` says
        over `axis`: "columns" (this device's outputs), "rows" (this device's inputs, outputs
        summed over the axis) or "whole". `x` holds every input feature of the rows; the
        logits are the same on every device of the axis."""
        from jax import lax
        split = split or {}
        total, row0 = rows if rows is not None else (x.shape[0], 0)
        dt = x.dtype
        sliced = False                # x holds this device's columns only
        for i, layer in enumerate(FC_LAYERS):
            kind = split.get(layer, "whole")
            w, bias = params[layer]["kernel"].astype(dt), params[layer]["bias"].astype(dt)
            if kind == "rows":
                if not sliced:
                    x = lax.dynamic_slice_in_dim(x, lax.axis_index(axis) * w.shape[0],
                                                 w.shape[0], 1)
                x, sliced = lax.psum(x @ w, axis) + bias, False
            else:
                if sliced:
                    x = lax.all_gather(x, axis, axis=1, tiled=True,
                                       to="varying" if kind == "columns" else "invarying")
                x, sliced = x @ w + bias, kind == "columns"
            if i < 2:
                x = jax.nn.relu(x)
                if rate > 0.0:
                    width = x.shape[1] * (lax.axis_size(axis) if sliced else 1)
                    col0 = lax.axis_index(axis) * x.shape[1] if sliced else 0
                    x = dropout_slice(x, keys[i], rate, (total, width), (row0, col0))
        if sliced:
            x = lax.all_gather(x, axis, axis=1, tiled=True, to="invarying")
        return x.astype(jnp.float32)

    def dense_scores(self, params, images, *, stats=None):
        """§5.1 (OverFeat): FC1 becomes a k x k convolution over the last pooled map (k =
        input_size / 32), FC2 and FC3 1x1 convolutions, with the same weights; the score map is
        averaged over space. At exactly the training size it equals the net's logits."""
        if images.shape[1] < self.input_size or images.shape[2] < self.input_size:
            raise ValueError(f"dense testing needs images of at least {self.input_size}px "
                             f"(the training crop), got {images.shape[1]}x{images.shape[2]}")
        x = self._convs_only(params).features(images)
        kernels = fc_as_conv_kernels(params, x.shape[-1], fc_input_side(self.input_size))
        dn = ("NHWC", "HWIO", "NHWC")
        for i, (k, name) in enumerate(zip(kernels, FC_LAYERS)):
            x = jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), "VALID",
                                             dimension_numbers=dn)
            x = x + params[name]["bias"].astype(x.dtype)
            if i < 2:
                x = jax.nn.relu(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def fc_as_conv_kernels(params: dict, in_channels: int, side: int) -> list[jax.Array]:
    """FC kernels as HWIO conv kernels. FC1's input is the NHWC feature map flattened in
    (H, W, C) order, so its kernel reshapes directly to (side, side, C, out)."""
    k1 = params["fc1"]["kernel"]
    return [k1.reshape(side, side, in_channels, k1.shape[-1]),
            params["fc2"]["kernel"][None, None], params["fc3"]["kernel"][None, None]]


def check(config) -> None:
    """Raises ValueError on a VGG setting that cannot run."""
    if config.model.variant not in VARIANTS:
        raise ValueError(f"config.model.variant={config.model.variant!r} is not a model; "
                         f"choose one of {', '.join(VARIANTS)} (or another config.model.name)")
    if config.data.crop < 2 ** NUM_POOLS:
        raise ValueError(f"config.data.crop={config.data.crop}: VGG's five 2x2 pools need "
                         "crops of at least 32 pixels")


def build(model_config, num_classes: int, input_size: int) -> VGGModel:
    return VGGModel(model_config, num_classes, input_size)


def dropout_slice(x, key, rate: float, global_shape, offsets):
    """Dropout of `x`, the block at `offsets` (one start index per dimension) of an array of
    `global_shape`: it draws the whole array's mask (as nnx.Dropout would, bit for bit) and
    keeps this block, so a split computation drops exactly what an unsplit one drops. A row
    offset may also be a vector of row indices (the rows of a micro-batch spread over an FC
    group's devices: training/step.py's accumulation)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, p=keep, shape=tuple(global_shape))
    rows, col0 = offsets
    if jnp.ndim(rows) == 1:
        mask = jax.lax.dynamic_slice_in_dim(jnp.take(mask, rows, axis=0), col0, x.shape[1], 1)
    else:
        mask = jax.lax.dynamic_slice(mask, tuple(offsets), x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
