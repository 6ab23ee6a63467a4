"""One run of the claims study, in its own process: train (experiments/claims.py), score the
splits its claims need, and write its record into the results folder:

    RESULTS/NAME.json   the result: final metrics, the validation curve (step, lr, val top-1)
    RESULTS/NAME.npz    the posteriors of each evaluation (float16, compressed)

The results folder is small and kept in the repository (docs/claims/results); checkpoints,
rendered data and compiled programs live in the work folder (runs/claims, not kept). A run
with a record is never redone; an interrupted one resumes from its checkpoints (the training
loop's own resume).

    python -m deep_image.study.runs WORK RESULTS RUN_JSON
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time

import numpy as np

EXPERIMENT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments", "claims.py")

# What a run may be scored on: name -> (split, dense multi-scale + flip protocol?)
EVALUATIONS = {
    "val": ("val", False),                    # the split decisions may read
    "test": ("test", False),                  # one centre crop at the training scale
    "test_shifted": ("test_shifted", False),  # the same birds under harsher capture (§5.5)
    "train": ("train", False),                # the training images, unaugmented (overfitting)
    "test_dense": ("test", True),             # §5.1: whole image, several scales, + flip
}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str                     # e.g. all6_p10_f20
    arg: str                      # experiments/claims.py:ARG
    init: str = ""                # the run it fine-tunes from
    evaluations: tuple[str, ...] = ()

    def config(self, work: str):
        spec = importlib.util.spec_from_file_location("claims_experiment", EXPERIMENT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        c = module.get_config(self.arg)
        c.data.synthetic.prerendered = data_dir(work)
        if self.init:
            c.init_from = run_dir(work, self.init)
        return c

    def command(self, work: str) -> str:
        """The train command a user runs (from the repository) to redo this run alone."""
        rel = os.path.relpath(work)
        extra = f" --config.init_from={run_dir(rel, self.init)}" if self.init else ""
        return (f"python -m deep_image.train --config=experiments/claims.py:{self.arg} "
                f"--workdir={run_dir(rel, self.name)} --config.data.synthetic.prerendered="
                f"{data_dir(rel)}{extra}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Run":
        d = json.loads(text)
        return cls(**{**d, "evaluations": tuple(d["evaluations"])})


def run_dir(work: str, name: str) -> str:
    return os.path.join(work, "runs", name)


def data_dir(work: str) -> str:
    return os.path.join(work, "data")


def result(results: str, name: str) -> dict | None:
    path = os.path.join(results, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def posteriors(results: str, name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(results, f"{name}.npz")) as z:
        return {k: z[k].astype(np.float32) if k.endswith("/probs") else z[k] for k in z.files}


def curve(rows: list[dict]) -> dict:
    """The run's validation curve: every evaluation's step, the rate then, val top-1 (a
    resumed run's repeated evaluations: the last one)."""
    points, lr = {}, None
    for r in sorted(rows, key=lambda r: r["step"]):
        lr = r.get("train/lr", lr)
        if "val/top1" in r:
            points[r["step"]] = (lr, r["val/top1"])
    steps = sorted(points)
    return {"step": steps, "lr": [points[s][0] for s in steps],
            "val_top1": [points[s][1] for s in steps]}


def _write_atomic(path: str, write) -> None:
    """write(tmp) then rename: a reader sees the whole file or none (tmp keeps the suffix,
    which np.savez would otherwise add)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.{os.getpid()}.tmp{ext}"
    write(tmp)
    os.replace(tmp, path)


def _dump_json(record: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


def execute(work: str, results: str, run: Run) -> dict:
    """Trains and evaluates `run` in this process; returns (and writes) its record."""
    from deep_image.data import sources
    from deep_image.evaluation.evaluator import Evaluator, Protocol
    from deep_image.training import loop
    from deep_image.training.checkpoint import Trained
    from deep_image.training.preemption import REQUEUE_EXIT_CODE

    workdir = run_dir(work, run.name)
    config = run.config(work)
    t0 = time.time()
    summary = loop.train_and_evaluate(config, workdir)
    if summary.get("preempted"):      # stopped by a notice, checkpoint saved: not done
        sys.exit(REQUEUE_EXIT_CODE)
    train_seconds = time.time() - t0
    trained = Trained(workdir, config)
    arrays, metrics = {}, {}
    for key in run.evaluations:
        split, dense = EVALUATIONS[key]
        protocol = Protocol.of(config) if dense else Protocol.quick(config)
        source = sources.get_source(config.data, split)
        probs, labels = Evaluator(trained.model, config, source, protocol,
                                  cache=False).posteriors(trained.params, trained.stats)
        arrays[f"{key}/probs"], arrays[f"{key}/labels"] = probs.astype(np.float16), labels
        metrics[f"{key}/top1"] = float(np.mean(probs.argmax(1) == labels))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    record = {
        "name": run.name, "arg": run.arg, "init": run.init, "command": run.command(work),
        "step": int(summary["step"]), "val_top1": metrics.get("val/top1"),
        "train_seconds": train_seconds, "seconds": time.time() - t0, **metrics,
        "curve": curve(rows),
    }
    os.makedirs(results, exist_ok=True)
    _write_atomic(os.path.join(results, f"{run.name}.npz"),
                  lambda p: np.savez_compressed(p, **arrays))
    _write_atomic(os.path.join(results, f"{run.name}.json"),      # last: the run is done
                  lambda p: _dump_json(record, p))
    return record


def main(argv):
    work, results, run = argv[1], argv[2], Run.from_json(argv[3])
    execute(work, results, run)


if __name__ == "__main__":
    main(sys.argv)
