"""The claims report: claims.md (the rule first, then one section per claim), claims.json and a
plot per claim, from the analyses of deep_image/study/claims.py."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deep_image.study import stats  # noqa: E402

# Changes to the study's benchmark or protocol made after seeing any of its results. Every
# entry says what changed and why; the report prints them all.
CHANGES_AFTER_RESULTS: list[str] = [
    "Calibration before any claim was measured (pilots with seeds 98 and 99, pre-training "
    "only, looking at validation accuracy and time): species B's markings were made as large "
    "as species A's and one head marking became a tuft outside the silhouette, pre-training "
    "birds became 0.45-0.7 of the image (the target keeps 0.2-0.7), classifiers start at zero, "
    "and pre-training makes no plateau decision before step 1,500: every pilot of the first "
    "design sat at chance level for 1,000 steps.",
    "After the quick study (seeds 0-1, budget quick): fine-tuning makes no plateau decision in "
    "its first third (300 of 900 steps), and the quick budget shrank (1,000 pre-training and "
    "300 fine-tuning steps, 1,000 test images) to fit its 20 minutes. In the quick study most "
    "fine-tuning runs had their rate divided to the floor while still at chance level. No "
    "claim's design, arm or rule changed.",
]


def _pct(d: dict) -> str:
    i = stats.Interval(**d)
    return i.text(100.0, 1)


def _plot(key: str, analysis: dict, path: str) -> None:
    rows = analysis["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, row in enumerate(rows):
        i = row["interval"]
        lo = i["low"] if i["low"] > -1e9 else i["mean"]
        hi = i["high"] if i["high"] < 1e9 else i["mean"]
        ax.errorbar([100 * i["mean"]], [y], xerr=[[100 * (i["mean"] - lo)],
                                                   [100 * (hi - i["mean"])]],
                    fmt="o", color="C0", capsize=4)
        ax.scatter([100 * v for v in row["per_seed"]], [y] * len(row["per_seed"]), s=12,
                   color="C1", zorder=3)
    ax.set_yticks(range(len(rows)), [r["arm"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("percent (mean and 95% t interval; dots: seeds)")
    ax.set_title(f"claim {key}: {analysis['verdict']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: str, claims: dict, analyses: dict, runs: list[dict], meta: dict) -> str:
    """Writes OUT/claims.md, OUT/claims.json and OUT/claim_<key>.png; returns the .md path."""
    quick = meta["budget"] != "full"
    tag = " (quick)" if quick else ""
    lines = [
        "# The paper's claims on SynthBirds", "",
        f"Made by `{meta['command']}` ({meta['budget']} budget, seeds {meta['seeds']}; "
        f"{meta['wall_seconds'] / 60:.1f} min of wall time on {meta['machine']}, over "
        f"{meta['invocations']} invocation(s)). Each seed changes initialisation, data order, "
        "augmentation draws and dropout, never the benchmark's images; seed s of every arm "
        "fine-tunes pre-training seed s.", "",
        "## The rule (stated before any result)", "", stats.RULE, "",
    ]
    if quick:
        lines += ["**Quick budget**: fewer steps than the full study; its verdicts are marked "
                  "(quick) and say less than the full study's.", ""]
    lines += ["## Changes made after seeing results", ""]
    lines += [f"- {c}" for c in CHANGES_AFTER_RESULTS] or ["None."]
    lines += ["", "## Summary", "", "| claim | paper | verdict | effect (percentage points, "
              "95% interval) |", "|---|---|---|---|"]
    for key, a in analyses.items():
        e = a["effects"][0]
        lines.append(f"| {key}. {claims[key].title} | {claims[key].section} | "
                     f"**{a['verdict']}**{tag} | {e['comparison']}: {_pct(e['interval'])} |")
    for key, a in analyses.items():
        c = claims[key]
        lines += ["", f"## {key}. {c.title} ({c.section})", "", f"> {c.quote}", "",
                  f"Setup: {c.setup}", ""]
        if a.get("rule"):
            lines += [f"Primary comparison: {a['rule']}.", ""]
        lines += ["| arm | mean [95% interval], % | per seed, % |", "|---|---|---|"]
        for row in a["rows"]:
            seeds = ", ".join(f"{100 * v:.1f}" for v in row["per_seed"])
            lines.append(f"| {row['arm']} | {_pct(row['interval'])} | {seeds} |")
        lines += ["", "| effect | mean [95% interval], points | verdict |", "|---|---|---|"]
        for e in a["effects"]:
            lines.append(f"| {e['comparison']} | {_pct(e['interval'])} | {e['verdict']} |")
        if "terciles" in a:
            lines += ["", "Size thirds (bird length / image side): " + ", ".join(
                f"{t} {lo:.2f}-{hi:.2f}" for t, (lo, hi) in a["terciles"].items())]
        lines += ["", f"**Verdict: {a['verdict']}{tag}.**", "", f"![claim {key}](claim_{key}.png)"]
        _plot(key, a, os.path.join(out, f"claim_{key}.png"))
    lines += ["", "## Runs", "", "Every run ends with the rate it reached under the §5.1 "
              "schedule (scale 1: never divided).", "",
              "| run | steps | final rate scale | val top-1 | minutes | command |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        scale = "-" if r["final_lr_scale"] is None else f"{r['final_lr_scale']:g}"
        val = "-" if r["val_top1"] is None else f"{100 * r['val_top1']:.1f}"
        lines.append(f"| {r['name']} | {r['step']} | {scale} | {val} | "
                     f"{r['seconds'] / 60:.1f} | `{r['command']}` |")
    path = os.path.join(out, "claims.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "claims.json"), "w") as f:
        json.dump({"meta": meta, "rule": stats.RULE, "changes": CHANGES_AFTER_RESULTS,
                   "claims": {k: {"title": claims[k].title, "section": claims[k].section,
                                  **a} for k, a in analyses.items()},
                   "runs": runs}, f, indent=2)
    return path
