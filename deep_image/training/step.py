"""The train steps: pure functions of (state, batch), compiled with `jax.jit` and explicit
shardings, the state donated. Batches arrive as uint8 and are normalized on device
(evaluation/evaluator.py scores the eval splits). The model is anything models/base.py
describes: its `features` run on each device's rows, its `head` as the layout splits it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from deep_image.data import device_cache
from deep_image.evaluation.evaluator import normalize
from deep_image.parallel import butterfly
from deep_image.parallel import mesh as mesh_lib
from deep_image.parallel.layout import fc_kind
from deep_image.training import state as state_lib


OPTIMIZER_SCOPE = "optimizer_update"


def apply_update(tx, config, state: state_lib.TrainState, grads):
    """The §5.1 update, shared by every layout: direction (weight decay + momentum) from optax,
    times -lr (warm-up x plateau scale); then the weights' moving average when the state keeps
    one (config.ema_decay). Returns (new state, lr). Under the named scope
    OPTIMIZER_SCOPE, so a profile can say what the update costs (bench/profile_summary.py)."""
    with jax.named_scope(OPTIMIZER_SCOPE):
        direction, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = state_lib.learning_rate(config, state)
        params = jax.tree.map(lambda p, d: p - lr * d, state.params, direction)
        ema = (None if state.ema is None else
               state_lib.update_ema(config.ema_decay, state.ema, params))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema=ema), lr


def updates_stats(config) -> bool:
    """Whether training updates BatchNorm statistics: not when fine-tuning freezes the
    backbone, whose normalization then keeps the pre-trained running statistics."""
    return config.finetune == "all"


def accumulate(loss_fn, params, stats, images, labels, k: int):
    """Gradient accumulation (`config.accumulate_steps`): `loss_fn(params, images, labels,
    stats, i)` -> (loss share, (logits, stats, labels scored)) on micro-batch i of k (rows
    i*m .. (i+1)*m - 1 of these images); returns (summed gradient, summed loss, hits, stats).
    The micro-batches run one after another in a `lax.scan` with their gradients summed in
    place, so one update (and, in the parallel step, one reduce-scatter) follows all k.
    BatchNorm statistics are each micro-batch's (as torch's accumulation has them), the running
    ones updated after each micro-batch in turn."""
    m = labels.shape[0] // k
    micro = lambda x: x.reshape(k, m, *x.shape[1:])   # noqa: E731
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(i, im, lab, stats):
        (loss, (logits, stats, scored)), grads = grad_fn(params, im, lab, stats, i)
        return grads, loss, jnp.sum(jnp.argmax(logits, -1) == scored), stats

    images, labels = micro(images), micro(labels)
    first = one(0, images[0], labels[0], stats)     # the carry takes its types (and vma)
    if k == 1:
        return first

    def body(carry, xs):
        grads, loss, hits, stats = carry
        g, l, h, stats = one(*xs, stats)
        return (jax.tree.map(jnp.add, grads, g), loss + l, hits + h, stats), None
    out, _ = lax.scan(body, first, (jnp.arange(1, k), images[1:], labels[1:]))
    return out


def make_train_step(model, tx, config, state_shardings, batch_sharding, out_sharding,
                    cache=None):
    """`cache` (a data/device_cache.Plan): the step's input is the device cache, from which
    it draws and augments its batch (placement 'device'); else a batch of crops."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    update = updates_stats(config)
    k = config.accumulate_steps

    def train_step(state: state_lib.TrainState, batch):
        if cache is not None:
            batch = device_cache.global_batch(batch, state.step, cache)
        images = normalize(batch["image"], mean, std)
        labels = batch["label"]
        dropout_key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits, stats = model.apply_with_stats(params, images, stats=state.stats,
                                                   train=True, dropout_key=dropout_key,
                                                   update_stats=update)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, stats)

        if k == 1:
            (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params)
            accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        else:     # k micro-batches of m rows; their dropout masks are the whole batch's rows
            total = labels.shape[0]
            m = total // k

            def micro_loss(params, images, labels, stats, i):
                x, stats = model.features(params, images, stats=stats, train=True,
                                          update_stats=update)
                keys = jax.random.split(dropout_key) if model.dropout_rate else None
                logits = model.head(params, x, keys=keys, rate=model.dropout_rate,
                                    rows=(total, i * m))
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                return loss.sum() / total, (logits, stats, labels)
            grads, loss, hits, stats = accumulate(micro_loss, state.params, state.stats,
                                                  images, labels, k)
            accuracy = hits / total
        state, lr = apply_update(tx, config, state, grads)
        state = state.replace(stats=stats)
        metrics = {
            "train/loss": loss,
            "train/accuracy": accuracy,
            "train/lr": lr,
            # the loop never checkpoints a state this says is not finite (read at sync points)
            "train/finite": jnp.isfinite(loss) & state_lib.all_finite(state.params),
        }
        return state, metrics

    inputs = ({"image": batch_sharding, "label": batch_sharding} if cache is None else
              {"images": batch_sharding, "labels": batch_sharding})
    return jax.jit(train_step, in_shardings=(state_shardings, inputs),
                   out_shardings=(state_shardings, out_sharding),
                   donate_argnums=0)


def build_train_step(model, tx, config, mesh, layout, state, cache=None):
    """The train step for `mesh`: §3's shard_map step on several devices, the plain jitted step
    on one. `state` (arrays or ShapeDtypeStructs) carries the shardings. `cache` (a
    data/device_cache.Plan): the step takes the device cache and draws its own batch."""
    if mesh.size > 1:
        return make_parallel_train_step(model, tx, config, mesh, layout, state, cache)
    return make_train_step(model, tx, config, jax.tree.map(lambda x: x.sharding, state),
                           mesh_lib.batch_sharding(mesh) if cache is None else
                           mesh_lib.replicated(mesh), mesh_lib.replicated(mesh), cache)


def make_parallel_train_step(model, tx, config, mesh, layout, abstract_state, cache=None):
    """The train step of §3 over a mesh of several devices, as one `jax.shard_map` program,
    jitted with the state (in `layout`'s stored form) donated.

    Per device: all-gather the owned parts of the weights (lazy update); the model's features
    on this device's 1/N of the batch (data parallel, §3.1; BatchNorm over the global batch);
    the head on the rows of the devices along the FC axis, each device computing its slices of
    the head layers as the sharding rules split them (§3.2; with `parallelism=data` every
    device runs the head whole on its own rows); gradients reduce-scattered to their owners
    (butterfly synchronization); the optimizer updates owned parts only. Loss, metrics,
    dropout masks, statistics and updates equal one device's on the global batch."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    rate = model.dropout_rate
    update = updates_stats(config)
    fc_axis, axes = layout.fc_axis, layout.axes
    batch_axes = mesh_lib.batch_sharding(mesh).spec[0]
    split = {layer: fc_kind(layout, layer) for layer in model.head_layers}
    # head rows are summed over the devices that are not along the FC axis
    row_axes = tuple(a for a in axes if a != fc_axis)
    n = mesh.size
    dtypes = model.forward_dtypes()     # bfloat16 runs gather their weights in bfloat16

    def local(state, batch):
        # this device's block of rows, and the first row of its FC group
        block = lax.axis_index(batch_axes)
        if cache is not None:     # placement 'device': its rows drawn from the cache here
            batch = device_cache.local_batch(batch, state.step, cache, block,
                                             config.batch_size // n)
        images, labels = normalize(batch["image"], mean, std), batch["label"]
        b = labels.shape[0]
        total = b * n
        row0 = (block - (lax.axis_index(fc_axis) * _stride(mesh, fc_axis) if fc_axis else 0)) * b
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step))
        params = butterfly.lazy_gather(state.params, layout, dtypes)   # once per update
        first = model.head_layers[0]
        k = config.accumulate_steps
        m = b // k                  # rows of one micro-batch on this device

        def loss_fn(params, images, labels, stats, i):
            """Micro-batch i (of k) of this device's rows: its share of the global mean."""
            if fc_axis:
                labels = lax.all_gather(labels, fc_axis, tiled=True, to="invarying")
            backbone = {name: v for name, v in params.items() if name not in model.head_layers}
            x, stats = model.features(backbone, images, stats=stats, train=True,
                                      update_stats=update, batch_axes=batch_axes)
            if fc_axis:   # the group's rows; a split first layer keeps the cotangent local
                x = lax.all_gather(x, fc_axis, tiled=True, to="invarying"
                                   if split[first] == "whole" else "varying")
            if k == 1:
                rows = row0
            elif fc_axis:   # each group member's i-th micro-batch, in all_gather's order
                members = jnp.arange(lax.axis_size(fc_axis)) * _stride(mesh, fc_axis) * b
                rows = (row0 + members[:, None] + i * m + jnp.arange(m)[None, :]).reshape(-1)
            else:
                rows = row0 + i * m
            logits = model.head(params, x, keys=keys, rate=rate, split=split, axis=fc_axis,
                                rows=(total, rows))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.sum() / total, (logits, stats, labels)

        # k micro-batches' gradients summed on the device, then one butterfly sync
        grads, loss, hits, stats = accumulate(loss_fn, params, state.stats, images, labels, k)
        state, lr = apply_update(tx, config, state, butterfly.butterfly_sync(grads, layout))
        state = state.replace(stats=stats)
        if row_axes:
            loss, hits = lax.psum(loss, row_axes), lax.psum(hits, row_axes)
        # every device checks the parts it owns; the flag is true only if all are finite
        bad = lax.psum((~state_lib.all_finite(state.params)).astype(jnp.int32), axes)
        metrics = {"train/loss": loss, "train/accuracy": hits / total, "train/lr": lr,
                   "train/finite": jnp.isfinite(loss) & (bad == 0)}
        return state, metrics

    specs = layout.state_specs(abstract_state)
    batch_spec = ({"image": P(batch_axes), "label": P(batch_axes)} if cache is None else
                  {"images": device_cache.spec(cache), "labels": device_cache.spec(cache)})
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
