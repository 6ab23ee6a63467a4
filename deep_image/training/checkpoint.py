"""Checkpoints with orbax: model state, the Grain iterator position and run metadata, saved
together under one step so a resumed run continues exactly where the saved one was.

Orbax writes each step into a temporary directory and renames it when complete, so a crash or
SIGKILL mid-save leaves the previous checkpoint intact and the partial one is ignored.
"""

from __future__ import annotations

import logging
import os

import grain
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, *, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state, data_iter=None, meta: dict | None = None,
             *, wait: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
        if wait:
            self._mgr.wait_until_finished()
        logging.info("checkpoint %s at step %d", "saved" if wait else "queued", step)

    def restore(self, abstract_state, data_iter=None, step: int | None = None):
        """(state, step) from `step` or the latest checkpoint, or (None, None) if there is none."""
        step = self._mgr.latest_step() if step is None else step
        if step is None:
            return None, None
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._mgr.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], step

    def meta(self, step: int | None = None) -> dict | None:
        step = self._mgr.latest_step() if step is None else step
        if step is None:
            return None
        return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
