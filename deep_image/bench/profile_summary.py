"""Where a train step's device time goes: a jax.profiler trace summarised per op class.

    summary = summarize(trace_dir, compiled_hlo_text, steps)

`jax.profiler.trace(dir, create_perfetto_trace=True)` writes a Chrome/Perfetto trace
(`*.trace.json.gz`) whose device (or, on CPU, thunk) events name the HLO instruction they run
(`args.hlo_op`). Each instruction is looked up in the compiled module's text (with the fused
computation it calls, for a fusion) and put in one class:

  collectives          all-gather, reduce-scatter, all-reduce, collective-permute (-start/-done)
  conv_forward         convolutions of the forward pass (cuDNN convForward; on CPU a
                       convolution not under JAX's `transpose(` of the backward pass)
  conv_backward        cuDNN convBackwardInput/Filter; convolutions under `transpose(`
  pooling_backward     select-and-scatter (max-pool's gradient on GPU; XLA:CPU computes it
                       as compare/select fusions, which count as elementwise)
  pooling_forward      reduce-window (not of booleans: those are finiteness checks)
  matmul               dot / cuBLAS GEMMs (the FC layers)
  optimizer            the update (training/step.py's OPTIMIZER_SCOPE)
  copies_transposes    copy, transpose, layout changes
  elementwise_fusion   every other fusion (ReLU, bias, normalisation, loss)
  other                the rest

Times are the events' durations summed and divided by `steps` (ms per step); overlapping
events (streams, threads) each count, so the classes can add up to more than the step.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

CLASSES = ("collectives", "conv_forward", "conv_backward", "pooling_backward",
           "pooling_forward", "matmul", "optimizer", "copies_transposes", "elementwise_fusion",
           "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def hlo_index(hlo: str) -> tuple[dict, dict]:
    """({instruction name: its line}, {computation name: its body text}) of an HLO module."""
    lines, bodies, current, body = {}, {}, None, []
    for line in hlo.splitlines():
        stripped = line.strip()
        if stripped.endswith("{") and "=" not in stripped.split("(")[0]:
            m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)", stripped)
            current, body = (m.group(1) if m else None), []
            continue
        if stripped == "}":
            if current:
                bodies[current] = "\n".join(body)
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            lines[m.group(1)] = line
            body.append(line)
    return lines, bodies


def classify(text: str, scope: str = "optimizer_update") -> str:
    """The class of an instruction from its text (its line plus, for a fusion, the body of
    the computation it calls)."""
    if re.search(r"\b(all-gather|reduce-scatter|all-reduce|collective-permute|all-to-all)"
                 r"(-start|-done)?\(", text):
        return "collectives"
    if "convBackward" in text:
        return "conv_backward"
    if "convForward" in text:
        return "conv_forward"
    if re.search(r"\bconvolution\(", text):
        conv = [l for l in text.splitlines() if re.search(r"\bconvolution\(", l)]
        return "conv_backward" if any("transpose(" in l for l in conv) else "conv_forward"
    if "select-and-scatter(" in text:
        return "pooling_backward"
    windows = [l for l in text.splitlines() if "reduce-window(" in l]
    if any(not re.search(r"=\s*\(?pred\[", l) for l in windows):   # (pred: finiteness checks)
        return ("pooling_backward" if any("transpose(" in l for l in windows)
                else "pooling_forward")
    if re.search(r"\bdot\(", text) or "cublas" in text:
        return "matmul"
    if scope in text:
        return "optimizer"
    first = text.splitlines()[0] if text else ""
    if re.search(r"=\s*\S+\s+(copy|transpose|copy-start|copy-done)\(", first) or \
            re.search(r"\b(copy|transpose)", first.split("=")[0]):
        return "copies_transposes"
    if re.search(r"\bfusion\(", first):
        return "elementwise_fusion"
    return "other"


def trace_events(trace_dir: str) -> list[dict]:
    """The complete ('X') events of the newest Perfetto trace under `trace_dir` that name an
    HLO instruction."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: trace with "
                                "jax.profiler.trace(dir, create_perfetto_trace=True)")
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_op")]


def summarize(trace_dir: str, hlo: str, steps: int, scope: str = "optimizer_update") -> dict:
    """{class: ms per step} for every class (0 where nothing ran), plus `unmatched_ms`: time
    of events whose instruction the module does not name (another program's)."""
    lines, bodies = hlo_index(hlo)
    cache: dict[str, str] = {}
    totals = collections.Counter()
    for e in trace_events(trace_dir):
        op = e["args"]["hlo_op"]
        if op not in lines:
            totals["unmatched_ms"] += e.get("dur", 0) / 1e3
            continue
        if op not in cache:
            text = lines[op]
            called = _CALLS.search(text)
            if called and called.group(1) in bodies:
                text += "\n" + bodies[called.group(1)]
            cache[op] = classify(text, scope)
        totals[cache[op]] += e.get("dur", 0) / 1e3
    out = {c: totals[c] / steps for c in CLASSES}
    out["unmatched_ms"] = totals["unmatched_ms"] / steps
    out["total_ms"] = sum(out[c] for c in CLASSES)
    return out
