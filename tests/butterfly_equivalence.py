"""Run with N simulated devices (tests/test_parallel.py starts it): butterfly data parallelism
vs single-device training on the same global batches. Prints one JSON line."""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_config  # noqa: E402
from deep_image import models  # noqa: E402
from deep_image.parallel import butterfly as bf  # noqa: E402
from deep_image.parallel import mesh as mesh_lib  # noqa: E402
from deep_image.training import state as state_lib  # noqa: E402
from deep_image.training import step as step_lib  # noqa: E402

STEPS = 3


def main():
    n = jax.device_count()
    config = tiny_config(batch_size=16)
    model = models.build(config.model, 16, config.data.crop)
    tx = state_lib.make_optimizer(config.optimizer)
    plateau = state_lib.make_plateau(config.schedule)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                "label": rng.integers(0, 16, 16).astype(np.int32)} for _ in range(STEPS)]

    # One device.
    one = mesh_lib.make_mesh((("data", 1), ("model", 1)), jax.devices()[:1])
    state, sh = state_lib.create(model, tx, plateau, config, one, ())
    init_params = jax.device_get(state.params)
    single = step_lib.make_train_step(model, tx, config, sh, mesh_lib.batch_sharding(one),
                                      mesh_lib.replicated(one))
    ref_losses, ref_params = [], []
    for b in batches:
        state, m = single(state, b)
        ref_losses.append(float(m["train/loss"]))
        ref_params.append(jax.device_get(state.params))

    # N devices: same initial weights, as owned parts.
    mesh = mesh_lib.make_mesh((("data", -1), ("model", 1)))
    model_data = len(sys.argv) > 1 and sys.argv[1] == "model_data"
    parts = (bf.to_model_data(init_params, n) if model_data else bf.to_parts(init_params, n))
    pstate = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=parts,
                                  opt_state=tx.init(parts), plateau=plateau.init(parts),
                                  rng=jax.device_get(state.rng))
    make = (step_lib.make_model_data_train_step if model_data
            else step_lib.make_butterfly_train_step)
    step, shardings = make(model, tx, config, mesh, pstate)
    pstate = jax.device_put(pstate, shardings)
    hlo = step.lower(pstate, batches[0]).compile().as_text()
    losses, diffs = [], []
    for i, b in enumerate(batches):
        pstate, m = step(pstate, b)
        losses.append(float(m["train/loss"]))
        host = jax.device_get(pstate.params)
        got = (bf.from_model_data(host, model.abstract_params) if model_data
               else bf.from_parts(host, model.abstract_params))
        diffs.append(max(float(np.max(np.abs(a - r))) for a, r in
                         zip(jax.tree.leaves(got), jax.tree.leaves(ref_params[i]))))
    shard_sizes = {str(len(x.addressable_shards)): x.addressable_shards[0].data.shape[0]
                   for x in jax.tree.leaves(pstate.params)[:1]}
    fc_shards = {f"{layer}/{name}": [list(x.shape), list(x.addressable_shards[0].data.shape)]
                 for layer, leaves in pstate.params.items() for name, x in leaves.items()
                 if layer.startswith("fc") or layer == "conv1_1"}
    all_reduce_shapes = re.findall(r"= (\S+) all-reduce\(", hlo)
    print(json.dumps({
        "devices": n, "ref_losses": ref_losses, "losses": losses, "max_param_diff": diffs,
        "reduce_scatter": hlo.count("reduce-scatter("), "all_gather": hlo.count("all-gather("),
        "all_reduce_shapes": all_reduce_shapes, "shard_sizes": shard_sizes,
        "shards": fc_shards,
    }))


if __name__ == "__main__":
    main()
