"""Run with 8 simulated devices (tests/test_parallel.py starts it): the §3 parallel train step
vs single-device training on the same global batches. Prints one JSON line.

    python tests/butterfly_equivalence.py PARALLELISM DATA MODEL [columns] [--family=resnet]
        [--bf16]

`columns`: other sharding rules (FC1 whole, FC2 and FC3 by columns), so the step's other
ways of computing an FC layer are checked too. `--family=resnet`: ResNet-18 at 1/8 width,
whose BatchNorm statistics (over the global batch) must match one device's too. `--placement=device`
(sharded: the device cache split over the 8 devices; replicated: whole on each): the steps take
the device cache and draw and augment (all six ops) their own batches, which must be the
global batches one device draws. `--accumulate=K`: also each step from one device's
state with K micro-batches per update on the mesh, against one device's whole-batch step, and
the collectives of that program. `--bf16`:
also one bfloat16 step on the mesh with every leaf in parts, whose lazy update gathers each
weight in the dtype the forward pass computes it in, against the same step gathering float32
(what the forward pass then rounds): they must be bitwise equal.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_config  # noqa: E402
from deep_image import config as config_lib  # noqa: E402
from deep_image.bench.scaling import collectives, lowered_types  # noqa: E402
from deep_image.data import augment, device_cache  # noqa: E402
from deep_image.models.base import Model  # noqa: E402
from deep_image.parallel import layout as layout_lib  # noqa: E402
from deep_image.parallel import mesh as mesh_lib  # noqa: E402
from deep_image.training import state as state_lib  # noqa: E402
from deep_image.training import setup as setup_lib  # noqa: E402
from deep_image.training import step as step_lib  # noqa: E402

STEPS = 3
COLUMNS = ((r"^fc1/", ()), (r"^fc[23]/kernel$", (None, "model")), (r"^fc[23]/bias$", ("model",)))
# ResNet's one FC layer split by output columns over the FC axis (its bias with it)
RESNET_RULES = ((r"^fc/kernel$", (None, "model")), (r"^fc/bias$", ("model",)))


def collective_summary(hlo: str, emitted: dict | None = None) -> dict:
    """Counts of reduce-scatters and all-gathers, and the shape of every array any all-reduce
    returns (tuple-shaped and async `-start` all-reduces included), read by the scaling
    report's HLO parser (`emitted`: the element types JAX emitted, which XLA's CPU backend
    promotes to float32; bench.scaling.lowered_types)."""
    ops = collectives(hlo, 8, emitted)
    return {"reduce_scatter": sum(o["kind"] == "reduce-scatter" for o in ops),
            # the gradient synchronization's and the lazy update's collectives (the rest:
            # FC activations over the FC axis, one set per micro-batch)
            "sync_collectives": sorted(f"{o['kind']} {o['shapes']}" for o in ops
                                       if o["scope"] in ("butterfly_sync", "lazy_gather")),
            "all_gather": sum(o["kind"] == "all-gather" for o in ops),
            # the lazy update's gathers, each with the shapes it returns (a merged gather
            # returns a tuple of several layers' parts)
            "lazy_gathers": [o["shapes"] for o in ops
                             if o["kind"] == "all-gather" and o["scope"] == "lazy_gather"],
            "all_reduce_shapes": [s for o in ops if o["kind"] == "all-reduce"
                                  and "batch_statistics" not in o["op_names"]
                                  for s in o["shapes"]],
            # cross-device BatchNorm: the sums of the global batch's statistics
            "batch_stat_reduces": sum(o["kind"] == "all-reduce" and "batch_statistics"
                                      in o["op_names"] for o in ops)}


def max_diff(a, b) -> float:
    """The largest absolute difference between two trees of the same leaves (0 if empty)."""
    la, lb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    if [p for p, _ in la] != [p for p, _ in lb]:
        raise AssertionError("the trees have different leaves")
    return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for (_, x), (_, y) in zip(la, lb, strict=True)), default=0.0)


def setup(parallelism: str, family: str = "vgg"):
    """The config and the STEPS global batches every mode trains on (docs/xla_cpu/chaos.py
    measures the ResNet trajectory on the same)."""
    config = tiny_config(batch_size=16, parallelism=parallelism)
    if family == "resnet":     # the second family: BatchNorm statistics in the state
        config.model.name, config.model.variant = "resnet", "resnet18"
        config.model.width = 1 / 8    # at 1/16 the init's constant temporaries rival the weights
        config.sharding_rules = RESNET_RULES
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                "label": rng.integers(0, 16, 16).astype(np.int32)} for _ in range(STEPS)]
    return config, batches


def bf16_gather(config, batch, mesh) -> dict:
    """One bfloat16 step on `mesh` (every leaf in parts), gathering weights in their forward
    dtypes vs in float32: {"bitwise": equal outputs, "lazy_gathers": the gathers' shapes}."""
    config = config.copy_and_resolve_references()
    config.model.dtype, config.whole_below = "bfloat16", 0
    run = setup_lib.build(config, 16, mesh=mesh)
    host = jax.device_get(run.state)
    # weights that bfloat16 cannot hold exactly (BatchNorm starts at scale 1, bias 0, which it
    # can: a BatchNorm gathered in bfloat16 would pass from there)
    rng = np.random.default_rng(1)
    host = host.replace(params=jax.tree.map(
        lambda x: (x * (1 + 1e-3 * rng.standard_normal(x.shape)) + 1e-3).astype(x.dtype),
        host.params))
    shardings = jax.tree.map(lambda x: x.sharding, run.state)
    stored = step_lib.make_parallel_train_step(_StoredDtypes(run.model), run.tx, config, mesh,
                                               run.layout, run.state)
    outs = [jax.device_get(step(jax.device_put(host, shardings), batch))
            for step in (run.train_step, stored)]
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True))
    lowered = run.train_step.lower(run.state, batch)
    gathers = collective_summary(lowered.compile().as_text(),
                                 lowered_types(lowered.as_text()))["lazy_gathers"]
    return {"bitwise": same, "lazy_gathers": gathers,
            "forward_dtypes": {f"{k}/{n}": jnp.dtype(d).name
                               for k, v in run.model.forward_dtypes().items()
                               for n, d in v.items()}}


def device_caches(config, mesh, shards: int):
    """The device cache of 64 random 40x40 images with labels (and the plan) for one device
    and for `mesh`: the same arrays, placed as each steps needs them."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (shards, 64 // shards, 40, 40, 3), dtype=np.uint8)
    labels = rng.integers(0, 16, (shards, 64 // shards)).astype(np.int32)
    axes = tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)
    plan = device_cache.Plan(shards=shards, axes=axes, images=64, scale=40,
                             bytes_per_device=0, left_per_device=0, crop=config.data.crop,
                             batch_size=config.batch_size, seed=config.seed,
                             settings=augment.Settings.of(config_lib.all_six()))
    on_mesh = {k: jax.device_put(v, device_cache.sharding(plan, mesh))
               for k, v in (("images", images), ("labels", labels))}
    return plan, {"images": images, "labels": labels}, on_mesh


class _StoredDtypes:
    """A model whose lazy update gathers every weight as stored (float32)."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward_dtypes(self):
        return Model.forward_dtypes(self._model)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    family = next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--family=")), "vgg")
    parallelism, data, model_axis = args[0], int(args[1]), int(args[2])
    config, batches = setup(parallelism, family)
    if args[3:] == ["columns"]:
        config.sharding_rules = COLUMNS
    bf16 = bf16_gather(config, batches[0], mesh_lib.make_mesh(
        (("data", data), ("model", model_axis)))) if "--bf16" in sys.argv else None

    placement = next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--placement=")),
                     "host")
    mesh = mesh_lib.make_mesh((("data", data), ("model", model_axis)))
    mesh_batches = batches
    if placement != "host":     # every step takes the cache and draws its own batch
        plan, host_cache, mesh_cache = device_caches(config, mesh,
                                                     8 if placement == "sharded" else 1)
        batches, mesh_batches = [host_cache] * STEPS, [mesh_cache] * STEPS

    # One device.
    one = setup_lib.build(config, 16, mesh=mesh_lib.make_mesh((("data", 1), ("model", 1)),
                                                              jax.devices()[:1]))
    if placement != "host":
        one.train_step = step_lib.build_train_step(one.model, one.tx, config, one.mesh,
                                                   one.layout, one.state, plan)
    model, canonical, state = one.model, one.layout, one.state
    init_params = jax.device_get(canonical.from_stored(jax.device_get(state.params)))
    ref_losses, ref_params, ref_stats, ref_inputs = [], [], [], []
    for b in batches:
        ref_inputs.append(jax.device_get(state))
        state, m = one.train_step(state, b)
        ref_losses.append(float(m["train/loss"]))
        ref_params.append(jax.device_get(state.params))
        ref_stats.append(jax.device_get(state.stats))

    # The mesh: created already sharded from the same seed (so the same initial weights).
    run = setup_lib.build(config, 16, mesh=mesh)
    if placement != "host":
        run.train_step = step_lib.build_train_step(run.model, run.tx, config, mesh, run.layout,
                                                   run.state, plan)
    mesh, layout, pstate, step = run.mesh, run.layout, run.state, run.train_step
    init_diff = max_diff(layout.from_stored(jax.device_get(pstate.params)), init_params)
    # what creating the sharded state costs one device (params + momentum out, temporaries)
    init = state_lib.initializer(model, run.tx, run.plateau_tx, layout, mesh)
    key = jax.random.PRNGKey(config.seed)
    memory = jax.jit(init, out_shardings=layout.shardings(jax.eval_shape(init, key), mesh),
                     compiler_options=state_lib.init_compiler_options(mesh)) \
        .lower(key).compile().memory_analysis()
    hlo = step.lower(pstate, mesh_batches[0]).compile().as_text()

    def against_one_device(i, out, metrics):
        """(loss, largest parameter difference, largest statistic difference) of a mesh step's
        output against one device's step i."""
        got = layout.from_stored(jax.device_get(out.params))
        return (float(metrics["train/loss"]), max_diff(got, ref_params[i]),
                max_diff(jax.device_get(out.stats), ref_stats[i]))

    free = []                    # the mesh's own trajectory
    for i, b in enumerate(mesh_batches):
        pstate, m = step(pstate, b)
        free.append(against_one_device(i, pstate, m))
    # Forced: every step also from one device's own state before it (converted to the mesh's
    # layout), so each step is compared at the same point. The free-running comparison above
    # can only be as close as the trajectory is stable, and ResNet's is not (test_parallel.py).
    shardings = jax.tree.map(lambda x: x.sharding, pstate)
    forced = []
    for i, b in enumerate(mesh_batches):
        start = jax.device_put(layout_lib.relayout(ref_inputs[i], canonical, layout), shardings)
        forced.append(against_one_device(i, *step(start, b)))
    accumulated = None
    k = next((int(a.split("=")[1]) for a in sys.argv[1:] if a.startswith("--accumulate=")), 1)
    if k > 1:       # the same steps as k micro-batches per update (host batches only)
        acc_config = config.copy_and_resolve_references()
        acc_config.accumulate_steps = k
        acc_step = step_lib.build_train_step(run.model, run.tx, acc_config, mesh, layout,
                                             pstate)
        runs = [against_one_device(i, *acc_step(jax.device_put(layout_lib.relayout(
            ref_inputs[i], canonical, layout), shardings), b)) for i, b in enumerate(batches)]
        acc_summary = collective_summary(acc_step.lower(pstate, batches[0]).compile().as_text())
        accumulated = {"k": k, "losses": [r[0] for r in runs], "param_diff": [r[1] for r in runs],
                       "sync_collectives": acc_summary["sync_collectives"],
                       "sync_collectives_once": collective_summary(hlo)["sync_collectives"]}
    (losses, diffs, stat_diffs), (forced_losses, forced_diffs, forced_stat_diffs) = (
        map(list, zip(*free, strict=True)), map(list, zip(*forced, strict=True)))
    # per leaf: [stored global shape, one device's shard shape, number of distinct shards]
    shards = {f"{layer}/{name}": [list(x.shape), list(x.addressable_shards[0].data.shape),
                                  len({str(s.index) for s in x.addressable_shards})]
              for layer, leaves in pstate.params.items() for name, x in leaves.items()}
    momentum = {f"{layer}/{name}": list(x.addressable_shards[0].data.shape)
                for layer, leaves in pstate.opt_state[-1].trace.items()
                for name, x in leaves.items()}
    print(json.dumps({
        "devices": mesh.size, "ref_losses": ref_losses, "losses": losses,
        "max_param_diff": diffs, "forced_losses": forced_losses,
        "forced_param_diff": forced_diffs, "forced_stat_diff": forced_stat_diffs,
        "init_diff": init_diff, "max_stat_diff": stat_diffs,
        "num_stats": len(jax.tree.leaves(pstate.stats)),
        "init_output_bytes": memory.output_size_in_bytes,
        "init_temp_bytes": memory.temp_size_in_bytes, "param_bytes": model.num_params() * 4,
        **collective_summary(hlo),
        "shards": shards, "momentum_shards": momentum,
        "flat_leaves": {f"{k}/{n}": [1, lf.owners * lf.part] for k, v in layout.leaves.items()
                        for n, lf in v.items() if lf.flat},
        "whole_leaves": {f"{k}/{n}": list(lf.local_shape) for k, v in layout.leaves.items()
                         for n, lf in v.items() if lf.whole},
        "bf16": bf16, "accumulated": accumulated,
        "local_shapes": {f"{k}/{n}": list(lf.local_shape) for k, v in layout.leaves.items()
                         for n, lf in v.items()},
    }))


if __name__ == "__main__":
    main()
