"""The §5.1 update rule against a plain-numpy re-implementation written here.

The library's own update path (training/state.py: make_optimizer, learning_rate, make_plateau,
update_plateau, TrainState; training/step.py: apply_update) runs a few steps of a tiny
parameter tree on FIXED gradients; the reference below is the paper's rule written out in
float64 numpy, sharing nothing with the library but the config values:

    g  <- g * min(1, clip / ||g||)                 (global norm over trained leaves; one device)
    g  <- g + wd * p                               (kernels only: biases are not decayed)
    v  <- g + m * v                                (optax.trace)
    d  <- g + m * v if nesterov else v
    lr <- lr0 * plateau_scale * factor^#{decay steps <= t} * min(1, (t + 1) / warmup)
    p  <- p - lr * d                               (frozen layers: unchanged, no momentum)

and reduce-on-plateau as an explicit loop (patience, factor, cooldown, min_scale, rtol).
The last test checks one real jitted train step of the tiny VGG: its parameter change equals
the numpy update of the gradient of the model's loss, computed here with jax.grad.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import reference_plateau, tiny_config
from deep_image.training import setup as setup_lib
from deep_image.training import state as state_lib
from deep_image.training import step as step_lib

SHAPES = {"conv1_1": {"kernel": (3, 3, 2, 4), "bias": (4,)},
          "fc1": {"kernel": (6, 5), "bias": (5,)}}
LEAVES = [(layer, name) for layer in SHAPES for name in SHAPES[layer]]


def _tree(rng, scale=1.0):
    return {layer: {name: (scale * rng.standard_normal(shape)).astype(np.float32)
                    for name, shape in leaves.items()} for layer, leaves in SHAPES.items()}


def _fixture(steps, seed=0):
    rng = np.random.default_rng(seed)
    params = _tree(rng)
    for layer in SHAPES:                  # biases far from 0 (|b| >= 1): decaying them shows
        b = params[layer]["bias"]
        params[layer]["bias"] = (np.sign(b) * (1.0 + np.abs(b))).astype(np.float32)
    return params, [_tree(rng, 0.5) for _ in range(steps)]


# ------------------------------------------------------------------------- the reference

def reference_sgd(params, grads, *, lr, momentum, nesterov, weight_decay, warmup=0,
                  decay_steps=(), factor=0.1, scales=None, clip=0.0, trained=None):
    """The update of the module docstring in float64; returns (params after each step, lr of
    each step). `scales[t]`: the plateau scale in force at step t (default 1)."""
    p = {k: {n: np.float64(v) for n, v in leaves.items()} for k, leaves in params.items()}
    train = [(k, n) for k, n in LEAVES if trained is None or k in trained]
    v = {kn: 0.0 for kn in train}
    out, rates = [], []
    for t, grad in enumerate(grads):
        g = {kn: np.float64(grad[kn[0]][kn[1]]) for kn in train}
        if clip > 0:
            norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
            g = {kn: x * min(1.0, clip / norm) for kn, x in g.items()}
        rate = lr * (1.0 if scales is None else scales[t])
        rate *= factor ** sum(t >= s for s in decay_steps)
        if warmup:
            rate *= min(1.0, (t + 1) / warmup)
        for kn in train:
            k, n = kn
            gk = g[kn] + (weight_decay * p[k][n] if n == "kernel" else 0.0)
            v[kn] = gk + momentum * v[kn]
            d = gk + momentum * v[kn] if nesterov else v[kn]
            p[k][n] = p[k][n] - rate * d
        out.append({k: {n: x.copy() for n, x in leaves.items()} for k, leaves in p.items()})
        rates.append(rate)
    return out, rates


# ------------------------------------------------------------------------- the library

def _config(**kw):
    opt = dict(learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
               grad_clip_norm=0.0)
    sched = dict(warmup_steps=0, decay_steps=(), factor=0.1)
    opt.update({k: v for k, v in kw.items() if k in opt})
    sched.update({k: v for k, v in kw.items() if k in sched})
    return tiny_config(optimizer=opt, schedule=sched)


def _init(config, params, trained=None):
    tx = state_lib.make_optimizer(config.optimizer, trained)
    plateau_tx = state_lib.make_plateau(config.schedule)
    params = jax.tree.map(jnp.asarray, params)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, stats={},
                                 opt_state=tx.init(params), plateau=plateau_tx.init(params),
                                 rng=jnp.zeros(2, jnp.uint32))
    return tx, plateau_tx, state


def library_sgd(config, params, grads, trained=None):
    tx, _, state = _init(config, params, trained)
    out, rates = [], []
    for g in grads:
        state, lr = step_lib.apply_update(tx, config, state, jax.tree.map(jnp.asarray, g))
        out.append(jax.device_get(state.params))
        rates.append(float(lr))
    assert int(state.step) == len(grads)
    return out, rates, state


def _assert_close(got, want, rtol=1e-5, atol=1e-6):
    for (k, n) in LEAVES:
        np.testing.assert_allclose(got[k][n], want[k][n], rtol=rtol, atol=atol,
                                   err_msg=f"{k}/{n}")


CASES = {
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay_on_kernels_only": dict(momentum=0.5, weight_decay=0.1),
    "warmup": dict(momentum=0.9, warmup_steps=4),
    "decay_steps": dict(momentum=0.9, decay_steps=(2, 4), factor=0.5),
    "clipping": dict(momentum=0.9, grad_clip_norm=1.0),
    "all_at_once": dict(momentum=0.8, nesterov=True, weight_decay=0.05, warmup_steps=3,
                        decay_steps=(4,), factor=0.5, grad_clip_norm=2.0),
}


@pytest.mark.parametrize("case", CASES)
def test_update_equals_numpy_reference(case):
    kw = CASES[case]
    config = _config(**kw)
    params, grads = _fixture(steps=6)
    got, got_rates, _ = library_sgd(config, params, grads)
    want, want_rates = reference_sgd(
        params, grads, lr=0.1, momentum=kw.get("momentum", 0.0),
        nesterov=kw.get("nesterov", False), weight_decay=kw.get("weight_decay", 0.0),
        warmup=kw.get("warmup_steps", 0), decay_steps=kw.get("decay_steps", ()),
        factor=kw.get("factor", 0.1), clip=kw.get("grad_clip_norm", 0.0))
    np.testing.assert_allclose(got_rates, want_rates, rtol=1e-6)
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        try:
            _assert_close(g, w)
        except AssertionError as e:
            raise AssertionError(f"step {t + 1}: {e}") from None


def test_the_reference_tells_the_knobs_apart():
    """Each knob the cases turn changes the numpy trajectory well beyond the tolerance, so a
    library that ignored it could not pass (nesterov vs plain, decay on biases, warm-up
    off by one, decay steps, clipping)."""
    params, grads = _fixture(steps=6)
    base = dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0)

    def final(**kw):
        return reference_sgd(params, grads, **{**base, **kw})[0][-1]

    def differ(a, b, leaf):
        return np.max(np.abs(a[leaf[0]][leaf[1]] - b[leaf[0]][leaf[1]])) > 1e-3

    plain = final()
    assert differ(final(nesterov=True), plain, ("fc1", "kernel"))
    assert differ(final(warmup=4), plain, ("fc1", "kernel"))
    assert differ(final(decay_steps=(2, 4), factor=0.5), plain, ("fc1", "kernel"))
    assert differ(final(clip=1.0), plain, ("fc1", "kernel"))
    # weight decay moves kernels; decaying biases too would move them by at least 1e-3
    wd = final(weight_decay=0.1)
    assert differ(wd, plain, ("fc1", "kernel")) and not differ(wd, plain, ("fc1", "bias"))
    # decaying biases too would move them by >= lr * wd * |b| >= 1e-2 a step
    assert all(np.min(np.abs(params[k]["bias"])) >= 1.0 for k in SHAPES)
    # clipping really clips these gradients (norm > 1 at every step)
    assert all(np.sqrt(sum(np.sum(g[k][n] ** 2) for k, n in LEAVES)) > 1.0 for g in grads)


def test_weight_decay_leaves_biases_alone():
    """With zero gradients only weight decay moves parameters: kernels shrink by exactly
    (1 - lr * wd) per step (momentum 0), biases stay bitwise where they were."""
    config = _config(momentum=0.0, weight_decay=0.1)
    params, _ = _fixture(steps=0)
    zeros = [jax.tree.map(np.zeros_like, params)] * 3
    got, _, _ = library_sgd(config, params, zeros)
    for k in SHAPES:
        np.testing.assert_array_equal(got[-1][k]["bias"], params[k]["bias"])
        np.testing.assert_allclose(got[-1][k]["kernel"], params[k]["kernel"] * (1 - 0.01) ** 3,
                                   rtol=1e-6)


def test_finetune_freezes_layers_and_keeps_no_momentum_for_them():
    config = _config(momentum=0.9, nesterov=True, weight_decay=0.1)
    params, grads = _fixture(steps=5)
    got, _, state = library_sgd(config, params, grads, trained={"fc1"})
    want, _ = reference_sgd(params, grads, lr=0.1, momentum=0.9, nesterov=True,
                            weight_decay=0.1, trained={"fc1"})
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(got[-1]["conv1_1"][name], params["conv1_1"][name])
        np.testing.assert_allclose(got[-1]["fc1"][name], want[-1]["fc1"][name], rtol=1e-5,
                                   atol=1e-6)
    # the optimizer state holds a momentum trace for fc1's parameters and nothing else
    kept = sum(x.size for x in jax.tree.leaves(state.opt_state)
               if jnp.issubdtype(x.dtype, jnp.floating))
    assert kept == sum(np.prod(SHAPES["fc1"][n]) for n in SHAPES["fc1"])


PLATEAUS = [   # errors chosen so that every knob decides at least once
    dict(patience=1, cooldown=0, rtol=1e-4, min_scale=1e-3, factor=0.1,
         errors=[0.5, 0.6, 0.7, 0.4, 0.45]),
    # rtol 0.1: 0.46 is below the best 0.5 but not by 10%, so it is no improvement
    dict(patience=2, cooldown=1, rtol=0.1, min_scale=0.05, factor=0.1,
         errors=[0.5, 0.46, 0.47, 0.48, 0.49, 0.3, 0.31, 0.32, 0.33]),
    dict(patience=1, cooldown=2, rtol=1e-4, min_scale=1e-4, factor=0.5,
         errors=[0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.99]),
]


@pytest.mark.parametrize("case", range(len(PLATEAUS)))
def test_plateau_scale_follows_reference_and_multiplies_the_rate(case):
    kw = dict(PLATEAUS[case])
    errors = kw.pop("errors")
    config = tiny_config(optimizer=dict(learning_rate=0.1, momentum=0.9, nesterov=False,
                                        weight_decay=0.0, grad_clip_norm=0.0),
                         schedule=dict(kw, warmup_steps=0, decay_steps=()))
    want_scales = reference_plateau(errors, **kw)
    assert min(want_scales) < 1.0          # the errors force at least one division
    params, grads = _fixture(steps=2 * len(errors))
    tx, plateau_tx, state = _init(config, params)
    got_scales, applied = [], []
    for i, e in enumerate(errors):         # two steps, then an evaluation's decision
        for g in grads[2 * i:2 * i + 2]:
            applied.append(float(state.plateau.scale))
            state, _ = step_lib.apply_update(tx, config, state, jax.tree.map(jnp.asarray, g))
        state = state_lib.update_plateau(plateau_tx, state, e)
        got_scales.append(float(state.plateau.scale))
    np.testing.assert_allclose(got_scales, want_scales, rtol=1e-6)
    # the scale in force at each step is the last decision's; the parameters follow it
    in_force = [1.0, 1.0] + [s for s in want_scales[:-1] for _ in range(2)]
    np.testing.assert_allclose(applied, in_force, rtol=1e-6)
    want, _ = reference_sgd(params, grads, lr=0.1, momentum=0.9, nesterov=False,
                            weight_decay=0.0, scales=in_force)
    _assert_close(jax.device_get(state.params), want[-1])


def test_plateau_knobs_matter_in_the_reference():
    """The reference's knobs change its output on the errors above (so the comparison above
    checks each of them)."""
    base = {k: v for k, v in PLATEAUS[1].items() if k != "errors"}
    errors = PLATEAUS[1]["errors"]
    ref = reference_plateau(errors, **base)
    for knob, value in [("rtol", 1e-4), ("cooldown", 0), ("patience", 1), ("min_scale", 1e-3),
                        ("factor", 0.5)]:
        assert reference_plateau(errors, **{**base, knob: value}) != ref, knob


# ------------------------------------------------------------------------- one real step

def _ce_loss(model, params, images, labels):
    """Mean cross-entropy of the model's logits, written out (no optax)."""
    logits = model.apply(params, images, train=True, dropout_key=jax.random.PRNGKey(0))
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def test_real_train_step_is_the_numpy_update_of_the_model_gradient():
    """Two jitted train steps of the tiny VGG (one device, float32, no dropout): each step's
    parameter change equals -lr x the numpy direction (nesterov momentum, kernel-only decay,
    warm-up) of jax.grad of the model's mean cross-entropy, taken here at the step's input."""
    config = tiny_config(model__dropout_rate=0.0,
                         optimizer=dict(learning_rate=0.05, momentum=0.9, nesterov=True,
                                        weight_decay=0.05, grad_clip_norm=0.0),
                         schedule__warmup_steps=3)
    run = setup_lib.build(config, 16)
    model, state = run.model, run.state
    rng = np.random.default_rng(0)
    side = config.data.crop
    mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, x, y: _ce_loss(model, p, x, y)))
    velocity = None
    for t in range(2):
        images = rng.integers(0, 256, (config.batch_size, side, side, 3), dtype=np.uint8)
        labels = rng.integers(0, 16, config.batch_size).astype(np.int32)
        before = jax.device_get(state.params)           # the step donates the state
        x = ((images / 255.0 - mean) / std).astype(np.float32)
        want_loss, g = jax.device_get(loss_and_grad(before, x, labels))
        state, metrics = run.train_step(state, {"image": images, "label": labels})
        after = jax.device_get(state.params)
        lr = 0.05 * min(1.0, (t + 1) / 3)
        g = {k: {n: np.float64(v) + (0.05 * np.float64(before[k][n]) if n == "kernel" else 0)
                 for n, v in leaves.items()} for k, leaves in g.items()}
        velocity = g if velocity is None else jax.tree.map(lambda a, b: a + 0.9 * b, g,
                                                           velocity)
        direction = jax.tree.map(lambda a, b: a + 0.9 * b, g, velocity)
        np.testing.assert_allclose(float(metrics["train/lr"]), lr, rtol=1e-6)
        np.testing.assert_allclose(float(metrics["train/loss"]), want_loss, rtol=1e-5)
        leaves = jax.tree_util.tree_flatten_with_path(after)[0]
        moved = 0
        for (path, a), b, d in zip(leaves, jax.tree.leaves(before), jax.tree.leaves(direction),
                                   strict=True):
            change, want = np.float64(a) - np.float64(b), -lr * d
            scale = np.max(np.abs(want))
            np.testing.assert_allclose(change, want, rtol=0, atol=1e-3 * scale + 1e-9,
                                       err_msg=f"step {t + 1} {jax.tree_util.keystr(path)}")
            moved += scale > 0
        assert moved >= len(leaves) // 2        # the step really moved most leaves
