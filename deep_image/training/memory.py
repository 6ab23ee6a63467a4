"""Memory planning: what a train step needs on a device, before a long run starts.

Two readings, both without running a step:
- `compiled`: XLA's own accounting of the compiled train step (`compiled.memory_analysis()`):
  arguments (the state and the batch) + outputs - what donation aliases + temporaries
  (activations kept for the backward pass, gradients, workspace). This is what a device must
  hold; it depends on the backend's compiler. XLA:CPU schedules a rematerialized forward pass
  as early as the saved one (jax-ml/jax#19822), so on CPU `config.model.remat` does not lower
  this figure; on GPU the scheduler keeps the recomputation next to its use.
- `residual_bytes`: what JAX's autodiff keeps from the forward pass for the backward pass
  (the residuals of `jax.vjp` of the model's features: activations, and the weights
  themselves), per batch; `residual_bytes_per_image` the part that grows with the batch.
  Backend independent, and the quantity `config.model.remat` trades for recomputation.

`largest_micro_batch` searches the micro-batch (rows per device per forward pass, i.e.
batch_size / devices / accumulate_steps) whose compiled step fits a memory size, so a user
knows what `config.accumulate_steps` to set (`python -m deep_image.bench.step --plan`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deep_image.parallel import mesh as mesh_lib


def compiled(train_step, state, batch) -> dict:
    """XLA's memory accounting of `train_step` compiled for (`state`, `batch`): arrays or
    ShapeDtypeStructs (nothing runs). `peak_bytes` = arguments + outputs - aliased + temps."""
    m = train_step.lower(state, batch).compile().memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes),
           "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes)}
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                         + out["temp_bytes"])
    return out


def residual_bytes(model, batch: int, dtype=jnp.float32) -> int:
    """Bytes the forward pass of the model's features keeps for the backward pass on `batch`
    images (the residuals of jax.vjp), under the model's own remat setting; shapes only."""
    params, stats = model.abstract_params, model.abstract_stats
    images = jax.ShapeDtypeStruct((batch, model.input_size, model.input_size, 3), dtype)

    def vjp_of(params, stats, images):
        return jax.vjp(lambda p: model.features(p, images, stats=stats, train=True,
                                                update_stats=True)[0], params)[1]
    residuals = jax.eval_shape(vjp_of, params, stats, images)
    return int(sum(np.prod(r.shape) * np.dtype(r.dtype).itemsize
                   for r in jax.tree.leaves(residuals)))


def residual_bytes_per_image(model) -> float:
    """The residuals one more image adds (the weights, also residuals, do not grow with the
    batch): (residual_bytes(9) - residual_bytes(1)) / 8."""
    return (residual_bytes(model, 9) - residual_bytes(model, 1)) / 8


def abstract_batch(config, rows: int, sharding=None) -> dict:
    """The ShapeDtypeStructs of a host-placement batch of `rows` global rows."""
    crop = config.data.crop
    return {"image": jax.ShapeDtypeStruct((rows, crop, crop, 3), jnp.uint8, sharding=sharding),
            "label": jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=sharding)}


def step_bytes(config, num_classes: int, micro_batch: int, mesh) -> dict:
    """The compiled memory of `config`'s train step on `mesh` with `micro_batch` rows per
    device in one pass (accumulate_steps = 1): its state and step built abstractly."""
    from deep_image.training import setup as setup_lib
    c = config.copy_and_resolve_references()
    c.accumulate_steps = 1
    c.batch_size = micro_batch * mesh.size
    run = setup_lib.build(c, num_classes, mesh=mesh, abstract=True)
    batch = abstract_batch(c, c.batch_size, mesh_lib.batch_sharding(mesh))
    return compiled(run.train_step, run.state, batch)


def largest_micro_batch(config, num_classes: int, budget: int, mesh, *,
                        limit: int = 4096) -> tuple[int, dict]:
    """(the largest rows per device per pass whose compiled step needs at most `budget` bytes
    per device, its memory accounting); (0, the accounting of 1 row) if even one row does not
    fit. Doubling, then bisection: ~2 log2(answer) compilations."""
    cache: dict[int, dict] = {}

    def need(m: int) -> dict:
        if m not in cache:
            cache[m] = step_bytes(config, num_classes, m, mesh)
        return cache[m]
    if need(1)["peak_bytes"] > budget:
        return 0, need(1)
    lo, hi = 1, 2
    while hi <= limit and need(hi)["peak_bytes"] <= budget:
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo, need(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid)["peak_bytes"] <= budget else (lo, mid)
    return lo, need(lo)
