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

import jax
import jax.numpy as jnp
from flax import nnx

from deep_image import constants

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
                 dropout_rate: float = constants.DROPOUT_RATE, head_init: str = "he",
                 rngs: nnx.Rngs):
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
        self.dropout = nnx.Dropout(dropout_rate)
        self.compute_dtype = compute

    def features(self, x: jax.Array) -> jax.Array:
        """The conv part: NHWC images -> the last pooled feature map."""
        x = x.astype(self.compute_dtype)
        for name, closes_block in self._convs:
            x = jax.nn.relu(getattr(self, name)(x))
            if closes_block:
                x = nnx.max_pool(x, (constants.POOL_WINDOW,) * 2,
                                 strides=(constants.POOL_STRIDE,) * 2)
        return x

    def __call__(self, x: jax.Array, *, train: bool = False,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Float32 logits. `train` turns dropout on and then needs `dropout_key`."""
        if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
            raise ValueError(f"VGG built for {self.input_size}x{self.input_size} inputs got "
                             f"{x.shape[1]}x{x.shape[2]}")
        x = self.features(x)
        x = x.reshape(x.shape[0], -1)
        k1 = k2 = None
        if train:
            k1, k2 = jax.random.split(dropout_key)
        x = self.dropout(jax.nn.relu(self.fc1(x)), deterministic=not train, rngs=k1)
        x = self.dropout(jax.nn.relu(self.fc2(x)), deterministic=not train, rngs=k2)
        return self.fc3(x).astype(jnp.float32)


def dropout_slice(x, key, rate: float, global_shape, offsets):
    """Dropout of `x`, the block at `offsets` (one start index per dimension) of an array of
    `global_shape`: it draws the whole array's mask (as nnx.Dropout would, bit for bit) and
    keeps this block, so a split computation drops exactly what an unsplit one drops."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, p=keep, shape=tuple(global_shape))
    mask = jax.lax.dynamic_slice(mask, tuple(offsets), x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
