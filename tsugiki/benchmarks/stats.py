"""Statistics for comparing models: bootstrap confidence intervals, bit-for-bit equal to
``rouge_score.scoring.BootstrapAggregator``; binomial and paired standard errors (at the end).

The aggregator draws, for each of ``n_samples`` resamples, ``np.random.choice(n, size=n)`` indices
(with replacement) from numpy's *global* legacy generator, averages each resample, and returns the
2.5th / 50th / 97.5th percentiles of those means as (low, mid, high). The seed's ``evaluate.py``
calls ``np.random.seed(42)`` once, then aggregates score types one after another, so each type
reads the next block of that random stream.

``BootstrapStream`` reproduces this with a private ``RandomState(42)`` (the global generator is
left alone): the same draws in the same order, resamples averaged in the same summation order,
so ``mid`` equals the seed's value exactly, not just approximately. It is vectorised: one
``randint`` call per 100 resamples instead of one per resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SEED = 42
N_SAMPLES = 1000
CONFIDENCE = 0.95
_CHUNK = 100  # resamples drawn at a time


@dataclass(frozen=True)
class Estimate:
    """A corpus score with its bootstrap interval; ``value`` is what the leaderboard shows."""

    value: float
    low: float
    high: float

    def scaled(self, factor: float) -> "Estimate":
        return Estimate(self.value * factor, self.low * factor, self.high * factor)

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


class BootstrapStream:
    """Successive bootstrap aggregations reading one random stream, like the seed's global one."""

    def __init__(self, seed: int = SEED, n_samples: int = N_SAMPLES, confidence: float = CONFIDENCE):
        if n_samples <= 0:
            raise ValueError("n_samples must be positive")
        self._rng = np.random.RandomState(seed)
        self.n_samples = n_samples
        self.confidence = confidence

    def percentiles(self, values) -> tuple[float, float, float]:
        """(low, mid, high) of the bootstrap means of ``values`` (one score per item).

        ``np.random.choice(n, size)`` with replacement is ``randint(0, n, size)``, and drawing
        blocks of (rows, n) gives the same numbers as n_samples draws of n. Means are a sum over
        items in item order, divided by n: what ``np.mean(matrix, axis=0)`` computes."""
        x = np.asarray(values, dtype=np.float64)
        n = len(x)
        if n == 0:
            raise ValueError("cannot bootstrap zero items")
        sums = np.empty(self.n_samples)
        for start in range(0, self.n_samples, _CHUNK):  # chunks keep the index block in cache
            rows = min(_CHUNK, self.n_samples - start)
            idx = self._rng.randint(0, n, size=(rows, n))  # the same draws, in the same order
            # Laid out (n, rows) in C order, the sum over axis 0 adds whole rows in item order,
            # which is how numpy sums the seed's (n, 3) score matrix; summing along the
            # contiguous axis instead would add pairwise and differ in the last bits.
            sums[start : start + rows] = x[np.ascontiguousarray(idx.T)].sum(axis=0)
        means = sums / n
        delta = (1 - self.confidence) / 2
        low, mid, high = np.percentile(means, 100 * np.array([delta, 0.5, 1 - delta]))
        return float(low), float(mid), float(high)

    def estimate(self, values) -> Estimate:
        """The seed's ROUGE convention: the reported value is the bootstrap ``mid``."""
        low, mid, high = self.percentiles(values)
        return Estimate(mid, low, high)

    def mean_estimate(self, values) -> Estimate:
        """The seed's accuracy convention: the reported value is the plain mean (the interval is
        still the bootstrap's)."""
        low, _, high = self.percentiles(values)
        return Estimate(float(np.mean(np.asarray(values, dtype=np.float64))), low, high)


# ---------------------------------------------------------------------------- standard errors
def binomial_se(p_percent: float, n: int) -> float:
    """SE of a proportion given in percent over ``n`` items, in percent (nan for n = 0)."""
    p = p_percent / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def margin_in_se(a: float, se_a: float, b: float, se_b: float) -> float:
    """(a − b) in units of the two independent scores' combined SE, sqrt(se_a² + se_b²); with no
    spread at all, inf when a > b, else 0."""
    se = math.hypot(se_a, se_b)
    diff = a - b
    return diff / se if se > 0 else (math.inf if diff > 0 else 0.0)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean of a - b, its standard error over items) for per-item scores of the same items."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return mean, se


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings of the same items (ties counted as neither concordant nor
    discordant, and corrected for; nan when either side is constant)."""
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: {len(a)} and {len(b)} values")
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else float("nan")
