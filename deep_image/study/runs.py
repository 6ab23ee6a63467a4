"""One run of the claims study, in its own process: train (experiments/claims.py), then score
the splits its claims need, and write OUT/runs/NAME/result.json (the "done" marker) and
posteriors.npz. A finished run is never redone; an interrupted one resumes from its
checkpoints (the training loop's own resume) and evaluates again.

    python -m deep_image.study.runs OUT NAME
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
    "test": ("test", False),                  # one centre crop at the training scale
    "test_shifted": ("test_shifted", False),  # the same birds under harsher capture (§5.5)
    "train": ("train", False),                # the training images, unaugmented (overfitting)
    "test_dense": ("test", True),             # §5.1: whole image, scales 72/96/128, + flip
}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str                     # e.g. all6_s0
    arg: str                      # experiments/claims.py:ARG
    init: str = ""                # the run it fine-tunes from
    evaluations: tuple[str, ...] = ()

    def config(self, out: str):
        spec = importlib.util.spec_from_file_location("claims_experiment", EXPERIMENT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        c = module.get_config(self.arg)
        c.data.synthetic.prerendered = data_dir(out)
        if self.init:
            c.init_from = run_dir(out, self.init)
        return c

    def command(self, out: str) -> str:
        """The train command a user runs (from the repository) to redo this run alone."""
        rel = os.path.relpath(out)
        extra = f" --config.init_from={run_dir(rel, self.init)}" if self.init else ""
        return (f"python -m deep_image.train --config=experiments/claims.py:{self.arg} "
                f"--workdir={run_dir(rel, self.name)} --config.data.synthetic.prerendered="
                f"{data_dir(rel)}{extra}")


def run_dir(out: str, name: str) -> str:
    return os.path.join(out, "runs", name)


def data_dir(out: str) -> str:
    return os.path.join(out, "data")


def result(out: str, name: str) -> dict | None:
    path = os.path.join(run_dir(out, name), "result.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def posteriors(out: str, name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir(out, name), "posteriors.npz")) as z:
        return {k: z[k] for k in z.files}


def execute(out: str, run: Run) -> dict:
    """Trains and evaluates `run` in this process; returns (and writes) its result."""
    from deep_image.data import sources
    from deep_image.evaluation.evaluator import Evaluator, Protocol
    from deep_image.training import loop
    from deep_image.training.checkpoint import Trained
    from deep_image.training.preemption import REQUEUE_EXIT_CODE

    workdir = run_dir(out, run.name)
    config = run.config(out)
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
        arrays[f"{key}/probs"], arrays[f"{key}/labels"] = probs.astype(np.float32), labels
        metrics[f"{key}/top1"] = float(np.mean(probs.argmax(1) == labels))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    scales = [r["schedule/lr_scale"] for r in rows if "schedule/lr_scale" in r]
    out_result = {
        "name": run.name, "arg": run.arg, "init": run.init, "command": run.command(out),
        "step": int(summary["step"]), "final_lr_scale": scales[-1] if scales else None,
        "val_top1": next((r["val/top1"] for r in reversed(rows) if "val/top1" in r), None),
        "train_seconds": train_seconds, "seconds": time.time() - t0, **metrics,
    }
    tmp = os.path.join(workdir, "posteriors.npz.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, os.path.join(workdir, "posteriors.npz"))
    path = os.path.join(workdir, "result.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out_result, f, indent=2)
    os.replace(path + ".tmp", path)    # last: the run is done
    return out_result


def main(argv):
    from deep_image.study import claims
    out, name = argv[1], argv[2]
    runs = {r.name: r for r in claims.plan(json.loads(argv[3]))}
    execute(out, runs[name])


if __name__ == "__main__":
    main(sys.argv)
