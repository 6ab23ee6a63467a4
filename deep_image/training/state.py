"""The train state and the optimizer of §5.1: SGD with momentum, weight decay, and a learning
rate divided by ten whenever validation accuracy stops increasing (optax's reduce-on-plateau).

The state is created already sharded: abstract shapes -> shardings -> `jax.jit(init,
out_shardings=...)`, so no parameter is ever materialized whole on one device first.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
import optax.contrib


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # optimizer steps taken
    params: Any              # {layer: {name: array}} float32
    stats: Any               # {layer: {name: array}}: BatchNorm statistics ({} for VGG)
    opt_state: Any           # momentum trace (and clip state)
    plateau: Any             # reduce-on-plateau state: scale, best error, counters
    rng: jax.Array           # raw uint32 key; dropout uses fold_in(rng, step)
    ema: Any = None          # config.ema_decay > 0: the weights' exponential moving average,
                             # in the params' stored form (it shards as they do); else None


def all_finite(tree) -> jax.Array:
    """Whether every value of every floating leaf is finite (a scalar bool, on device)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _kernels_only(params):
    """Weight decay on kernels, not biases (as Caffe's VGG solvers do)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-1], "key", path[-1])) == "kernel", params)


def trained_layers(model, finetune: str) -> set[str] | None:
    """§5: fine-tune all layers (None: every one), the FC layers or the classifier, as the
    model names them."""
    return {"all": None, "fc": set(model.fc_layers), "last": {model.classifier}}[finetune]


def trainable_labels(params, trained: set[str] | None):
    """'train' or 'freeze' for every parameter leaf, by its layer name."""
    return {layer: jax.tree.map(lambda _: "train" if trained is None or layer in trained
                                else "freeze", leaves)
            for layer, leaves in params.items()}


def make_optimizer(opt, trained: set[str] | None = None) -> optax.GradientTransformation:
    """Gradient -> direction (weight decay + momentum); the step multiplies by -lr. Layers not
    in `trained` (None: all are) get a zero direction and keep no optimizer state."""
    tx = _sgd_direction(opt)
    if trained is None:
        return tx
    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                                 lambda params: trainable_labels(params, trained))


def _sgd_direction(opt) -> optax.GradientTransformation:
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.weight_decay > 0:
        parts.append(optax.add_decayed_weights(opt.weight_decay, mask=_kernels_only))
    parts.append(optax.trace(decay=opt.momentum, nesterov=opt.nesterov))
    return optax.chain(*parts)


def make_plateau(schedule) -> optax.GradientTransformationExtraArgs:
    """Tracks validation error; its `scale` multiplies the learning rate (§5.1)."""
    return optax.contrib.reduce_on_plateau(
        factor=schedule.factor, patience=schedule.patience, rtol=schedule.rtol,
        cooldown=schedule.cooldown, min_scale=schedule.min_scale)


def learning_rate(config, state: TrainState) -> jax.Array:
    """Base rate x linear warm-up x plateau scale x fixed decays, at the state's step."""
    lr = config.optimizer.learning_rate * state.plateau.scale
    if config.schedule.decay_steps:
        passed = jnp.sum(state.step >= jnp.asarray(config.schedule.decay_steps, jnp.int32))
        lr = lr * jnp.power(jnp.float32(config.schedule.factor), passed)
    w = config.schedule.warmup_steps
    if w > 0:
        lr = lr * jnp.minimum(1.0, (state.step.astype(jnp.float32) + 1.0) / w)
    return lr


def update_plateau(plateau_tx, state: TrainState, val_error) -> TrainState:
    """One §5.1 decision from the validation error (never from the reported split)."""
    _, plateau = plateau_tx.update(updates={}, state=state.plateau,
                                   value=jnp.asarray(val_error, jnp.float32))
    return state.replace(plateau=plateau)


def create(model, tx, plateau_tx, config, mesh, layout) -> tuple[TrainState, Any]:
    """A fresh TrainState in `layout`'s stored form and the shardings of its leaves. It is
    created already sharded (abstract shapes -> shardings -> `jax.jit(init, out_shardings)`):
    each device computes only the blocks it keeps."""
    init = initializer(model, tx, plateau_tx, layout, mesh, ema=config.ema_decay > 0)
    key = jax.random.PRNGKey(config.seed)
    shardings = layout.shardings(jax.eval_shape(init, key), mesh)
    return jax.jit(init, out_shardings=shardings,
                   compiler_options=init_compiler_options(mesh))(key), shardings


def init_compiler_options(mesh) -> dict:
    """XLA options of the initializer's program. On CPU, LLVM at XLA's default optimization
    level (2) spent 18 s compiling the random draws of even the tiny test model (2 busy cores;
    every process of a multi-process run pays it: JAX's persistent cache serves process 0
    only); level 1 compiled them in 5 s into the same bits (tests/test_models.py checks), and
    the program runs once. Other platforms keep their defaults."""
    if mesh.devices.flat[0].platform == "cpu":
        return {"xla_backend_optimization_level": 1}
    return {}


def abstract_state(model, tx, plateau_tx, mesh, layout, ema: bool = False) -> TrainState:
    """The TrainState's shapes and shardings, nothing allocated (for compiling ahead)."""
    shapes = jax.eval_shape(initializer(model, tx, plateau_tx, layout, mesh, ema=ema),
                            jax.random.PRNGKey(0))
    return abstract_with_shardings(layout.shardings(shapes, mesh), shapes)


def initializer(model, tx, plateau_tx, layout, mesh, ema: bool = False):
    def init(key):
        pkey, dkey = jax.random.split(key)
        params, stats = model.init(pkey)
        params = layout.to_stored(layout.constrain(params, mesh), jnp)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, stats=stats,
                          opt_state=tx.init(params), plateau=plateau_tx.init(params),
                          rng=dkey, ema=jax.tree.map(jnp.copy, params) if ema else None)
    return init


def update_ema(decay: float, ema, params):
    """ema <- decay x ema + (1 - decay) x params, leaf by leaf (any layout: elementwise)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def abstract_with_shardings(state_shardings, abstract):
    """ShapeDtypeStructs carrying shardings: the restore target for checkpoints."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, state_shardings)
