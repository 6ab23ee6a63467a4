"""Where training reports go: WORKDIR/metrics.jsonl (one JSON object per line, with `step`),
TensorBoard event files in WORKDIR/tensorboard, and a progress bar on the terminal.

On resume, records after the restored step are dropped (from the JSONL file, and purged by
TensorBoard) so that a plotted curve never shows the lost steps twice.
"""

from __future__ import annotations

import json
import math
import os
import time

import tqdm


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it
    is installed, only to accept its tensors (2.6 s at every start on 2 cores; we write floats).
    A torch already imported stays; one imported later imports normally."""
    import sys
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None      # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


def _drop_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except json.JSONDecodeError:   # a line cut by a crash mid-write
                continue
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


class MetricsWriter:
    def __init__(self, workdir: str, *, start_step: int, total_steps: int,
                 batch_size: int, progress: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            _drop_after(self.path, start_step)
            try:
                self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"),
                                         purge_step=start_step + 1 if start_step else None)
            except ImportError:   # TensorBoard files are optional; the JSONL is not
                self._tb = None
        self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step",
                              dynamic_ncols=True, disable=not (progress and enabled),
                              mininterval=1.0)
        self._batch = batch_size
        self._last = (start_step, time.perf_counter())

    def step(self, n: int = 1) -> None:
        self._bar.update(n)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: float(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(float(v)):
                    self._tb.add_scalar(k, float(v), step)
            self._tb.flush()

    def train_rate(self, step: int) -> float:
        """Images/s since the previous call (called at log points, after a host sync)."""
        s0, t0 = self._last
        now = time.perf_counter()
        self._last = (step, now)
        return (step - s0) * self._batch / max(now - t0, 1e-9)

    def progress(self, **fields) -> None:
        self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                               for k, v in fields.items()}, refresh=False)

    def print(self, text: str) -> None:
        if self.enabled:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
