"""The device mesh from `config.mesh`, and the shardings of batches (parameters: layout.py)."""

from __future__ import annotations

import math

import jax
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
    """Examples split over every device (§3.1: each device takes 1/N of the minibatch; the
    conv layers are data parallel under every parallelism). Axes of one device are left out,
    so a value the step computes is never typed as varying over them."""
    axes = tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)
    return NamedSharding(mesh, P(axes or None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
