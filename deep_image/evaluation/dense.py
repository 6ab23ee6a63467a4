"""Testing as the paper tests (§5.1): the trained VGG turned fully convolutional, applied to the
whole test image at several scales and flipped, softmax posteriors averaged.

"A transformed network with only convolutional layers is used to test images and the class
scores from the feature map of the last layer are averaged" (OverFeat-style): FC1 becomes a
k x k convolution over the last pooled feature map (k = input_size / 32, 7 for 224 crops), FC2
and FC3 become 1x1 convolutions, with the same weights. At exactly the training input size the
score map is 1x1 and equals the original net's logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from deep_image.models import vgg


def fc_as_conv_kernels(params: dict, in_channels: int, side: int) -> list[jax.Array]:
    """FC kernels as HWIO conv kernels. Our FC1 input is the NHWC feature map flattened in
    (H, W, C) order, so its kernel reshapes directly to (side, side, C, out)."""
    k1 = params["fc1"]["kernel"]
    return [k1.reshape(side, side, in_channels, k1.shape[-1]),
            params["fc2"]["kernel"][None, None], params["fc3"]["kernel"][None, None]]


def dense_scores(model, params: dict, images: jax.Array) -> jax.Array:
    """Class scores of NHWC images of any size >= the model's input size, averaged over the
    score map: (N, num_classes) float32."""
    side = vgg.fc_input_side(model.input_size)
    if images.shape[1] < model.input_size or images.shape[2] < model.input_size:
        raise ValueError(f"dense testing needs images of at least {model.input_size}px (the "
                         f"training crop), got {images.shape[1]}x{images.shape[2]}")
    module = model.module(params)
    x = module.features(images)
    kernels = fc_as_conv_kernels(params, x.shape[-1], side)
    dn = ("NHWC", "HWIO", "NHWC")
    for i, (k, name) in enumerate(zip(kernels, ("fc1", "fc2", "fc3"))):
        x = jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), "VALID",
                                         dimension_numbers=dn)
        x = x + params[name]["bias"].astype(x.dtype)
        if i < 2:
            x = jax.nn.relu(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def posteriors(model, params: dict, images: jax.Array, *, dense: bool,
               flip: bool) -> jax.Array:
    """Softmax posteriors of one batch at one scale, averaged with the mirrored batch when
    `flip` (§5.1: "The horizontal flipping of the images are also tested and combined")."""
    def one(x):
        logits = dense_scores(model, params, x) if dense else model.apply(params, x)
        return jax.nn.softmax(logits, axis=-1)

    probs = one(images)
    if flip:
        probs = 0.5 * (probs + one(images[:, :, ::-1]))
    return probs
