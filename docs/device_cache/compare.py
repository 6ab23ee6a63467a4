"""The placement comparison of docs/device_cache/rule.md: final test top-1 (and validation)
of the main job with placement host and device, seeds 10-12, a Welch 95% t interval of the
difference device - host.

    python docs/device_cache/compare.py runs/placement > docs/device_cache/placement.json
"""

import glob
import json
import os
import sys

import numpy as np
from scipy import stats


def final(workdir: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    last = [r for r in rows if "eval/top1" in r][-1]
    rates = [r["train/images_per_second"] for r in rows if "train/images_per_second" in r]
    return {"step": last["step"], "test_top1": last["eval/top1"], "val_top1": last["val/top1"],
            "median_images_per_second": float(np.median(rates))}


def welch(a, b) -> dict:
    """Difference of means a - b with a Welch 95% t interval."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.975, dof) * se
    d = a.mean() - b.mean()
    return {"difference": d, "interval": [d - half, d + half], "half_width": half,
            "dof": dof}


def main(root: str) -> None:
    runs = {}
    for placement in ("host", "device"):
        for wd in sorted(glob.glob(os.path.join(root, f"{placement}_s*"))):
            if os.path.isdir(wd):
                runs.setdefault(placement, {})[os.path.basename(wd)] = final(wd)
    out = {"runs": runs}
    for metric in ("test_top1", "val_top1"):
        a = [r[metric] for r in runs["device"].values()]
        b = [r[metric] for r in runs["host"].values()]
        out[metric] = {"device_mean": float(np.mean(a)), "host_mean": float(np.mean(b)),
                       **welch(a, b)}
    iv = out["test_top1"]["interval"]
    out["verdict"] = ("same within seed noise (the interval contains 0)" if iv[0] <= 0 <= iv[1]
                      else "device worse" if iv[1] < 0 else "device better")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
