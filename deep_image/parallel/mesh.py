"""The device mesh from `config.mesh` and the shardings of batches and parameters."""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


class MeshError(ValueError):
    pass


def make_mesh(axes, devices=None) -> Mesh:
    """`axes` is ((name, size), ...); one size may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    names = tuple(n for n, _ in axes)
    sizes = [int(s) for _, s in axes]
    if sizes.count(-1) > 1:
        raise MeshError(f"config.mesh {tuple(axes)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise MeshError(f"config.mesh {tuple(axes)} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise MeshError(f"config.mesh {tuple(axes)} needs {math.prod(sizes)} devices, "
                        f"JAX sees {len(devices)}")
    return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names),
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Examples split over the `data` axis (replicated over the others)."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def rule_shardings(tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a pytree: the first `(regex, spec)` rule whose regex matches the
    '/'-joined path gives the PartitionSpec; unmatched leaves are replicated."""
    compiled = [(re.compile(rx), P(*spec)) for rx, spec in rules]

    def one(path, leaf):
        name = path_str(path)
        for rx, spec in compiled:
            if rx.search(name):
                if len(spec) > np.ndim(leaf):
                    raise MeshError(f"sharding rule {rx.pattern!r} gives {spec} to {name} of "
                                    f"rank {np.ndim(leaf)}")
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(one, tree)
