"""The statistics of the claims study: means with Student-t intervals over seeds, paired
differences, and the verdict rule, stated once here and quoted by the report.

Seeds pair the arms of a claim: seed s of every arm starts from the same pre-trained model
(pre-training seed s), so an effect is the mean of per-seed differences, and its interval is
the t interval of those differences (n - 1 degrees of freedom).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RULE = ("A claim is **reproduced** when the 95% t interval of its effect (the mean over seeds of "
        "the per-seed difference between arms, in the direction the paper states) lies above 0, "
        "**not reproduced** when it lies below 0 (the data contradict the paper), and "
        "**inconclusive** when it contains 0. A claim with several comparisons is reproduced "
        "when all are, not reproduced when any is, inconclusive otherwise. The rule was written "
        "before any study result was seen.")


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    sd: float
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.mean * scale)} [{f.format(self.low * scale)}, "
                f"{f.format(self.high * scale)}]")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def interval(values, confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` and its two-sided Student-t interval (n - 1 degrees of freedom);
    with one value the interval is unbounded."""
    x = np.asarray(values, np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, -math.inf, math.inf, math.nan, n)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def paired_effect(better, worse) -> Interval:
    """The interval of `better - worse`, seed by seed (the paper says `better` wins)."""
    a, b = np.asarray(better, np.float64), np.asarray(worse, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need equal seeds, got {a.shape} and {b.shape}")
    return interval(a - b)


def verdict(effect: Interval) -> str:
    if effect.low > 0:
        return "reproduced"
    if effect.high < 0:
        return "not reproduced"
    return "inconclusive"


def combined(verdicts: list[str]) -> str:
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "inconclusive"
