"""Run with 8 simulated devices (tests/test_parallel.py starts it): the §3 parallel train step
vs single-device training on the same global batches. Prints one JSON line.

    python tests/butterfly_equivalence.py PARALLELISM DATA MODEL [columns]

`columns`: other sharding rules (FC1 whole, FC2 and FC3 by columns), so the step's other
ways of computing an FC layer are checked too.
"""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_config  # noqa: E402
from deep_image import models  # noqa: E402
from deep_image.bench.scaling import collectives  # noqa: E402
from deep_image.parallel import layout as layout_lib  # noqa: E402
from deep_image.parallel import mesh as mesh_lib  # noqa: E402
from deep_image.training import state as state_lib  # noqa: E402
from deep_image.training import step as step_lib  # noqa: E402

STEPS = 3
COLUMNS = ((r"^fc1/", ()), (r"^fc[23]/kernel$", (None, "model")), (r"^fc[23]/bias$", ("model",)))


def collective_summary(hlo: str) -> dict:
    """Counts of reduce-scatters and all-gathers, and the shape of every array any all-reduce
    returns (tuple-shaped and async `-start` all-reduces included), read by the scaling
    report's HLO parser."""
    ops = collectives(hlo, 8)
    return {"reduce_scatter": sum(o["kind"] == "reduce-scatter" for o in ops),
            "all_gather": sum(o["kind"] == "all-gather" for o in ops),
            # the lazy update's gathers, each with the shapes it returns (a merged gather
            # returns a tuple of several layers' parts)
            "lazy_gathers": [o["shapes"] for o in ops
                             if o["kind"] == "all-gather" and o["scope"] == "lazy_gather"],
            "all_reduce_shapes": [s for o in ops if o["kind"] == "all-reduce"
                                  for s in o["shapes"]]}


def main():
    parallelism, data, model_axis = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = tiny_config(batch_size=16, parallelism=parallelism)
    if sys.argv[4:] == ["columns"]:
        config.sharding_rules = COLUMNS
    model = models.build(config.model, 16, config.data.crop)
    tx = state_lib.make_optimizer(config.optimizer)
    plateau = state_lib.make_plateau(config.schedule)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                "label": rng.integers(0, 16, 16).astype(np.int32)} for _ in range(STEPS)]

    # One device.
    one = mesh_lib.make_mesh((("data", 1), ("model", 1)), jax.devices()[:1])
    canonical = layout_lib.plan(model.abstract_params, dict(one.shape), parallelism,
                                config.sharding_rules)
    state, sh = state_lib.create(model, tx, plateau, config, one, canonical)
    single = step_lib.make_train_step(model, tx, config, sh, mesh_lib.batch_sharding(one),
                                      mesh_lib.replicated(one))
    ref_losses, ref_params = [], []
    for b in batches:
        state, m = single(state, b)
        ref_losses.append(float(m["train/loss"]))
        ref_params.append(jax.device_get(state.params))

    # The mesh: created already sharded from the same seed (so the same initial weights).
    mesh = mesh_lib.make_mesh((("data", data), ("model", model_axis)))
    layout = layout_lib.plan(model.abstract_params, dict(mesh.shape), parallelism,
                             config.sharding_rules)
    pstate, _ = state_lib.create(model, tx, plateau, config, mesh, layout)
    init_diff = max(float(np.max(np.abs(a - r))) for a, r in zip(
        jax.tree.leaves(layout.from_stored(jax.device_get(pstate.params))),
        jax.tree.leaves(canonical.from_stored(jax.device_get(
            state_lib.create(model, tx, plateau, config, one, canonical)[0].params)))))
    # what creating the sharded state costs one device (params + momentum out, temporaries)
    init = state_lib.initializer(model, tx, plateau, layout, mesh)
    key = jax.random.PRNGKey(config.seed)
    memory = jax.jit(init, out_shardings=layout.shardings(jax.eval_shape(init, key), mesh)) \
        .lower(key).compile().memory_analysis()
    step = step_lib.make_parallel_train_step(model, tx, config, mesh, layout, pstate)
    hlo = step.lower(pstate, batches[0]).compile().as_text()
    losses, diffs = [], []
    for i, b in enumerate(batches):
        pstate, m = step(pstate, b)
        losses.append(float(m["train/loss"]))
        got = layout.from_stored(jax.device_get(pstate.params))
        diffs.append(max(float(np.max(np.abs(a - r))) for a, r in
                         zip(jax.tree.leaves(got), jax.tree.leaves(ref_params[i]))))
    # per leaf: [stored global shape, one device's shard shape, number of distinct shards]
    shards = {f"{layer}/{name}": [list(x.shape), list(x.addressable_shards[0].data.shape),
                                  len({str(s.index) for s in x.addressable_shards})]
              for layer, leaves in pstate.params.items() for name, x in leaves.items()}
    momentum = {f"{layer}/{name}": list(x.addressable_shards[0].data.shape)
                for layer, leaves in pstate.opt_state[-1].trace.items()
                for name, x in leaves.items()}
    print(json.dumps({
        "devices": mesh.size, "ref_losses": ref_losses, "losses": losses,
        "max_param_diff": diffs, "init_diff": init_diff,
        "init_output_bytes": memory.output_size_in_bytes,
        "init_temp_bytes": memory.temp_size_in_bytes, "param_bytes": model.num_params() * 4,
        **collective_summary(hlo),
        "shards": shards, "momentum_shards": momentum,
        "flat_leaves": {f"{k}/{n}": [1, lf.owners * lf.part] for k, v in layout.leaves.items()
                        for n, lf in v.items() if lf.flat},
        "local_shapes": {f"{k}/{n}": list(lf.local_shape) for k, v in layout.leaves.items()
                         for n, lf in v.items()},
    }))


if __name__ == "__main__":
    main()
