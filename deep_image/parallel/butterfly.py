"""Data parallelism as §3.1 describes it: butterfly synchronization and lazy update.

Every device holds 1/N of the global batch. After the backward pass each gradient is split
into N parts and device k reduces part k (`lax.psum_scatter`: a reduce-scatter, not an
all-reduce of the whole gradient). Device k then applies the optimizer to its own part only, so
parameters and optimizer state live as "owned parts": every leaf flattened, zero-padded to a
multiple of N and split N ways. The broadcast of the updated weights (`lax.all_gather`) is
deferred to where the next forward pass needs them, at the start of the next step, inside the
same compiled program, so XLA can overlap the gather of later layers with the compute of
earlier ones (the lazy update).

Everything here runs inside `jax.shard_map` over the `data` mesh axis, except the converters
between canonical parameters and owned parts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

AXIS = "data"


def part_size(shape, n: int) -> int:
    return math.ceil(math.prod(shape) / n)


def to_parts(tree, n: int):
    """Canonical leaves -> flat, zero-padded leaves of length n * part_size (outside shard_map)."""
    def one(x):
        flat = x.reshape(-1)
        return jnp.pad(flat, (0, n * part_size(x.shape, n) - flat.size))
    return jax.tree.map(one, tree)


def from_parts(parts, shapes):
    """Inverse of `to_parts`: `shapes` is a tree of ShapeDtypeStructs (outside shard_map)."""
    return jax.tree.map(lambda p, s: p[:math.prod(s.shape)].reshape(s.shape), parts, shapes)


def butterfly_sync(grads, axis: str = AXIS):
    """Each device's partial gradients -> this device's part of their sum (reduce-scatter)."""
    n = lax.axis_size(axis)

    def one(g):
        flat = g.reshape(-1)
        flat = jnp.pad(flat, (0, n * part_size(g.shape, n) - flat.size))
        return lax.psum_scatter(flat, axis, scatter_dimension=0, tiled=True)
    return jax.tree.map(one, grads)


def lazy_gather(parts, shapes, axis: str = AXIS):
    """This device's parts -> whole parameters (all-gather), where the forward pass needs them."""
    return jax.tree.map(
        lambda p, s: lax.all_gather(p, axis, tiled=True)[:math.prod(s.shape)].reshape(s.shape),
        parts, shapes)


def _param_leaf(path) -> tuple[str, str] | None:
    """(layer, name) of a params/opt_state leaf of a TrainState path, else None."""
    names = [str(getattr(k, "name", getattr(k, "key", ""))) for k in path]
    if ("params" in names or "opt_state" in names) and len(names) >= 2:
        return names[-2], names[-1]
    return None


def owned_specs(state):
    """PartitionSpecs of a state whose params/opt_state leaves are owned parts: P(data) for
    those 1-D leaves, replicated for everything else (step, rng, schedule scalars)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: P(AXIS) if _param_leaf(path) and getattr(leaf, "ndim", 0) == 1
        else P(), state)


# ----------------------------------------------------------------------------- model-data (§3.2)
# Conv layers stay data-parallel (owned parts, butterfly). FC weights are divided evenly among
# the devices: FC1 by output columns, FC2 and FC3 by input rows (so FC1's column slice feeds
# FC2 directly, and FC2/FC3 outputs are summed across devices). Each device computes its slice
# of every FC layer for the whole global batch, so FC gradients need no synchronization at all.
FC_SPECS = {
    ("fc1", "kernel"): P(None, AXIS), ("fc1", "bias"): P(AXIS),
    ("fc2", "kernel"): P(AXIS, None), ("fc2", "bias"): P(),
    ("fc3", "kernel"): P(AXIS, None), ("fc3", "bias"): P(),
}


def model_data_specs(state):
    """Conv leaves of params/opt_state: owned parts P(data); FC leaves: FC_SPECS; rest P()."""
    def spec(path, leaf):
        leaf_id = _param_leaf(path)
        if leaf_id and leaf_id[0].startswith("conv") and getattr(leaf, "ndim", 0) == 1:
            return P(AXIS)
        return FC_SPECS.get(leaf_id, P())
    return jax.tree_util.tree_map_with_path(spec, state)


def to_model_data(params, n: int):
    """Canonical params -> conv layers as owned parts, FC layers unchanged (sharded by specs)."""
    return {k: (to_parts(v, n) if k.startswith("conv") else v) for k, v in params.items()}


def from_model_data(params, shapes):
    return {k: (from_parts(v, shapes[k]) if k.startswith("conv") else v)
            for k, v in params.items()}
