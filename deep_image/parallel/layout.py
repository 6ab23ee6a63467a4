"""Where every parameter lives on the mesh: `config.sharding_rules` + `config.parallelism` +
the mesh -> one `LeafLayout` per parameter (§3.1, §3.2).

Two things decide a parameter's place:
- its *split* (the rules): conv layers are never split (§3.2: data parallel); an FC kernel may be
  split along one dimension over the FC axis: by output columns (spec `(None, "model")`) or by
  input rows (`("model", None)`). The FC axis is `model` when the mesh's `model` axis has more
  than one device; under `model_data` on a mesh whose `model` axis is 1 it is `data` (the
  paper's §3.2: FC weights divided evenly among all GPUs). `parallelism=data` splits nothing.
- its *owners* (the butterfly, §3.1): the devices that compute with identical copies of a block
  keep it as owned parts. The block is flattened, zero-padded to a multiple of their count
  and split among them; device k updates part k only, and the block is all-gathered where the
  forward pass needs it. Conv blocks are owned by every device; FC blocks by the devices along
  the axes other than the FC axis (the FC axis devices compute different slices, or, for
  unsplit FC leaves, the same values redundantly for one group of rows).

Stored forms (what the TrainState and checkpoints hold): a leaf with owners is a
`(splits, owners * part)` array with spec `P(split_axis, owner_axes)`; a leaf without owners
keeps its canonical shape with the split axis at its split dimension. `describe()` goes into
the checkpoint meta, so any stored state converts back to canonical weights without a mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from deep_image.parallel.mesh import MeshError

MESH_AXES = ("data", "model")


class LayoutError(MeshError):
    """Sharding rules, mesh and parallelism that do not fit the model; the message says why."""


@dataclasses.dataclass(frozen=True)
class LeafLayout:
    shape: tuple[int, ...]           # canonical
    split_dim: int | None = None     # dimension split over `split_axis`
    split_axis: str | None = None
    splits: int = 1                  # devices along split_axis
    owner_axes: tuple[str, ...] = ()  # axes whose devices hold identical copies of the block
    owners: int = 1
    # a small leaf (bias, BatchNorm scale) kept whole on each of its owners: no gather, its
    # gradient all-reduced among them; else each owner keeps 1/owners of it (flat)
    whole: bool = False

    @property
    def local_shape(self) -> tuple[int, ...]:
        s = list(self.shape)
        if self.split_dim is not None:
            s[self.split_dim] //= self.splits
        return tuple(s)

    @property
    def local_size(self) -> int:
        return math.prod(self.local_shape)

    @property
    def part(self) -> int:
        return math.ceil(self.local_size / self.owners)

    @property
    def flat(self) -> bool:
        """Stored as owned parts (flattened) rather than in canonical shape."""
        return self.owners > 1 and not self.whole

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return (self.splits, self.owners * self.part) if self.flat else self.shape

    @property
    def spec(self) -> P:
        if self.flat:
            return P(self.split_axis, self.owner_axes or None)
        if self.split_dim is None:
            return P()
        return P(*([None] * self.split_dim + [self.split_axis]))

    @property
    def canonical_spec(self) -> P:
        """A spec of the canonical array that gives every device only part of it: the split,
        and the owners along the first dimension they divide. Initialization under it draws
        each block where it is kept (random bits are partitionable)."""
        spec: list = [None] * len(self.shape)
        if self.split_dim is not None:
            spec[self.split_dim] = self.split_axis
        if self.flat:
            for d, size in enumerate(self.local_shape):
                if spec[d] is None and size % self.owners == 0:
                    spec[d] = self.owner_axes if len(self.owner_axes) > 1 else self.owner_axes[0]
                    break
        return P(*spec)

    # -- outside shard_map: whole arrays (jnp inside jit, or numpy on the host) --
    def to_stored(self, x, xp=np):
        if not self.flat:
            return x
        if self.split_dim is not None:
            d = self.split_dim
            x = x.reshape(self.shape[:d] + (self.splits, self.shape[d] // self.splits)
                          + self.shape[d + 1:])
            x = xp.moveaxis(x, d, 0)
        x = x.reshape(self.splits, self.local_size)
        return xp.pad(x, ((0, 0), (0, self.owners * self.part - self.local_size)))

    def from_stored(self, x, xp=np):
        if not self.flat:
            return x
        x = x[:, :self.local_size].reshape((self.splits,) + self.local_shape)
        if self.split_dim is None:
            return x.reshape(self.shape)
        return xp.moveaxis(x, 0, self.split_dim).reshape(self.shape)

    def describe(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape),
                                           "owner_axes": list(self.owner_axes)}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Per-parameter layouts of one model on one mesh, and the FC axis the step splits over."""
    leaves: dict              # {layer: {name: LeafLayout}}
    fc_axis: str | None       # the mesh axis FC slices are spread over (None: no FC split)
    mesh_shape: dict          # {axis: devices}

    @property
    def axes(self) -> tuple[str, ...]:
        """Mesh axes with more than one device, in mesh order."""
        return tuple(a for a, n in self.mesh_shape.items() if n > 1)

    def leaf_list(self):
        return [lf for layer in self.leaves.values() for lf in layer.values()]

    def to_stored(self, params, xp=np):
        return {k: {n: self.leaves[k][n].to_stored(v, xp) for n, v in leaves.items()}
                for k, leaves in params.items()}

    def from_stored(self, stored, xp=np):
        return {k: {n: self.leaves[k][n].from_stored(v, xp) for n, v in leaves.items()}
                for k, leaves in stored.items()}

    def state_specs(self, state):
        """PartitionSpecs of a TrainState-like tree: params and optimizer-state leaves (which
        mirror the params) by their layer/name, everything else (step, rng, schedule) P()."""
        def spec(path, leaf):
            key = param_key(path)
            if key and key[0] in self.leaves and key[1] in self.leaves[key[0]] \
                    and np.ndim(leaf) > 0:
                return self.leaves[key[0]][key[1]].spec
            return P()
        return jax.tree_util.tree_map_with_path(spec, state)

    def constrain(self, params, mesh: Mesh):
        """Inside jit: canonical parameters laid out by `canonical_spec` (no device holds a
        whole leaf that it only keeps a part of)."""
        return {k: {n: jax.lax.with_sharding_constraint(
            v, NamedSharding(mesh, self.leaves[k][n].canonical_spec)) for n, v in leaves.items()}
            for k, leaves in params.items()}

    def shardings(self, tree, mesh: Mesh):
        return jax.tree.map(lambda s: NamedSharding(mesh, s), self.state_specs(tree))

    def describe(self) -> dict:
        return {"fc_axis": self.fc_axis, "mesh": dict(self.mesh_shape),
                "leaves": {k: {n: lf.describe() for n, lf in v.items()}
                           for k, v in self.leaves.items()}}

    @classmethod
    def from_description(cls, d: dict) -> "Layout":
        def leaf(x):
            return LeafLayout(**{**x, "shape": tuple(x["shape"]),
                                 "owner_axes": tuple(x["owner_axes"])})
        return cls(leaves={k: {n: leaf(x) for n, x in v.items()} for k, v in d["leaves"].items()},
                   fc_axis=d["fc_axis"], mesh_shape=dict(d["mesh"]))


def param_key(path) -> tuple[str, str] | None:
    """(layer, name) of a params/opt_state leaf path of a TrainState (or of a bare params
    dict), else None."""
    names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
    if len(names) >= 2 and (len(names) == 2 or "params" in names or "opt_state" in names):
        return names[-2], names[-1]
    return None


def relayout(tree, old: Layout, new: Layout):
    """A TrainState's (or a params dict's) host arrays with every parameter and momentum leaf
    converted from `old`'s stored blocks to `new`'s; other leaves as they are. Resuming on
    another mesh uses it, and so does the test that runs one device's state through the
    parallel step."""
    def convert(path, x):
        key = param_key(path)
        if key and key[0] in old.leaves and np.ndim(x):
            x = new.leaves[key[0]][key[1]].to_stored(
                old.leaves[key[0]][key[1]].from_stored(np.asarray(x)))
        return np.asarray(x)
    return jax.tree_util.tree_map_with_path(convert, tree)


def fc_axis_for(mesh_shape: dict, parallelism: str) -> str | None:
    """The axis FC slices are spread over: `model` if it has devices, else under model_data
    the `data` axis (§3.2 on all GPUs), else None."""
    if parallelism == "data":
        if mesh_shape.get("model", 1) > 1:
            raise LayoutError(
                f"config.parallelism=data keeps every weight on every device, but config.mesh "
                f"has model={mesh_shape['model']}: set config.parallelism=model_data (FC "
                "weights split over `model`, data parallel over `data`: the hybrid) or model=1")
        return None
    if mesh_shape.get("model", 1) > 1:
        return "model"
    return "data" if mesh_shape.get("data", 1) > 1 else None


def plan(abstract_params, mesh_shape: dict, parallelism: str, rules, *,
         head_layers, whole_below: int = 0) -> Layout:
    """The layout of `abstract_params` ({layer: {name: array-like}}) on a mesh of `mesh_shape`
    ({axis: size}, axes `data` and `model`), checked for what the train step supports.
    `head_layers` (the model's) may be split over the FC axis; every other layer is data
    parallel. Leaves of fewer than `whole_below` elements (per device) are kept whole on their
    owners: one all-reduce of the gradient instead of a reduce-scatter and an all-gather each
    (XLA combines the small all-reduces)."""
    if tuple(mesh_shape) != MESH_AXES:
        raise LayoutError(f"config.mesh must name the axes {MESH_AXES} in this order, got "
                          f"{tuple(mesh_shape)}")
    fc_axis = fc_axis_for(mesh_shape, parallelism)
    axes = tuple(a for a in MESH_AXES if mesh_shape[a] > 1)
    try:
        compiled = [(re.compile(rx), tuple(spec)) for rx, spec in rules]
    except (re.error, TypeError, ValueError) as e:
        raise LayoutError(f"config.sharding_rules: each rule is (regex, spec axes): {e}") from None

    def spec_of(name, ndim):
        for rx, spec in compiled:
            if rx.search(name):
                bad = [a for a in spec if a is not None and a not in MESH_AXES]
                if bad or len(spec) > ndim:
                    raise LayoutError(f"config.sharding_rules: rule {rx.pattern!r} gives {name} "
                                      f"(rank {ndim}) the spec {spec}; use at most {ndim} "
                                      f"entries, each None or one of {MESH_AXES}")
                return spec
        return ()

    leaves = {}
    for layer, params in abstract_params.items():
        is_fc = layer in head_layers
        leaves[layer] = {}
        for name, leaf in params.items():
            shape = tuple(leaf.shape)
            spec = spec_of(f"{layer}/{name}", len(shape))
            dims = [d for d, a in enumerate(spec) if a is not None]
            if dims and not is_fc:
                raise LayoutError(f"config.sharding_rules split {layer}/{name} ({spec}): conv "
                                  "layers are data parallel (§3.2); only the head layers "
                                  f"{', '.join(head_layers)} may be split; give it the spec ()")
            if len(dims) > 1 or (dims and spec[dims[0]] != "model"):
                raise LayoutError(f"config.sharding_rules give {layer}/{name} the spec {spec}: "
                                  "an FC leaf may be split along one dimension over 'model'")
            split_dim = dims[0] if dims and fc_axis else None
            splits = mesh_shape[fc_axis] if split_dim is not None else 1
            if split_dim is not None and shape[split_dim] % splits:
                raise LayoutError(
                    f"{layer}/{name} has {shape[split_dim]} along the dimension the rules split "
                    f"over {splits} devices ('{fc_axis}'); choose a model.width (or class "
                    "count) that it divides, or another mesh")
            owner_axes = tuple(a for a in axes if not (is_fc and a == fc_axis))
            owners = math.prod(mesh_shape[a] for a in owner_axes)
            leaves[layer][name] = LeafLayout(
                shape=shape, split_dim=split_dim, split_axis=fc_axis if split_dim is not None
                else None, splits=splits, owner_axes=owner_axes, owners=owners,
                whole=owners > 1 and math.prod(shape) // splits < whole_below)
    layout = Layout(leaves=leaves, fc_axis=fc_axis, mesh_shape=dict(mesh_shape))
    _check_fc_chain(layout, head_layers)
    return layout


def fc_kind(layout: Layout, layer: str) -> str:
    """How the step computes an FC layer: 'columns' (split outputs), 'rows' (split inputs,
    outputs summed over the FC axis) or 'whole'."""
    return {None: "whole", 1: "columns", 0: "rows"}[layout.leaves[layer]["kernel"].split_dim]


def _check_fc_chain(layout: Layout, head_layers) -> None:
    for layer in (k for k in layout.leaves if k in head_layers):
        kind = fc_kind(layout, layer)
        bias = layout.leaves[layer]["bias"].split_dim
        if (kind == "columns") != (bias == 0):
            raise LayoutError(
                f"config.sharding_rules: {layer}/kernel is split by {kind} but {layer}/bias is "
                f"{'split' if bias == 0 else 'whole'}; a bias is split exactly when its kernel's "
                "output columns are")
