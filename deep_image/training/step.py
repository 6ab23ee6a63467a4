"""The train steps: pure functions of (state, batch), compiled with `jax.jit` and explicit
shardings, the state donated. Batches arrive as uint8 and are normalized on device
(evaluation/evaluator.py scores the eval splits)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from deep_image.evaluation.evaluator import normalize
from deep_image.training import state as state_lib


def apply_update(tx, config, state: state_lib.TrainState, grads):
    """The §5.1 update, shared by every layout: direction (weight decay + momentum) from optax,
    times -lr (warm-up x plateau scale). Returns (new state, lr)."""
    direction, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = state_lib.learning_rate(config, state)
    params = jax.tree.map(lambda p, d: p - lr * d, state.params, direction)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), lr


def make_train_step(model, tx, config, state_shardings, batch_sharding, out_sharding):
    mean, std = tuple(config.data.mean), tuple(config.data.std)

    def train_step(state: state_lib.TrainState, batch):
        images = normalize(batch["image"], mean, std)
        labels = batch["label"]
        dropout_key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits = model.apply(params, images, train=True, dropout_key=dropout_key)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state, lr = apply_update(tx, config, state, grads)
        metrics = {
            "train/loss": loss,
            "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "train/lr": lr,
            # the loop never checkpoints a state this says is not finite (read at sync points)
            "train/finite": jnp.isfinite(loss) & state_lib.all_finite(state.params),
        }
        return state, metrics

    return jax.jit(train_step,
                   in_shardings=(state_shardings, {"image": batch_sharding,
                                                   "label": batch_sharding}),
                   out_shardings=(state_shardings, out_sharding),
                   donate_argnums=0)


def build_train_step(model, tx, config, mesh, layout, state):
    """The train step for `mesh`: §3's shard_map step on several devices, the plain jitted step
    on one. `state` (arrays or ShapeDtypeStructs) carries the shardings."""
    from deep_image.parallel import mesh as mesh_lib
    if mesh.size > 1:
        return make_parallel_train_step(model, tx, config, mesh, layout, state)
    return make_train_step(model, tx, config, jax.tree.map(lambda x: x.sharding, state),
                           mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh))


def make_parallel_train_step(model, tx, config, mesh, layout, abstract_state):
    """The train step of §3 over a mesh of several devices, as one `jax.shard_map` program,
    jitted with the state (in `layout`'s stored form) donated.

    Per device: all-gather the owned parts of the weights (lazy update); conv layers on this
    device's 1/N of the batch (data parallel, §3.1); the FC layers on the rows of the devices
    along the FC axis, each device computing its slices of FC1-FC3 as the sharding rules split
    them (§3.2; with `parallelism=data` every device runs them whole on its own rows);
    gradients reduce-scattered to their owners (butterfly synchronization); the optimizer
    updates owned parts only. Loss, metrics, dropout masks and updates equal one device's on
    the global batch."""
    from jax import lax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from deep_image.parallel import butterfly
    from deep_image.parallel import mesh as mesh_lib
    from deep_image.parallel.layout import fc_kind

    shapes = model.abstract_params
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    rate = config.model.dropout_rate
    fc_axis, axes = layout.fc_axis, layout.axes
    batch_axes = mesh_lib.batch_sharding(mesh).spec[0]
    # FC rows are summed over the devices that are not along the FC axis
    row_axes = tuple(a for a in axes if a != fc_axis)
    n = mesh.size

    def local(state, batch):
        images, labels = normalize(batch["image"], mean, std), batch["label"]
        b = labels.shape[0]
        total = b * n
        # this device's block of rows, and the first row of its FC group
        block = lax.axis_index(batch_axes)
        row0 = (block - (lax.axis_index(fc_axis) * _stride(mesh, fc_axis) if fc_axis else 0)) * b
        if fc_axis:
            labels = lax.all_gather(labels, fc_axis, tiled=True, to="invarying")
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step))
        params = butterfly.lazy_gather(state.params, layout)

        def loss_fn(params):
            conv = {k: v for k, v in params.items() if not k.startswith("fc")}
            module = model.module({**conv, **{k: shapes[k] for k in shapes if k not in conv}})
            x = module.features(images).reshape(b, -1)
            if fc_axis:   # the group's rows; a split FC1 keeps the gather's cotangent local
                x = lax.all_gather(x, fc_axis, tiled=True, to="invarying"
                                   if fc_kind(layout, "fc1") == "whole" else "varying")
            logits = fc_block(layout, params, x, keys, rate, (total, row0))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.sum() / total, logits          # this group's share of the global mean

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        state, lr = apply_update(tx, config, state, butterfly.butterfly_sync(grads, layout))
        hits = jnp.sum(jnp.argmax(logits, -1) == labels)
        if row_axes:
            loss, hits = lax.psum(loss, row_axes), lax.psum(hits, row_axes)
        # every device checks the parts it owns; the flag is true only if all are finite
        bad = lax.psum((~state_lib.all_finite(state.params)).astype(jnp.int32), axes)
        metrics = {"train/loss": loss, "train/accuracy": hits / total, "train/lr": lr,
                   "train/finite": jnp.isfinite(loss) & (bad == 0)}
        return state, metrics

    specs = layout.state_specs(abstract_state)
    batch_spec = {"image": P(batch_axes), "label": P(batch_axes)}   # as the loop shards it
    # check_vma: FC psums transpose to broadcasts, and a replicated value's gradient is never
    # summed implicitly (the butterfly's psum_scatter is the one gradient reduction).
    step = jax.shard_map(local, mesh=mesh, in_specs=(specs, batch_spec), out_specs=(specs, P()),
                         check_vma=True)
    named = lambda tree: jax.tree.map(lambda s: NamedSharding(mesh, s), tree)   # noqa: E731
    shardings = named(specs)
    return jax.jit(step, in_shardings=(shardings, named(batch_spec)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)


def _stride(mesh, axis: str) -> int:
    """Distance in row blocks between neighbours along `axis` (row-major device order)."""
    names = list(mesh.axis_names)
    return math.prod(mesh.shape[a] for a in names[names.index(axis) + 1:])


def fc_block(layout, params, x, keys, rate, rows):
    """FC1-FC3 with ReLU and dropout after FC1 and FC2, each layer computed as the layout
    splits it over the FC axis (§3.2): 'columns' (this device's outputs), 'rows' (this
    device's inputs; outputs summed over the axis) or 'whole'. `x` is every input feature of
    this group's rows; `rows` = (global batch, the group's first row) places dropout masks.
    Returns the group's float32 logits, the same on every device of the axis."""
    from jax import lax

    from deep_image.models.vgg import dropout_slice
    from deep_image.parallel.layout import fc_kind

    axis = layout.fc_axis
    total, row0 = rows
    dt = x.dtype
    split = False                 # x holds this device's columns only
    for i, layer in enumerate(("fc1", "fc2", "fc3")):
        kind = fc_kind(layout, layer)
        w, bias = params[layer]["kernel"].astype(dt), params[layer]["bias"].astype(dt)
        if kind == "rows":
            if not split:
                x = lax.dynamic_slice_in_dim(x, lax.axis_index(axis) * w.shape[0], w.shape[0], 1)
            x, split = lax.psum(x @ w, axis) + bias, False
        else:
            if split:
                x = lax.all_gather(x, axis, axis=1, tiled=True,
                                   to="varying" if kind == "columns" else "invarying")
            x, split = x @ w + bias, kind == "columns"
        if i < 2:
            x = jax.nn.relu(x)
            if rate > 0.0:
                width = x.shape[1] * (lax.axis_size(axis) if split else 1)
                col0 = lax.axis_index(axis) * x.shape[1] if split else 0
                x = dropout_slice(x, keys[i], rate, (total, width), (row0, col0))
    if split:
        x = lax.all_gather(x, axis, axis=1, tiled=True, to="invarying")
    return x.astype(jnp.float32)
