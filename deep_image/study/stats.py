"""The statistics of the claims study, stated once here and quoted by the report.

A replicate is one (pre-training seed, fine-tuning seed) pair: every arm of a comparison
fine-tunes the same pre-trained model with the same fine-tuning seed, so an effect is the mean
of per-replicate differences (`paired`). Each primary comparison gets two tests, and Holm's
step-down correction over the study's primary comparisons (one per claim) for each:

- the difference test: paired Student t, H0 "no difference" (two-sided);
- the equivalence test: two one-sided t tests (TOST) against the claim's margin, H0 "the
  effect is at least `margin` away from 0".

`verdict` maps the two Holm-adjusted p-values and the effect's sign to one of VERDICTS (RULE).
A second reading, `bootstrap`, resamples replicates and, within each, test images.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
VERDICTS = ("reproduced", "refuted", "no effect", "inconclusive")
RULE = (
    "Each claim has one primary comparison, its effect measured in the direction the paper "
    "states, and an equivalence margin, both fixed before the study. Over the replicates (one "
    "per pre-training seed x fine-tuning seed, every arm sharing both) two tests are made: the "
    "paired t test of 'no difference' and the two one-sided t tests (TOST) of 'the effect is at "
    "least the margin away from 0'. Holm's step-down correction is applied to each family of "
    "tests over the study's primary comparisons (alpha = 0.05). A claim is **reproduced** when "
    "the difference test rejects and the mean effect is positive, **refuted** when it rejects "
    "and the mean is negative, **no effect** when the difference test does not reject and the "
    "equivalence test does (the effect lies within +-margin), and **inconclusive** otherwise. "
    "Intervals shown are 95% paired t intervals (unadjusted); a bootstrap over replicates and "
    "test images is a second reading, reported beside, never deciding. Secondary comparisons "
    "are reported with their intervals and no verdict.")


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
    with one value, or no spread, the interval is unbounded or a point."""
    x = np.asarray(values, np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, -math.inf, math.inf, math.nan, n)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def difference_p(d) -> float:
    """Two-sided p-value of the paired t test of mean(d) = 0 (1 without spread at 0)."""
    d = np.asarray(d, np.float64)
    if len(d) < 2:
        return 1.0
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() != 0 else 1.0
    t = d.mean() / (sd / math.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def equivalence_p(d, margin: float) -> float:
    """p-value of TOST: the larger of the one-sided t tests of mean(d) <= -margin and
    mean(d) >= +margin. Small: the effect lies inside (-margin, +margin)."""
    d = np.asarray(d, np.float64)
    if len(d) < 2:
        return 1.0
    se = d.std(ddof=1) / math.sqrt(len(d))
    m = d.mean()
    if se == 0:
        return 0.0 if abs(m) < margin else 1.0
    lower = stats.t.sf((m + margin) / se, len(d) - 1)    # H0: mean <= -margin
    upper = stats.t.cdf((m - margin) / se, len(d) - 1)   # H0: mean >= +margin
    return float(max(lower, upper))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values (step-down, monotone), same keys."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        out[key] = running
    return out


def verdict(mean: float, p_difference: float, p_equivalence: float,
            alpha: float = ALPHA) -> str:
    """RULE, from the Holm-adjusted p-values of the two tests."""
    if p_difference < alpha:
        return "reproduced" if mean > 0 else "refuted"
    if p_equivalence < alpha:
        return "no effect"
    return "inconclusive"


def interval_verdict(low: float, high: float, margin: float) -> str:
    """The same four verdicts read off an interval (the bootstrap's second reading)."""
    if low > 0:
        return "reproduced"
    if high < 0:
        return "refuted"
    if -margin < low and high < margin:
        return "no effect"
    return "inconclusive"


def replicate_count(terms) -> int:
    """The replicates every term holds (rows of its hits): terms are paired by replicate, row
    i of each being replicate i, so their counts must agree."""
    counts = {np.shape(h)[0] for _, h, _ in terms}
    if len(counts) != 1:
        raise ValueError(f"paired terms need the same replicates, got counts {counts}")
    return counts.pop()


def effect_of(terms) -> np.ndarray:
    """Per-replicate effect of `terms`: sum of weight x mean over images of hits (paired by
    replicate: see replicate_count)."""
    replicate_count(terms)
    return sum(w * np.asarray(h, np.float64).mean(1) for w, h, _ in terms)


def bootstrap(terms, *, draws: int = 2000, seed: int = 0,
              confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the mean effect, resampling replicates and, within each drawn
    replicate, test images. `terms`: (weight, hits [replicates, images], group); terms of one
    group are scored on the same images (two arms on one test set) and share the resampled
    indices, so the pairing survives; the effect is effect_of(terms)."""
    groups = {}
    for _, h, g in terms:
        shape = np.shape(h)
        if groups.setdefault(g, shape) != shape:
            raise ValueError(f"bootstrap: group {g!r} holds hits of shapes {groups[g]} and "
                             f"{shape}")
    r = replicate_count(terms)
    rng = np.random.default_rng(seed)
    hits = [(w, np.asarray(h, np.float64), g) for w, h, g in terms]
    means = np.empty(draws)
    for k in range(draws):
        reps = rng.integers(0, r, r)
        idx = {g: rng.integers(0, shape[1], (r, shape[1])) for g, shape in groups.items()}
        means[k] = sum(w * h[reps[:, None], idx[g]].mean() for w, h, g in hits)
    q = (1 - confidence) / 2
    return float(np.quantile(means, q)), float(np.quantile(means, 1 - q))


def half_width(sd: float, n: int, confidence: float = CONFIDENCE) -> float:
    """The half-width of a paired t interval over n replicates with per-replicate sd (the
    study's planning figure, from the pilot's spread)."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
