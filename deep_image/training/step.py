"""The train and eval steps: pure functions of (state, batch), compiled with `jax.jit` and
explicit shardings, the state donated. Batches arrive as uint8 and are normalized on device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from deep_image.training import state as state_lib


def normalize(images: jax.Array, mean, std) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


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
        }
        return state, metrics

    return jax.jit(train_step,
                   in_shardings=(state_shardings, {"image": batch_sharding,
                                                   "label": batch_sharding}),
                   out_shardings=(state_shardings, out_sharding),
                   donate_argnums=0)


def make_eval_step(model, config, params_shardings, batch_sharding, out_sharding, num_classes):
    """Per-class sums over one masked batch: counts, top-1 and top-5 hits, loss."""
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    k = min(5, num_classes)

    def eval_step(params, batch):
        logits = model.apply(params, normalize(batch["image"], mean, std))
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
        top = jax.lax.top_k(logits, k)[1]
        hit1 = (top[:, 0] == labels).astype(jnp.float32)
        hitk = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {
            "count": onehot.sum(0),
            "top1": (onehot * hit1[:, None]).sum(0),
            "top5": (onehot * hitk[:, None]).sum(0),
            "loss": (loss * mask).sum(),
        }

    batch_shardings = {"image": batch_sharding, "label": batch_sharding, "mask": batch_sharding}
    return jax.jit(eval_step, in_shardings=(params_shardings, batch_shardings),
                   out_shardings=out_sharding)


def make_butterfly_train_step(model, tx, config, mesh, state):
    """The data-parallel step of §3.1 (parallel/butterfly.py): `state.params` and
    `state.opt_state` are owned parts. Per device: gather the weights (lazy update), forward and
    backward on 1/N of the batch, reduce-scatter the gradients (butterfly), update the own part.
    Loss, metrics and dropout masks are those of the global batch on one device."""
    from jax import lax

    from deep_image.parallel import butterfly as bf

    shapes = model.abstract_params
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    specs = bf.owned_specs(state)

    def local(state, batch):
        n, k = lax.axis_size(bf.AXIS), lax.axis_index(bf.AXIS)
        images, labels = normalize(batch["image"], mean, std), batch["label"]
        b = labels.shape[0]
        total = b * n
        params = bf.lazy_gather(state.params, shapes)
        key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits = model.apply(params, images, train=True, dropout_key=key,
                                 batch_slice=(k * b, total))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return loss.sum() / total, logits      # this device's share of the global mean

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # the optimizer then updates this device's parts only (lazy update)
        state, lr = apply_update(tx, config, state, bf.butterfly_sync(grads))
        hits = jnp.sum(jnp.argmax(logits, -1) == labels)
        metrics = {"train/loss": lax.psum(loss, bf.AXIS),
                   "train/accuracy": lax.psum(hits, bf.AXIS) / total, "train/lr": lr}
        return state, metrics

    # Explicit collectives only: the butterfly's psum_scatter is the one gradient reduction.
    return _compile(local, mesh, specs, check_vma=False)


def make_model_data_train_step(model, tx, config, mesh, state):
    """The model-data parallel step of §3.2 (parallel/butterfly.py FC_SPECS). Per device: conv
    layers on 1/N of the batch with gathered weights; the conv features of the whole batch
    gathered; this device's slice of FC1 (columns), FC2 and FC3 (rows, outputs summed over
    devices) on the whole batch; conv gradients reduce-scattered (butterfly), FC gradients
    used where they are computed. Same loss, dropout and updates as one device."""
    from jax import lax

    from deep_image.models.vgg import dropout_slice
    from deep_image.parallel import butterfly as bf

    shapes = model.abstract_params
    conv_shapes = {k: v for k, v in shapes.items() if k.startswith("conv")}
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    rate = config.model.dropout_rate
    specs = bf.model_data_specs(state)

    def local(state, batch):
        n, k = lax.axis_size(bf.AXIS), lax.axis_index(bf.AXIS)
        images, labels = normalize(batch["image"], mean, std), batch["label"]
        b = labels.shape[0]
        total = b * n
        all_labels = lax.all_gather(labels, bf.AXIS, tiled=True, to="invarying")
        key1, key2 = jax.random.split(jax.random.fold_in(state.rng, state.step))

        def dropout(x, key, cols):          # the global batch's mask, this device's columns
            if rate == 0.0:
                return x
            return dropout_slice(x, key, rate, (total, cols * n), k * cols, axis=1)

        def loss_fn(params):
            conv = bf.lazy_gather({c: params[c] for c in conv_shapes}, conv_shapes)
            module = model.module({**conv, **{f: shapes[f] for f in ("fc1", "fc2", "fc3")}})
            x = module.features(images)
            x = lax.all_gather(x.reshape(b, -1), bf.AXIS, tiled=True)       # (total, in)
            dt = x.dtype
            fc1, fc2, fc3 = params["fc1"], params["fc2"], params["fc3"]
            h1 = jax.nn.relu(x @ fc1["kernel"].astype(dt) + fc1["bias"].astype(dt))
            h1 = dropout(h1, key1, h1.shape[1])                             # (total, F/N)
            h2 = lax.psum(h1 @ fc2["kernel"].astype(dt), bf.AXIS) + fc2["bias"].astype(dt)
            cols = fc3["kernel"].shape[0]
            h2 = lax.dynamic_slice_in_dim(jax.nn.relu(h2), k * cols, cols, axis=1)
            h2 = dropout(h2, key2, cols)                                    # (total, F/N)
            logits = lax.psum(h2 @ fc3["kernel"].astype(dt), bf.AXIS) + fc3["bias"].astype(dt)
            logits = logits.astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, all_labels).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        # The conv weights were gathered inside loss_fn, so their gradient arrives summed over
        # devices onto the owned parts (the all-gather's transpose); FC slices' gradients are
        # complete where they are computed.
        state, lr = apply_update(tx, config, state, grads)
        metrics = {"train/loss": loss,
                   "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == all_labels),
                   "train/lr": lr}
        return state, metrics

    # check_vma: the psums of FC outputs then transpose correctly (to a broadcast, not a sum).
    return _compile(local, mesh, specs, check_vma=True)


def _compile(local, mesh, specs, *, check_vma: bool):
    """jit(shard_map(local)) over the data axis: state in `specs`, batch split by rows,
    metrics replicated; the state donated. Returns (step, state shardings)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from deep_image.parallel.butterfly import AXIS

    batch_spec = {"image": P(AXIS), "label": P(AXIS)}
    step = jax.shard_map(local, mesh=mesh, in_specs=(specs, batch_spec), out_specs=(specs, P()),
                         check_vma=check_vma)
    named = lambda tree: jax.tree.map(lambda s: NamedSharding(mesh, s), tree)   # noqa: E731
    shardings = named(specs)
    return jax.jit(step, in_shardings=(shardings, named(batch_spec)),
                   out_shardings=(shardings, NamedSharding(mesh, P())),
                   donate_argnums=0), shardings
