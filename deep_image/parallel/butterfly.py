"""Data parallelism as §3.1 describes it: butterfly synchronization and lazy update.

Inside `jax.shard_map`, over the owners of each parameter block (parallel/layout.py):
- `butterfly_sync`: each device's partial gradient of a block, flattened and padded, is split
  into N parts and device k receives the sum of part k (`lax.psum_scatter`: a reduce-scatter,
  not an all-reduce of the whole gradient). The optimizer then updates part k only.
- `lazy_gather`: the updated parts are all-gathered (`lax.all_gather`) where the forward pass
  needs the weights, at the start of the next step, inside the same compiled program, so XLA
  can overlap the gather of later layers with the compute of earlier ones (the lazy update).
  A weight the forward pass uses in the compute dtype (bfloat16 runs) is gathered in it: half
  the bytes, and the same forward pass (the model would round it there anyway). It is cast
  back to the stored float32 after the gather, so its gradient, the reduce-scatter and the
  update stay float32.
Small leaves (biases, BatchNorm scales: `LeafLayout.whole`) are kept whole on every owner:
their gradient is all-reduced (`lax.psum`), and nothing is gathered.
Both run under named scopes, so a compiled program's collectives say which they are
(bench/scaling.py counts their bytes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from deep_image.parallel.layout import Layout, LeafLayout

SYNC_SCOPE = "butterfly_sync"
GATHER_SCOPE = "lazy_gather"


def _gather_leaf(stored, lf: LeafLayout, dtype):
    if lf.whole:    # the same on every owner; each computes its own rows' gradient of it
        return lax.pcast(stored, lf.owner_axes, to="varying")
    if not lf.flat:
        return stored
    whole = lax.all_gather(stored.astype(dtype or stored.dtype), lf.owner_axes, axis=1,
                           tiled=True).astype(stored.dtype)
    return whole[0, :lf.local_size].reshape(lf.local_shape)


def _sync_leaf(grad, lf: LeafLayout):
    if lf.whole:
        return lax.psum(grad, lf.owner_axes)
    if not lf.flat:
        return grad
    flat = jnp.pad(grad.reshape(-1), (0, lf.owners * lf.part - lf.local_size))
    part = lax.psum_scatter(flat, lf.owner_axes, scatter_dimension=0, tiled=True)
    return part.reshape(1, lf.part)


def lazy_gather(stored_params, layout: Layout, dtypes=None):
    """This device's stored blocks -> the weights its forward pass uses (whole conv layers,
    this device's FC slices), in their stored dtype. `dtypes` ({layer: {name: dtype}}, e.g.
    `Model.forward_dtypes()`): the dtype each weight is gathered in (default: stored)."""
    dtypes = dtypes or {}
    with jax.named_scope(GATHER_SCOPE):
        return {k: {n: _gather_leaf(v, layout.leaves[k][n], dtypes.get(k, {}).get(n))
                    for n, v in leaves.items()}
                for k, leaves in stored_params.items()}


def butterfly_sync(grads, layout: Layout):
    """This device's partial gradients -> its owned parts of their sum (reduce-scatter)."""
    with jax.named_scope(SYNC_SCOPE):
        return {k: {n: _sync_leaf(g, layout.leaves[k][n]) for n, g in leaves.items()}
                for k, leaves in grads.items()}
