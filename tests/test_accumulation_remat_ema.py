"""The paper's configs on smaller GPUs: gradient accumulation (`config.accumulate_steps`),
rematerialization (`config.model.remat`), the weights' moving average (`config.ema_decay`) and
the memory plan (training/memory.py). One device here; the §3 layouts with accumulation (and
one reduce-scatter per update) in test_parallel.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import StopAt, assert_trees_equal, restore_weights, tiny_config
from deep_image import config as config_lib
from deep_image import models
from deep_image.data import sources
from deep_image.evaluation.evaluator import Evaluator, Protocol
from deep_image.parallel import mesh as mesh_lib
from deep_image.training import loop, memory
from deep_image.training import setup as setup_lib
from deep_image.training import step as step_lib


def _batches(n, rows=16, side=32, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (rows, side, side, 3), dtype=np.uint8),
             "label": rng.integers(0, 16, rows).astype(np.int32)} for _ in range(n)]


def _one_device(config):
    return setup_lib.build(config, 16, mesh=mesh_lib.make_mesh((("data", 1), ("model", 1))))


def _train(config, batches):
    run = _one_device(config)
    state, losses = run.state, []
    for b in batches:
        state, m = run.train_step(state, b)
        losses.append(float(m["train/loss"]))
    return jax.device_get(state), losses


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _max_relative_diff(a, b):
    """Per leaf: the largest difference over the leaf's largest magnitude; the worst leaf."""
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))
                     / max(float(np.max(np.abs(np.asarray(y)))), 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# ----------------------------------------------------------------------------- accumulation

@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_steps_are_the_whole_batch_steps(k):
    """VGG with the paper's dropout 0.5 (masks of the whole batch's rows), momentum and weight
    decay, three updates: k micro-batches per update give the whole batch's updates, to float
    summation order (a micro-batch's mean instead of its share, or masks drawn per
    micro-batch, are off by > 1e-3)."""
    batches = _batches(3)
    whole, whole_losses = _train(tiny_config(), batches)
    acc, acc_losses = _train(tiny_config(accumulate_steps=k), batches)
    assert acc_losses == pytest.approx(whole_losses, rel=1e-5)
    assert _max_diff(acc.params, whole.params) < 1e-6
    # the momentum of the same gradient sums (its entries reach ~4 after the first steps)
    assert _max_relative_diff(acc.opt_state, whole.opt_state) < 1e-5


def test_resnet_accumulation_normalizes_each_micro_batch_by_its_own_statistics():
    """With BatchNorm each micro-batch is normalized by its own batch statistics and the
    running statistics are updated after each micro-batch in turn (as torch's accumulation
    does): the reference here runs the model on each half on its own, then one update from
    the summed gradients. It is not the whole batch's step (whose statistics differ)."""
    config = tiny_config(model__name="resnet", model__variant="resnet18", model__width=0.125,
                         accumulate_steps=2)
    run = _one_device(config)
    batch = _batches(1)[0]
    state0 = run.state
    out, _ = run.train_step(jax.tree.map(jnp.copy, state0), batch)

    model, images = run.model, step_lib.normalize(batch["image"], tuple(config.data.mean),
                                                  tuple(config.data.std))

    def share(params, im, lab, stats):
        x, stats = model.features(params, im, stats=stats, train=True, update_stats=True)
        logits = model.head(params, x)
        loss = jnp.sum(-jax.nn.log_softmax(logits)[jnp.arange(lab.shape[0]), lab])
        return loss / 16, stats
    grad = jax.jit(jax.grad(share, has_aux=True))
    g0, s1 = grad(state0.params, images[:8], batch["label"][:8], state0.stats)
    g1, s2 = grad(state0.params, images[8:], batch["label"][8:], s1)
    ref, _ = step_lib.apply_update(run.tx, config, state0, jax.tree.map(jnp.add, g0, g1))
    assert _max_diff(out.params, ref.params) < 1e-6
    assert _max_diff(out.stats, s2) < 1e-6
    whole, _ = _one_device(tiny_config(model__name="resnet", model__variant="resnet18",
                                       model__width=0.125)).train_step(state0, batch)
    assert _max_diff(whole.stats, s2) > 1e-4


def test_a_batch_that_does_not_split_into_micro_batches_is_refused():
    with pytest.raises(config_lib.ConfigError, match="does not split into"):
        config_lib.check(tiny_config(accumulate_steps=3))
    with pytest.raises(config_lib.ConfigError, match="accumulate_steps"):
        config_lib.check(tiny_config(accumulate_steps=0))


def test_an_accumulating_run_stops_and_resumes_bitwise(tmp_path):
    """The state is saved per update (never between micro-batches), so a stop and resume
    continue exactly."""
    config = lambda: tiny_config(accumulate_steps=2, ema_decay=0.9)   # noqa: E731
    loop.train_and_evaluate(config(), str(tmp_path / "straight"))
    stopped = loop.train_and_evaluate(config(), str(tmp_path / "stopped"), notice=StopAt(13))
    assert stopped == {"preempted": True, "step": 13}
    loop.train_and_evaluate(config(), str(tmp_path / "stopped"))
    for ema in (False, True):     # the moving average resumes bitwise too
        assert_trees_equal(restore_weights(tmp_path / "straight", 40, ema=ema),
                           restore_weights(tmp_path / "stopped", 40, ema=ema))


# ----------------------------------------------------------------------------- remat

FAMILIES = {"vgg": {}, "resnet": dict(model__name="resnet", model__variant="resnet18",
                                      model__width=0.125)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_remat_changes_no_result(family):
    """Recomputing each block in the backward pass gives the same updates and BatchNorm
    statistics (to float rounding: XLA may fuse the recomputation differently)."""
    batches = _batches(2)
    plain, plain_losses = _train(tiny_config(**FAMILIES[family]), batches)
    remat, remat_losses = _train(tiny_config(model__remat="blocks", **FAMILIES[family]),
                                 batches)
    assert remat_losses == pytest.approx(plain_losses, rel=1e-6)
    assert _max_diff(remat.params, plain.params) < 1e-6
    assert _max_diff(remat.stats, plain.stats) < 1e-6 if remat.stats else True


@pytest.mark.parametrize("family", list(FAMILIES))
def test_remat_keeps_only_block_outputs_for_the_backward_pass(family):
    """What JAX's autodiff keeps from the forward pass (the residuals of jax.vjp), per image:
    with remat=blocks a fraction of it (measured: VGG 1/5, ResNet-18 1/6 at 64 px), and at
    least one block output (the policy saves them)."""
    per_image = {}
    for remat in ("none", "blocks"):
        c = tiny_config(model__remat=remat, data__scale=64, data__crop=64, **FAMILIES[family])
        per_image[remat] = memory.residual_bytes_per_image(models.build(c.model, 16, 64))
    assert 0 < per_image["blocks"] < per_image["none"] / 3, per_image


def test_the_compiled_peak_counts_a_donated_argument_once():
    """x * s on 1000 float32: kept, the input and the output are both live (2 x 4000 bytes +
    the 4-byte scalar); donated, the output reuses the input's buffer (4000 + 4)."""
    x = jax.ShapeDtypeStruct((1000,), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    kept = memory.compiled(jax.jit(lambda a, b: a * b), x, s)
    donated = memory.compiled(jax.jit(lambda a, b: a * b, donate_argnums=0), x, s)
    assert kept["peak_bytes"] - kept["temp_bytes"] == 2 * 4000 + 4
    assert donated["peak_bytes"] - donated["temp_bytes"] == 4000 + 4


def test_the_plan_finds_the_largest_micro_batch_that_fits():
    """The search's answer fits and one more row does not (XLA's accounting, monotone in
    rows); nothing fits a budget below one row's step."""
    config = tiny_config()
    mesh = mesh_lib.make_mesh((("data", 1), ("model", 1)))
    one = memory.step_bytes(config, 16, 1, mesh)["peak_bytes"]
    budget = memory.step_bytes(config, 16, 6, mesh)["peak_bytes"] + 1
    rows, need = memory.largest_micro_batch(config, 16, budget, mesh)
    assert need["peak_bytes"] <= budget < memory.step_bytes(config, 16, rows + 1,
                                                            mesh)["peak_bytes"]
    assert rows >= 6
    assert memory.largest_micro_batch(config, 16, one - 1, mesh)[0] == 0


# ----------------------------------------------------------------------------- EMA

def test_the_moving_average_follows_its_recursion():
    """ema_t = d ema_{t-1} + (1 - d) w_t from ema_0 = w_0, by hand in numpy over 3 steps."""
    config = tiny_config(ema_decay=0.9)
    run = _one_device(config)
    state = run.state
    expected = jax.device_get(state.params)
    for b in _batches(3):
        state, _ = run.train_step(state, b)
        expected = jax.tree.map(lambda e, w: 0.9 * e + 0.1 * w, expected,
                                jax.device_get(state.params))
    assert _max_diff(jax.device_get(state.ema), expected) < 1e-6
    assert _max_diff(jax.device_get(state.ema), jax.device_get(state.params)) > 1e-4


def test_use_ema_evaluates_the_average_and_evaluate_reads_it_back(tmp_path):
    """With eval.use_ema the run's evaluations (and so the schedule's) score the average:
    its final numbers are the EMA's, as Trained (evaluate, ensemble, predict) reads them."""
    config = tiny_config(ema_decay=0.9, eval__use_ema=True)
    result = loop.train_and_evaluate(config, str(tmp_path))
    from deep_image.training.checkpoint import Trained
    trained = Trained(str(tmp_path))
    assert_trees_equal(trained.params, restore_weights(tmp_path, 40, ema=True))
    source = sources.get_source(config.data, config.data.eval_split)
    score = lambda params: Evaluator(trained.model, config, source,   # noqa: E731
                                     Protocol.quick(config), cache=False).run(
        params, "eval", "top1", trained.stats)
    assert score(restore_weights(tmp_path, 40, ema=True))["eval/loss"] == pytest.approx(
        result["eval/loss"], rel=1e-6)
    assert score(restore_weights(tmp_path, 40))["eval/loss"] != pytest.approx(
        result["eval/loss"], rel=1e-3)


def test_use_ema_needs_the_average():
    with pytest.raises(config_lib.ConfigError, match="needs the moving average"):
        config_lib.check(tiny_config(eval__use_ema=True))
    with pytest.raises(config_lib.ConfigError, match="ema_decay"):
        config_lib.check(tiny_config(ema_decay=1.0))
