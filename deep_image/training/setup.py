"""Everything a train step needs, built from a config in one place: the mesh, the model, the
optimizer and schedule, the parameter layout, the (sharded) train state and the step. The
training loop, both benchmarks and the parallel equivalence tests all start here."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from deep_image import models
from deep_image.parallel import layout as layout_lib
from deep_image.parallel import mesh as mesh_lib
from deep_image.training import state as state_lib
from deep_image.training import step as step_lib


@dataclasses.dataclass
class Setup:
    mesh: Any
    model: Any              # models/base.py Model
    tx: Any                 # the SGD direction (frozen layers get none)
    plateau_tx: Any         # §5.1 reduce-on-plateau
    layout: Any             # parallel/layout.py Layout
    state: Any              # TrainState: arrays, or ShapeDtypeStructs with `abstract`
    shardings: Any          # of the state's leaves
    train_step: Any


def build(config, num_classes: int, *, mesh=None, abstract: bool = False) -> Setup:
    """The setup of `config` for `num_classes` on `mesh` (default: config.mesh over every
    device). `abstract`: shapes and shardings only, nothing allocated (for compiling ahead)."""
    mesh = mesh if mesh is not None else mesh_lib.make_mesh(config.mesh)
    model = models.build(config.model, num_classes, config.data.crop)
    tx = state_lib.make_optimizer(config.optimizer,
                                  state_lib.trained_layers(model, config.finetune))
    plateau_tx = state_lib.make_plateau(config.schedule)
    # §3: where each parameter lives (config.sharding_rules, config.parallelism, the mesh)
    layout = layout_lib.plan(model.abstract_params, dict(mesh.shape), config.parallelism,
                             config.sharding_rules, head_layers=model.head_layers,
                             whole_below=config.whole_below)
    if abstract:
        state = state_lib.abstract_state(model, tx, plateau_tx, mesh, layout,
                                         ema=config.ema_decay > 0)
        shardings = jax.tree.map(lambda x: x.sharding, state)
    else:
        state, shardings = state_lib.create(model, tx, plateau_tx, config, mesh, layout)
    train_step = step_lib.build_train_step(model, tx, config, mesh, layout, state)
    return Setup(mesh, model, tx, plateau_tx, layout, state, shardings, train_step)
