"""ResNet-18/50 (He et al. 2016) in torchvision's layout, with BatchNorm: the second model family
and today's standard fine-grained baseline (ResNet-50 at 448 on CUB: 84-86% top-1 published).

Layers are named as torchvision's state dict with dots as underscores (`conv1`, `bn1`,
`layer2_0_conv3`, `layer2_0_downsample_0`, `fc`), so weights import one to one
(tools/import_weights.py). A bottleneck block (ResNet-50) is 1x1, 3x3 (carrying the stride, as
torchvision's v1.5), 1x1 with BatchNorm after each and a projection where the shape changes; a
basic block (ResNet-18) is two 3x3. `width` scales every channel count (CPU tests use 1/16).

BatchNorm's running mean and variance are statistics, not parameters: they live beside the
parameters in the train state (`abstract_stats`), are updated only when a step trains them
(`update_stats`; the fine-tuning modes that freeze the backbone use the running statistics,
as a frozen BatchNorm should) and are checkpointed with the state. Across devices the batch
statistics are those of the global batch (`batch_axes`: a mean over the devices of each
device's sums, i.e. cross-device BatchNorm), so every parallel layout computes what one
device computes on the whole batch; the running statistics are then the same on every device.

The head is the one FC layer after global average pooling. Dense testing (§5.1) runs the
network on the whole image at each scale: the FC layer applied at every position of the last
feature map and averaged equals pooling first (the layer is linear), so it is the same code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from deep_image.models.base import BLOCK_OUTPUT, Model, rematerialized

# variant -> (block, blocks per stage)
STAGES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
VARIANTS = tuple(STAGES)
EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPS, BN_MOMENTUM = 1e-5, 0.1     # torchvision's: running = (1 - m) running + m batch
STATS_SCOPE = "batch_statistics"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class BatchNorm(nnx.Module):
    """torchvision's BatchNorm2d: scale/bias parameters, mean/var statistics."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))

    def __call__(self, x, *, batch: bool, axes=None):
        """`batch`: normalize by this batch's statistics (those of the global batch over
        `axes`) and update the running ones; else by the running ones."""
        xf = x.astype(jnp.float32)
        if batch:
            # two passes (the mean, then the mean squared deviation from it): E[x^2] - E[x]^2
            # cancels catastrophically in float32 when a channel's variance is small next to
            # its mean, and the error is then amplified by rsqrt(var + eps)
            with jax.named_scope(STATS_SCOPE):   # the HLO names the statistics' reductions
                n = jnp.asarray(xf.shape[0] * xf.shape[1] * xf.shape[2], jnp.float32)
                total = lambda v: jax.lax.psum(v, axes) if axes else v   # noqa: E731
                n = total(n)
                mean = total(jnp.sum(xf, (0, 1, 2))) / n       # of the global batch
                var = total(jnp.sum(jnp.square(xf - mean), (0, 1, 2))) / n
            self.mean[...] = (1 - BN_MOMENTUM) * self.mean[...] + BN_MOMENTUM * mean
            self.var[...] = ((1 - BN_MOMENTUM) * self.var[...]
                             + BN_MOMENTUM * var * n / jnp.maximum(n - 1, 1))   # unbiased
        else:
            mean, var = self.mean[...], self.var[...]
        y = (xf - mean) * jax.lax.rsqrt(var + BN_EPS) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class ResNet(nnx.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages, global average pool, FC."""

    def __init__(self, variant: str, num_classes: int, *, width: float = 1.0,
                 dtype: str = "float32", head_init: str = "he", rngs: nnx.Rngs):
        block, counts = STAGES[variant]
        compute = _DTYPES[dtype]
        he = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")   # torchvision's
        conv = functools.partial(nnx.Conv, use_bias=False, dtype=compute,
                                 param_dtype=jnp.float32, kernel_init=he, rngs=rngs)
        self.compute_dtype = compute
        stem = scaled(64, width)
        self.conv1 = conv(3, stem, (7, 7), strides=2, padding=3)
        self.bn1 = BatchNorm(stem)
        self._blocks = []          # per block: (prefix, stride, has projection)
        cin = stem
        for stage, count in enumerate(counts):
            planes = scaled(64 * 2 ** stage, width)
            cout = planes * EXPANSION[block]
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                p = f"layer{stage + 1}_{i}"
                if block == "bottleneck":
                    shapes = [(cin, planes, 1, 1), (planes, planes, 3, stride),
                              (planes, cout, 1, 1)]
                else:
                    shapes = [(cin, planes, 3, stride), (planes, cout, 3, 1)]
                for j, (a, b, k, s) in enumerate(shapes):
                    setattr(self, f"{p}_conv{j + 1}", conv(a, b, (k, k), strides=s,
                                                           padding=k // 2))
                    setattr(self, f"{p}_bn{j + 1}", BatchNorm(b))
                project = stride != 1 or cin != cout
                if project:
                    setattr(self, f"{p}_downsample_0", conv(cin, cout, (1, 1), strides=stride,
                                                            padding=0))
                    setattr(self, f"{p}_downsample_1", BatchNorm(cout))
                self._blocks.append((p, len(shapes), project))
                cin = cout
        self.features_dim = cin
        init = nnx.initializers.zeros_init() if head_init == "zeros" else \
            nnx.initializers.he_normal()
        self.fc = nnx.Linear(cin, num_classes, dtype=compute, param_dtype=jnp.float32,
                             kernel_init=init, bias_init=nnx.initializers.zeros_init(),
                             rngs=rngs)

    def features(self, x, *, batch: bool = False, axes=None):
        """NHWC images of any size -> globally average-pooled features [N, C]."""
        bn = functools.partial(BatchNorm.__call__, batch=batch, axes=axes)
        x = jax.nn.relu(bn(self.bn1, self.conv1(x.astype(self.compute_dtype))))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for p, n, project in self._blocks:
            y = x
            for j in range(1, n + 1):
                y = bn(getattr(self, f"{p}_bn{j}"), getattr(self, f"{p}_conv{j}")(y))
                if j < n:
                    y = jax.nn.relu(y)
            if project:
                x = bn(getattr(self, f"{p}_downsample_1"), getattr(self, f"{p}_downsample_0")(x))
            x = checkpoint_name(jax.nn.relu(x + y), BLOCK_OUTPUT)
        return jnp.mean(x, axis=(1, 2))


class ResNetModel(Model):
    """ResNet as the package sees it (models/base.py): features = everything up to the global
    pool (BatchNorm statistics in `stats`), head = the FC layer (splittable over the FC axis)."""

    classifier = "fc"
    fc_layers = head_layers = ("fc",)

    def __init__(self, model_config, num_classes: int, input_size: int):
        self.dropout_rate = 0.0          # torchvision's ResNet has no dropout
        self.compute_dtype = _DTYPES[model_config.dtype]
        self.remat = model_config.get("remat", "none")
        make = functools.partial(ResNet, model_config.variant, num_classes,
                                 width=model_config.width, dtype=model_config.dtype,
                                 head_init=model_config.head_init)
        super().__init__(make, num_classes=num_classes, input_size=input_size,
                         variant=model_config.variant)

    def forward_dtypes(self):
        """Conv kernels and the FC layer in the compute dtype; BatchNorm's scale and bias in
        float32 (BatchNorm normalizes in float32)."""
        return {k: {n: self.compute_dtype if n == "kernel" or k == "fc" else jnp.float32
                    for n in v} for k, v in self.abstract_params.items()}

    def _backbone(self, params, stats):
        return self.module({**{"fc": self.abstract_params["fc"]},
                            **{k: v for k, v in params.items() if k != "fc"}}, stats)

    def features(self, params, images, *, stats=None, train=False, update_stats=False,
                 batch_axes=None):
        def run(params, stats, images):
            module = self._backbone(params, stats)
            x = module.features(images, batch=train and update_stats, axes=batch_axes)
            return x, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
        return rematerialized(run, self.remat)(params, stats, images)

    def head(self, params, x, *, keys=None, rate=0.0, split=None, axis=None, rows=None):
        from jax import lax
        kind = (split or {}).get("fc", "whole")
        w, b = params["fc"]["kernel"].astype(x.dtype), params["fc"]["bias"].astype(x.dtype)
        if kind == "rows":      # this device's input features; outputs summed over the axis
            x = lax.dynamic_slice_in_dim(x, lax.axis_index(axis) * w.shape[0], w.shape[0], 1)
            return (lax.psum(x @ w, axis) + b).astype(jnp.float32)
        y = x @ w + b
        if kind == "columns":
            y = lax.all_gather(y, axis, axis=1, tiled=True, to="invarying")
        return y.astype(jnp.float32)

    def dense_scores(self, params, images, *, stats=None):
        if images.shape[1] < self.input_size or images.shape[2] < self.input_size:
            raise ValueError(f"dense testing needs images of at least {self.input_size}px "
                             f"(the training crop), got {images.shape[1]}x{images.shape[2]}")
        x, _ = self.features(params, images, stats=stats)
        return self.head(params, x)


def check(config) -> None:
    if config.model.variant not in VARIANTS:
        raise ValueError(f"config.model.variant={config.model.variant!r} is not a ResNet; "
                         f"choose one of {', '.join(VARIANTS)}")
    if config.data.crop < 32:
        raise ValueError(f"config.data.crop={config.data.crop}: a ResNet halves its input five "
                         "times; use crops of at least 32 pixels")
    if config.model.dtype not in _DTYPES:
        raise ValueError(f"config.model.dtype={config.model.dtype!r}; choose float32 or "
                         "bfloat16")


def build(model_config, num_classes: int, input_size: int) -> ResNetModel:
    return ResNetModel(model_config, num_classes, input_size)
