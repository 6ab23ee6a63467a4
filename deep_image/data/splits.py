"""Split names, including the class-stratified slices that serve as validation holdouts.

Only a validation split may feed a decision (the §5.1 schedule); the reported split is touched
once, for reporting. Datasets without an official validation split (CUB, Pets, MIT Indoor,
ILSVRC) hold out a slice of their training split, defined here and nowhere else:

    SPLIT          the dataset's own split
    SPLIT[:N]      per class, the first N examples of SPLIT (after a fixed per-class shuffle)
    SPLIT[N:]      per class, all but those N
    SPLIT[:P%]     per class, the first round(P% of the class) examples, at least one and
                   all but one (a class of one example goes to the side P% rounds it to)
    SPLIT[P%:]     per class, the rest

`train[:10%]` and `train[10%:]` are complementary and disjoint, and every class keeps ~P% in
each (stratified). The per-class order is a permutation drawn from the class id alone (not the
run's seed, not the process count), so every process of every run sees the same slices.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from deep_image.data.errors import DataError

# Seeds the per-class permutation of every stratified slice; never change it (it defines the
# benchmarks' validation holdouts).
HOLDOUT_SEED = 20150506
# Dataset splits that contain others (FGVC-Aircraft: trainval = train + val).
SUPERSETS = {"trainval": ("train", "val")}

_SLICE = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<start>[0-9.]*%?):(?P<stop>[0-9.]*%?)\]$")


@dataclasses.dataclass(frozen=True)
class Split:
    """A parsed split name: `base` and, for a slice, the per-class prefix or suffix it keeps."""
    base: str
    head: bool | None = None      # True: SPLIT[:x], False: SPLIT[x:], None: the whole split
    amount: float = 0.0           # N examples, or P with `percent`
    percent: bool = False

    def count(self, n: int) -> int:
        """How many of a class's `n` examples the prefix holds (the same cut for both sides).
        A percentage leaves every class of two or more examples on both sides."""
        if not self.percent:
            return min(int(self.amount), n)
        k = round(n * self.amount / 100.0)
        return min(max(k, 1), n - 1) if n >= 2 else k


def parse(name: str) -> Split:
    if "[" not in name:
        if not name or "]" in name:
            raise DataError(f"split {name!r} is not a split name")
        return Split(name)
    m = _SLICE.match(name)
    if not m or bool(m["start"]) == bool(m["stop"]):
        raise DataError(f"split {name!r}: write SPLIT[:N], SPLIT[N:], SPLIT[:P%] or SPLIT[P%:] "
                        "(a per-class slice, e.g. train[:10%])")
    text = m["start"] or m["stop"]
    percent = text.endswith("%")
    try:
        amount = float(text.rstrip("%"))
    except ValueError:
        raise DataError(f"split {name!r}: {text!r} is not a number") from None
    if (percent and not 0 < amount < 100) or (not percent and amount != int(amount)):
        raise DataError(f"split {name!r}: a slice is a whole count or a percentage in (0, 100)")
    return Split(m["base"], head=bool(m["stop"]), amount=amount, percent=percent)


def overlaps(a: str, b: str) -> bool:
    """Whether splits `a` and `b` of one dataset may share an example (conservative: slices in
    different units of the same split count as overlapping)."""
    x, y = parse(a), parse(b)
    if x.base != y.base:
        return x.base in SUPERSETS.get(y.base, ()) or y.base in SUPERSETS.get(x.base, ())
    if x.head is None or y.head is None or x.head == y.head:
        return True
    if x.percent != y.percent:
        return True
    head, tail = (x, y) if x.head else (y, x)
    return head.amount > tail.amount


def stratified_indices(labels: np.ndarray, split: Split) -> np.ndarray:
    """The indices (ascending) of `split`'s per-class slice of a split with these labels."""
    labels = np.asarray(labels)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[np.random.default_rng((HOLDOUT_SEED, int(c))).permutation(len(members))]
        k = split.count(len(members))
        keep.append(order[:k] if split.head else order[k:])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


class Subset:
    """The examples of `source` at `indices`, with its class names (and boxes, labels)."""

    def __init__(self, source, indices: np.ndarray, name: str):
        self._source, self._indices, self.name = source, np.asarray(indices), name
        self.class_names = source.class_names

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int):
        return self._source[int(self._indices[int(index)])]

    def labels(self) -> np.ndarray:
        return np.asarray(self._source.labels())[self._indices]

    def __repr__(self) -> str:
        return f"Subset({self.name}, {len(self)} of {len(self._source)})"


def select(source, name: str):
    """`source` (the base split's) restricted to the slice `name` names, if it names one."""
    split = parse(name)
    if split.head is None:
        return source
    if not hasattr(source, "labels"):
        raise DataError(f"split {name!r}: this dataset's reader cannot list labels, so it has "
                        "no per-class slices")
    indices = stratified_indices(source.labels(), split)
    if not len(indices):
        raise DataError(f"split {name!r} is empty: every class has too few examples for it")
    return Subset(source, indices, name)
