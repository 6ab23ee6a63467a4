"""Stop notices: SLURM's SIGTERM before preemption or the time limit, a requeue, or Ctrl-C.

A notice counts from the moment the process starts (`StopNotice.install()` runs before data,
model and compilation), and every process of a run stops at the same step:
- one process: our handlers record the notice; repeated SIGTERMs (SLURM sends two when
  GraceTime is 0) are one notice; a second Ctrl-C aborts at once, as users expect;
- several processes: JAX's preemption notifier, which `jax.distributed.initialize` installs
  on SIGTERM, propagates a notice on any process to all of them, and
  `multihost_utils.reached_preemption_sync_point(step)`, asked at every step, names one step
  for all (the next after the furthest step any process has reached). Ctrl-C is turned into
  a SIGTERM so that it takes the same path.
The loop then saves a checkpoint at that step and the run exits with REQUEUE_EXIT_CODE, which
launch/slurm/train.sbatch turns into a requeue.
"""

from __future__ import annotations

import logging
import os
import signal

REQUEUE_EXIT_CODE = 75    # EX_TEMPFAIL: stopped by a notice, checkpoint saved; resume later


class StopNotice:
    """Whether this run has been told to stop, and at which step all its processes stop."""

    def __init__(self):
        self.received: str | None = None
        self._ctrl_c = 0
        self._old: dict = {}
        self._multi = False

    def install(self) -> "StopNotice":
        import jax
        self._multi = jax.process_count() > 1
        if not self._multi:      # JAX's notifier owns SIGTERM when it runs several processes
            self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_term)
        self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_int)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _on_term(self, signum, frame):
        if self.received is None:
            logging.warning("received SIGTERM: saving a checkpoint at the next step, then "
                            "stopping")
        self.received = self.received or "SIGTERM"

    def _on_int(self, signum, frame):
        self._ctrl_c += 1
        if self._ctrl_c > 1:
            raise KeyboardInterrupt
        logging.warning("received Ctrl-C: saving a checkpoint at the next step, then stopping "
                        "(Ctrl-C again to abort without saving)")
        self.received = "SIGINT"
        if self._multi:          # all processes must agree on the stop step: JAX's path
            os.kill(os.getpid(), signal.SIGTERM)

    def pending(self) -> bool:
        """A notice arrived (this process); in a multi-process run only `stop_at` decides."""
        return self.received is not None

    def stop_at(self, step: int) -> bool:
        """Whether to save and stop after `step`; every process gets the same answer at the
        same step (call it at every step)."""
        if self._multi:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None
