"""Checkpoints with orbax: model state, the Grain iterator position and run metadata, saved
together under one step so a resumed run continues exactly where the saved one was.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or
SIGKILL mid-save leaves the previous checkpoint intact and the partial one is ignored.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from deep_image import config as config_lib
from deep_image import models
from deep_image.data.errors import DataError
from deep_image.parallel.layout import Layout, param_key, relayout
from deep_image.training.state import all_finite

CHECKPOINT_DIR = "checkpoints"    # a run's checkpoints: WORKDIR/checkpoints/STEP/


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINT_DIR)


class CheckpointError(ValueError):
    """A checkpoint that must not be resumed from: the message names a good one."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 1, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save, read_only=read_only)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        """The complete checkpoints' steps, oldest first."""
        return sorted(self._mgr.all_steps())

    def save(self, step: int, state, data_iter=None, meta: dict | None = None,
             *, wait: bool = False) -> None:
        self._mgr.wait_until_finished()   # orbax would wait for the previous save here too
        self._check_free_space(state)
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
        if wait:
            self._mgr.wait_until_finished()
        logging.info("checkpoint %s at step %d", "saved" if wait else "queued", step)

    def _check_free_space(self, state) -> None:
        """A save that cannot fit is refused before it starts: a full disk mid-write makes the
        async writers fail in a cascade of tracebacks (the last checkpoint stays good either
        way)."""
        need = sum(x.nbytes for x in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        if free < need:
            raise OSError(errno.ENOSPC, f"No space left on device ({free / 2**20:.1f} MiB free, "
                          f"a checkpoint needs {need / 2**20:.1f} MiB)", self.directory)

    def restore(self, abstract_state, data_iter=None, step: int | None = None, layout=None):
        """(state, step) from `step` or the latest checkpoint, or (None, None) if there is none.

        With `layout` (this run's parallel/layout.Layout): a checkpoint another mesh or
        parallelism wrote is converted to it, so a run resumes on another device count."""
        step = self._mgr.latest_step() if step is None else step
        if step is None:
            return None, None
        saved = (self.meta(step) or {}).get("layout")
        try:
            if layout is not None and saved is not None and saved != layout.describe():
                state = self._restore_relayout(step, abstract_state, saved, layout)
            else:
                state = self._mgr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state)))["state"]
        except ValueError as e:
            if "do not match" not in str(e) and "shape" not in str(e).lower():
                raise
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} holds a state of another shape than "
                "this config builds (the model, its classes, the optimizer's weight decay or "
                "clipping, the fine-tuning mode or config.ema_decay changed): resume with the "
                "run's own config.json settings, or train in a new --workdir") from None
        self._refuse_non_finite(step, state)
        if data_iter is not None:
            self._mgr.restore(step, args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(data_iter)))
        return state, step

    def _refuse_non_finite(self, step: int, state) -> None:
        """A state with NaN or inf values (written before saves were guarded) is never
        resumed: the error names the newest finite checkpoint and how to resume from it."""
        if bool(jax.device_get(jax.jit(all_finite)((state.params, state.opt_state)))):
            return
        older = [s for s in sorted(self._mgr.all_steps(), reverse=True) if s < step
                 and all(np.isfinite(x).all() for x in jax.tree.leaves(self.restore_params(s)))]
        advice = (f"the newest finite one is step {older[0]}: rerun with --resume_step="
                  f"{older[0]} (later checkpoints are moved to discarded_checkpoints/ in the "
                  "workdir)" if older else "no earlier one is finite: start over in a new "
                  "--workdir")
        raise CheckpointError(f"checkpoint {step} in {self.directory} holds non-finite "
                              f"parameters or momentum (NaN or inf); {advice}")

    def _restore_relayout(self, step, abstract_state, saved: dict, layout):
        """The saved state read whole onto this process's first device, its parameter and
        optimizer-state blocks converted from the saved layout to `layout` on the host, then
        placed: each device receives its blocks only."""
        old = Layout.from_description(saved)
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def saved_shape(path, a):
            key = param_key(path)
            shape = (old.leaves[key[0]][key[1]].stored_shape
                     if key and key[0] in old.leaves and len(a.shape) else a.shape)
            return jax.ShapeDtypeStruct(shape, a.dtype, sharding=here)
        target = jax.tree_util.tree_map_with_path(saved_shape, abstract_state)
        host = jax.device_get(self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"])
        host = relayout(host, old, layout)
        logging.warning("checkpoint %d was written on the mesh %s (FC layers split over %s); "
                        "converted to this run's mesh %s (FC layers split over %s)", step,
                        old.mesh_shape, old.fc_axis or "no axis", layout.mesh_shape,
                        layout.fc_axis or "no axis")
        return jax.tree.map(lambda x, a: jax.make_array_from_callback(
            a.shape, a.sharding, lambda idx: x[idx]), host, abstract_state)

    def restore_params(self, step: int) -> dict:
        """Only the model parameters of `step` (host arrays) in their canonical shapes, whatever
        mesh and layout wrote them (meta records the layout)."""
        return self.restore_weights(step)[0]

    def restore_weights(self, step: int, ema: bool = False) -> tuple[dict, dict]:
        """(parameters in their canonical shapes, statistics such as BatchNorm's) of `step`, as
        host arrays, whatever mesh and layout wrote them (meta records the layout). `ema`: the
        weights' moving average instead of the weights (config.eval.use_ema)."""
        # Read onto this process's first device: a 4-device run's checkpoint evaluates on one CPU.
        path = os.path.join(self.directory, str(step), "state")
        with ocp.StandardCheckpointer() as reader:
            tree = reader.metadata(path).item_metadata
            here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                                                 sharding=here), tree)
            state = jax.device_get(reader.restore(path, target))
        if ema and not state.get("ema"):
            raise DataError(f"{self.directory} step {step} keeps no moving average of the "
                            "weights: it was trained with config.ema_decay=0; evaluate it with "
                            "config.eval.use_ema=False")
        params, stats = state["ema" if ema else "params"], state.get("stats") or {}
        meta = self.meta(step) or {}
        if "params_layout" in meta:
            raise DataError(f"{self.directory} step {step} was written by an earlier version "
                             "of deep_image (parameter layout format 1); retrain, or read it "
                             "with that version")
        if "layout" not in meta:       # canonical (e.g. tools.import_weights)
            return params, stats
        return Layout.from_description(meta["layout"]).from_stored(params), stats

    def meta(self, step: int | None = None) -> dict | None:
        step = self._mgr.latest_step() if step is None else step
        if step is None:
            return None
        return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()


def write_weights(workdir: str, params: dict, stats: dict, class_names: list[str],
                  **meta) -> None:
    """Weights that were not trained here (imported, or freshly initialized) as step 0 of a
    checkpoint under WORKDIR, the form `config.init_from` reads: params, BatchNorm statistics
    (empty for VGG) and class names, with `meta` beside them."""
    ckpt = Checkpointer(checkpoint_dir(workdir), async_save=False)
    ckpt.save(0, {"params": params, "stats": stats},
              meta={"class_names": class_names, "num_classes": len(class_names), **meta},
              wait=True)
    ckpt.close()


class Trained:
    """A trained model read back from a workdir: config, model, params, stats (BatchNorm's),
    class names, step."""

    def __init__(self, workdir: str, config=None, step: int | None = None):
        path = checkpoint_dir(workdir)
        if not os.path.isdir(path):
            raise DataError(f"no checkpoints in {workdir}: train there first with "
                            f"`python -m deep_image.train --workdir={workdir} ...`")
        ckpt = Checkpointer(path, read_only=True)
        self.step = ckpt.latest_step() if step is None else step
        if self.step is None:
            raise DataError(f"no complete checkpoint in {path}")
        meta = ckpt.meta(self.step)
        if config is None:   # the run's config over today's defaults (keys added since)
            config = config_lib.base()
            with open(os.path.join(workdir, "config.json")) as f:
                config.update(json.load(f))
        self.config = config
        self.class_names = list(meta["class_names"])
        self.model = models.build(config.model, len(self.class_names), config.data.crop)
        self.params, self.stats = ckpt.restore_weights(self.step,
                                                       ema=config.eval.get("use_ema", False))
