"""One experiment over several seeds: each run's final result, their mean and 95% t interval.

    for s in 0 1 2; do python -m deep_image.train --config=experiments/synthetic.py \
        --workdir=runs/synthetic_s$s --config.seed=$s; done
    python -m deep_image.study.seeds runs/synthetic_s0 runs/synthetic_s1 runs/synthetic_s2 \
        --json=summary.json --plot=curves.png

Reads each workdir's `config.json` and `metrics.jsonl` (written by the training loop): the last
evaluation of a finished run, on the reported split and on the validation split. Runs must be
finished and must differ in nothing but `seed`, or the summary is refused with a one-line
error: a spread over seeds means something only when the seed is all that varied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from deep_image.study import stats

METRICS = ("eval/top1", "eval/top5", "eval/mean_per_class", "val/headline")
# Keys that may differ between the runs: they change neither the numbers nor the protocol.
HARMLESS = {"seed", "progress_bar", "log_every_steps", "checkpoint_every_steps",
            "keep_checkpoints", "data.threads", "data.workers", "data.prefetch",
            "data.device_prefetch"}


class SeedsError(ValueError):
    """Runs that cannot be summarized as seeds of one experiment."""


def final_result(workdir: str) -> dict:
    """The seed, the config and the last evaluation of the finished run in `workdir`."""
    paths = {name: os.path.join(workdir, name) for name in ("config.json", "metrics.jsonl")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise SeedsError(f"{path} does not exist: give the workdirs of finished training "
                             "runs (python -m deep_image.train ... --workdir=DIR)")
    with open(paths["config.json"]) as f:
        config = json.load(f)
    last = None
    with open(paths["metrics.jsonl"]) as f:
        for line in f:
            record = json.loads(line)
            if "eval/top1" in record and (last is None or record["step"] >= last["step"]):
                last = record
    steps = config.get("total_steps", 0)
    if last is None or (steps and last["step"] < steps):
        at = "no evaluation" if last is None else f"its last evaluation is step {last['step']}"
        raise SeedsError(f"the run in {workdir} is not finished ({at}, of {steps or '?'} "
                         "steps): rerun its train command to finish it")
    if not steps:   # num_epochs runs: the step count needs the dataset's size
        print(f"warning: {workdir} sets num_epochs, not total_steps, so whether it finished is "
              f"not checked: its last evaluation (step {last['step']}) is used", file=sys.stderr)
    return {"workdir": workdir, "seed": config.get("seed"), "config": config, "step": last["step"],
            **{k: last[k] for k in METRICS if k in last}}


def curve(workdir: str, key: str = "val/headline") -> tuple[list[int], list[float]]:
    """`key` at every evaluation of the run in `workdir` (a resumed run's repeats: the last)."""
    points = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                points[record["step"]] = record[key]
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot(summary: dict, path: str) -> None:
    """The validation curve of every seed, and the final reported accuracy in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in summary["runs"]:
        steps, values = curve(r["workdir"])
        ax.plot(steps, [100 * v for v in values], marker=".",
                label=f"seed {r['seed']}: {summary['split']} top-1 {100 * r['eval/top1']:.2f}%")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{summary['val_split']} headline metric (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}")
    return out


def summarize(workdirs: list[str]) -> dict:
    runs = [final_result(w) for w in workdirs]
    if len(runs) < 2:
        raise SeedsError("give at least two workdirs (three or more for a claim)")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) < len(seeds):
        raise SeedsError(f"seeds repeat ({seeds}): each run must have its own --config.seed")
    for r in runs[1:]:
        other = [d for d in _differences(runs[0]["config"], r["config"]) if d not in HARMLESS]
        if other:
            raise SeedsError(f"{r['workdir']} differs from {runs[0]['workdir']} in more than "
                             f"the seed: {', '.join(other)}")
    summary = {"runs": [{k: v for k, v in r.items() if k != "config"} for r in runs],
               "split": runs[0]["config"]["data"]["eval_split"],
               "val_split": runs[0]["config"]["data"]["val_split"],
               "confidence": stats.CONFIDENCE}
    for key in METRICS:
        values = [r[key] for r in runs if key in r]
        if len(values) == len(runs):
            summary[key] = {**stats.interval(values).as_dict(), "min": min(values),
                            "max": max(values)}
    return summary


def table(summary: dict) -> str:
    names = {"eval/top1": f"{summary['split']} top-1", "eval/top5": f"{summary['split']} top-5",
             "eval/mean_per_class": f"{summary['split']} mean per class",
             "val/headline": f"{summary['val_split']} headline (schedule)"}
    keys = [k for k in METRICS if k in summary]
    head = f"{'seed':>6} {'step':>7} " + " ".join(f"{names[k]:>26}" for k in keys)
    lines = [head]
    for r in summary["runs"]:
        lines.append(f"{r['seed']:>6} {r['step']:>7} "
                     + " ".join(f"{100 * r[k]:>25.2f}%" for k in keys))
    for label, fn in (("mean", lambda s: f"{100 * s['mean']:.2f}"),
                      (f"{int(100 * summary['confidence'])}% t", lambda s: (
                          f"[{100 * s['low']:.2f}, {100 * s['high']:.2f}]")),
                      ("range", lambda s: f"{100 * (s['max'] - s['min']):.2f}")):
        lines.append(f"{label:>14} " + " ".join(f"{fn(summary[k]):>26}" for k in keys))
    lines.append(f"{len(summary['runs'])} seeds; the runs differ only in config.seed (and in "
                 "logging or input threads, if at all)")
    return "\n".join(lines)


def main(argv=None):
    # argparse, not absl flags: this module is imported next to others that define --json
    parser = argparse.ArgumentParser(prog="python -m deep_image.study.seeds",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", help="the runs' workdirs, one per seed")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("--plot", help="also plot every run's validation curve here (.png)")
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.workdirs)
    except SeedsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    if args.plot:
        plot(summary, args.plot)


if __name__ == "__main__":
    main()
