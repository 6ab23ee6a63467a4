"""Testing as the paper tests (§5.1): the trained network made fully convolutional, applied to
the whole test image at several scales and flipped, softmax posteriors averaged.

"A transformed network with only convolutional layers is used to test images and the class
scores from the feature map of the last layer are averaged" (OverFeat-style). Each model says
how it does this (`Model.dense_scores`: VGG turns FC1 into a k x k convolution and FC2/FC3
into 1x1 convolutions with the same weights; a globally pooled ResNet pools the whole image's
map); at exactly the training input size the scores equal the net's logits.
"""

from __future__ import annotations

import jax


def posteriors(model, params: dict, images: jax.Array, *, dense: bool, flip: bool,
               stats: dict | None = None) -> jax.Array:
    """Softmax posteriors of one batch at one scale, averaged with the mirrored batch when
    `flip` (§5.1: "The horizontal flipping of the images are also tested and combined")."""
    def one(x):
        logits = (model.dense_scores(params, x, stats=stats) if dense
                  else model.apply(params, x, stats=stats))
        return jax.nn.softmax(logits, axis=-1)

    probs = one(images)
    if flip:
        probs = 0.5 * (probs + one(images[:, :, ::-1]))
    return probs
