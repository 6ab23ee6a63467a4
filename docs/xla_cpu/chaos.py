"""How far from a kink ResNet-18's trajectory in tests/test_parallel.py sits: one device, the
test's config and batches, its initial weights scaled by (1 + eps * N(0, 1)) leaf by leaf; the
largest weight difference after each of 3 steps, and after the second step per layer.

    python docs/xla_cpu/chaos.py 1e-6 1e-7

Float sums in another order (8 devices, or another convolution library) move the weights by
~1e-7 per step. If eps = 1e-6 already moves them by ~1e-3 within 3 steps, a free-running
comparison of two such runs passes or fails by luck; tests/test_parallel.py compares each step
from the same state instead.
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from butterfly_equivalence import setup  # noqa: E402
from deep_image.parallel import mesh as mesh_lib  # noqa: E402
from deep_image.training import setup as setup_lib  # noqa: E402


def trajectory(config, batches, eps):
    one = setup_lib.build(config, 16, mesh=mesh_lib.make_mesh((("data", 1), ("model", 1)),
                                                              jax.devices()[:1]))
    leaves, tree = jax.tree.flatten(one.state.params)
    key = jax.random.PRNGKey(1)
    leaves = [x * (1 + eps * jax.random.normal(jax.random.fold_in(key, i), x.shape))
              for i, x in enumerate(leaves)]
    state = one.state.replace(params=jax.tree.unflatten(tree, leaves))
    out = []
    for b in batches:
        state, m = one.train_step(state, b)
        out.append((float(m["train/loss"]), jax.device_get(state.params)))
    return out


def main():
    config, batches = setup("data", "resnet")
    base = trajectory(config, batches, 0.0)
    for eps in [float(a) for a in sys.argv[1:]] or [1e-6, 1e-7]:
        moved = trajectory(config, batches, eps)
        diffs = [max(float(np.max(np.abs(a - b))) for a, b in
                     zip(jax.tree.leaves(x[1]), jax.tree.leaves(y[1])))
                 for x, y in zip(base, moved)]
        print(f"eps {eps:g}: largest weight difference after steps 1-3: "
              + ", ".join(f"{d:.1e}" for d in diffs)
              + f"; losses {[round(x[0], 6) for x in base]} vs {[round(y[0], 6) for y in moved]}")
        layers = {}
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(base[1][1]),
                                jax.tree.leaves(moved[1][1])):
            layer = str(getattr(path[0], "key", path[0]))
            layers[layer] = max(layers.get(layer, 0.0), float(np.max(np.abs(a - b))))
        print("  after step 2, by layer: " + ", ".join(f"{k} {v:.0e}" for k, v in layers.items()))


if __name__ == "__main__":
    main()
