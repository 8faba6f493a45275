"""How far a run's prompts leave a figure open: bootstrap intervals for ratios of sums over prompts.

A cell's tau is the tokens its verifying forwards emitted over their number, summed over the cell's
prompts; a speed-up is a row's tok/s over plain decoding's on the same prompts. Both are ratios of
sums, and with 10-20 prompts a cell the prompts drawn (and, at T > 0, the samples) move them by
several percent: on a Zen 4 EPYC, 16 prompts left a T = 1 speed-up open by about +-8%, so two rows
3% apart there may be level. The bootstrap resamples the prompts with replacement (within each
stratum, say each benchmark; paired: a prompt keeps its figures in both rows) and recomputes the
ratio; the interval is the middle `level` of those ratios. Seeded: one set of records always gives
one interval. It does not hold what changes between runs but not between prompts (a slow spell of
the machine that slowed one row alone), so it is a floor on the uncertainty, not its measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.2f} ({self.low:.2f}-{self.high:.2f})"


def ratio_interval(
    numer: Sequence[float],
    denom: Sequence[float],
    base_numer: Sequence[float] | None = None,
    base_denom: Sequence[float] | None = None,
    strata: Sequence[object] | None = None,
    level: float = 0.95,
) -> Interval:
    """sum(numer) / sum(denom) over the prompts, divided by sum(base_numer) / sum(base_denom) where a
    base is given (the same prompts, in the same order), with its bootstrap interval."""
    arrays = [np.asarray(x, dtype=float) for x in (numer, denom)]
    if base_numer is not None:
        arrays += [np.asarray(x, dtype=float) for x in (base_numer, base_denom)]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError("ratio_interval needs the same number (> 0) of values in every sequence")
    groups: dict[object, list[int]] = {}
    for i, s in enumerate(strata if strata is not None else [0] * n):
        groups.setdefault(s, []).append(i)
    if max(map(len, groups.values())) < 2:  # one prompt a stratum: nothing to resample
        return Interval(_ratio(arrays, np.arange(n)), float("nan"), float("nan"))
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.choice(g, size=(RESAMPLES, len(g))) for g in groups.values()], axis=1)

    value = _ratio(arrays, np.arange(n))
    resampled = _ratio(arrays, picks)
    resampled = resampled[np.isfinite(resampled)]
    if not np.isfinite(value) or not len(resampled):
        return Interval(value, float("nan"), float("nan"))
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(low), float(high))


def _ratio(arrays: list[np.ndarray], pick: np.ndarray):
    """sum(a0) / sum(a1) [/ (sum(a2) / sum(a3))] over the prompts `pick` (its last axis)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sums = [a[pick].sum(-1) for a in arrays]
        out = sums[0] / sums[1]
        out = out / (sums[2] / sums[3]) if len(sums) == 4 else out
    return float(out) if np.ndim(out) == 0 else out
