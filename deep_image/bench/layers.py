"""Where a training step's time goes, layer by layer, in JAX (XLA) and PyTorch on the same CPU:

    python -m deep_image.bench.layers [--variant=vgg11] [--width=0.25] [--crop=64] [--batch=32]
        [--json=PATH]

For every convolution and FC layer of the network, at the shapes the train step sees, times
the forward pass, the gradient with respect to the input and the gradient with respect to the
weights (what a training step computes per layer) as separately compiled functions in JAX and
as eager PyTorch (channels_last, oneDNN) ops, and prints them side by side with their ratio.
The sum is compared with one whole train step of each framework, so the table says which ops
carry the gap. Run it with nothing else on the machine.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from deep_image import constants
from deep_image.models import vgg

flags.DEFINE_enum("variant", "vgg11", list(constants.CONVS_PER_BLOCK), "Model.")
flags.DEFINE_float("width", 0.25, "Width multiplier.")
flags.DEFINE_integer("crop", 64, "Input size.")
flags.DEFINE_integer("batch", 32, "Batch.")
flags.DEFINE_integer("repeats", 20, "Timed calls per op (after 3 warm-up calls).")
flags.DEFINE_string("json", None, "Write the rows here.")
FLAGS = flags.FLAGS


def layer_shapes(variant: str, width: float, crop: int, batch: int, num_classes: int = 16):
    """(name, kind, input shape NHWC or NC, kernel shape HWIO or IO) of every weight layer."""
    out, cin, side = [], 3, crop
    for b, n in enumerate(constants.CONVS_PER_BLOCK[variant]):
        cout = vgg.scaled(constants.BLOCK_CHANNELS[b], width)
        for i in range(n):
            out.append((f"conv{b + 1}_{i + 1}", "conv", (batch, side, side, cin),
                        (3, 3, cin, cout)))
            cin = cout
        side //= constants.POOL_STRIDE
    fc = vgg.scaled(constants.FC_WIDTH, width)
    dims = [side * side * cin, fc, fc, num_classes]
    for i in range(3):
        out.append((f"fc{i + 1}", "fc", (batch, dims[i]), (dims[i], dims[i + 1])))
    return out


def _timed(fn, *args) -> float:
    for _ in range(3):
        jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(FLAGS.repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / FLAGS.repeats * 1e3


def jax_times(kind, x_shape, w_shape) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape) * 0.05, jnp.float32)
    if kind == "conv":
        def f(x, w):
            return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
        def f(x, w):
            return x @ w
    y = f(x, w)
    g = jnp.ones_like(y)
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
    return {"forward": _timed(fwd, x, w), "grad_input": _timed(dx, x, w, g),
            "grad_weights": _timed(dw, x, w, g)}


def torch_times(kind, x_shape, w_shape) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)

    def timed(fn):
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(FLAGS.repeats):
            fn()
        return (time.perf_counter() - t0) / FLAGS.repeats * 1e3
    if kind == "conv":
        n, h, w_, c = x_shape
        layer = torch.nn.Conv2d(c, w_shape[3], 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(n, c, h, w_).to(memory_format=torch.channels_last)
    else:
        layer = torch.nn.Linear(w_shape[0], w_shape[1])
        x = torch.randn(*x_shape)
    x.requires_grad_(True)
    y = layer(x)
    g = torch.ones_like(y)

    def fwd():
        with torch.no_grad():
            layer(x)

    def dx():
        return torch.autograd.grad(layer(x), x, g, retain_graph=False)

    def dw():
        return torch.autograd.grad(layer(x), layer.weight, g, retain_graph=False)
    forward = timed(fwd)
    # autograd.grad re-runs the forward: subtract it to leave the backward op itself
    return {"forward": forward, "grad_input": max(timed(dx) - forward, 0.0),
            "grad_weights": max(timed(dw) - forward, 0.0)}


def main(argv):
    del argv
    rows = []
    for name, kind, x_shape, w_shape in layer_shapes(FLAGS.variant, FLAGS.width, FLAGS.crop,
                                                     FLAGS.batch):
        row = {"layer": name, "input": list(x_shape), "kernel": list(w_shape),
               "jax": jax_times(kind, x_shape, w_shape),
               "torch": torch_times(kind, x_shape, w_shape)}
        rows.append(row)
    print(f"{FLAGS.variant} x{FLAGS.width:g} at {FLAGS.crop}px, batch {FLAGS.batch}, float32, "
          f"{jax.devices()[0].device_kind}: milliseconds per op (JAX / PyTorch)")
    print(f"{'layer':<9}{'input':>18}  {'forward':>16}{'grad input':>16}{'grad weights':>16}")
    totals = {"jax": 0.0, "torch": 0.0}
    for r in rows:
        cells = []
        for op in ("forward", "grad_input", "grad_weights"):
            j = r["jax"][op]
            t = r["torch"][op] if r["torch"] else float("nan")
            cells.append(f"{j:7.2f}/{t:6.2f}")
            totals["jax"] += j
            totals["torch"] += t if r["torch"] else 0.0
        print(f"{r['layer']:<9}{'x'.join(map(str, r['input'])):>18}  " + "".join(
            f"{c:>16}" for c in cells))
    print(f"sum of ops: JAX {totals['jax']:.1f} ms, PyTorch {totals['torch']:.1f} ms")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"rows": rows, "totals_ms": totals}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
