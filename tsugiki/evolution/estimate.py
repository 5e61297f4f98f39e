"""Estimated fitness: a candidate's full-set score from its scores on a few items.

A search scores every candidate on its whole fitness set; most of that cost can be saved by scoring a few
items and estimating the rest, as tinyBenchmarks (Polo et al., 2024, arXiv:2402.14992) and MERGE³
(Mencattini et al., ICML 2025) do. Every estimator here is fitted on a *calibration* matrix
``responses[m, i]`` (per-item scores in [0, 1] of a few models on the full set: the sources and some random
candidates) and then estimates a new model's mean score from its scores on the estimator's ``items``:

- :class:`Subsample`: a fixed random subset, plain mean.
- :class:`Anchors`: k-means over the items' calibration response vectors; one anchor per cluster (the item
  nearest its centroid), weighted by the cluster's share of the items.
- :class:`IRTEstimate`: a two-parameter logistic IRT model, ``P(item i right | ability θ) = σ(a_i · θ - b_i)``
  (discriminations ``a_i ≥ 0`` in ``dim`` dimensions, difficulties ``b_i``), fitted by MAP on the calibration
  matrix. A new model's ability is fitted on the anchor items alone. Its estimate is tinyBenchmarks' p-IRT:
  the observed scores on the anchors and the predicted probabilities on every other item, averaged over all
  items.

Fractional scores (ROUGE-L per item, a teacher-forced probability) enter the likelihood as soft targets;
scores in another bounded range (``score_range``) are mapped to [0, 1] for IRT and back. Nothing here knows
about models: it is numbers in, numbers out. :func:`fit_estimator` fits one by name; ``to_json`` /
:func:`estimator_from_json` keep a fitted one exactly (float64 as JSON numbers round-trip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _check(responses: np.ndarray, unit: bool = True) -> np.ndarray:
    r = np.asarray(responses, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise ValueError(f"responses must be a (models, items) matrix, got shape {r.shape}")
    if not np.isfinite(r).all() or (unit and (r.min() < 0 or r.max() > 1)):
        raise ValueError("responses must be finite scores" + (" in [0, 1]" if unit else ""))
    return r


def _floats(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


@dataclass(frozen=True)
class Subsample:
    """The mean over a fixed random subset of ``k`` items."""

    items: np.ndarray

    @classmethod
    def fit(cls, n_items: int, k: int, seed: int = 0) -> "Subsample":
        rng = np.random.default_rng(seed)
        return cls(np.sort(rng.choice(n_items, size=min(k, n_items), replace=False)))

    def estimate(self, scores: np.ndarray) -> float:
        """``scores``: the model's scores on :attr:`items`, in that order."""
        return float(np.mean(scores))

    def to_json(self) -> dict:
        return {"method": "subsample", "items": self.items.tolist()}


def kmeans(points: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns each point's cluster label (0..k-1)."""
    rng = np.random.default_rng(seed)
    n = len(points)
    centres = [points[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centres], axis=0)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(points[rng.choice(n, p=p)])
    c = np.array(centres)
    labels = np.zeros(n, dtype=int)
    for step in range(iters):
        new = ((points[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        if step and (new == labels).all():
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = points[labels == j].mean(0)
    return labels


@dataclass(frozen=True)
class Anchors:
    """``items``: one anchor per cluster of items; ``weights``: each cluster's share of all items."""

    items: np.ndarray
    weights: np.ndarray

    @classmethod
    def fit(cls, responses: np.ndarray, k: int, seed: int = 0, *, features: np.ndarray | None = None) -> "Anchors":
        """Cluster the items by ``features`` (default: their calibration response vectors, one row per item)."""
        r = _check(responses, unit=False)
        x = r.T if features is None else np.asarray(features, dtype=np.float64)
        k = min(k, len(x))
        labels = kmeans(x, k, seed)
        items, weights = [], []
        for j in range(k):
            members = np.flatnonzero(labels == j)
            if not len(members):
                continue
            centre = x[members].mean(0)
            items.append(members[((x[members] - centre) ** 2).sum(1).argmin()])
            weights.append(len(members) / len(x))
        order = np.argsort(items)
        return cls(np.asarray(items)[order], np.asarray(weights)[order])

    def estimate(self, scores: np.ndarray) -> float:
        return float(np.dot(self.weights, scores))

    def to_json(self) -> dict:
        return {"method": "anchors", "items": self.items.tolist(), "weights": _floats(self.weights)}


@dataclass(frozen=True)
class IRT:
    """Fitted item parameters of a 2PL model: ``a`` (items, dim) ≥ 0 and ``b`` (items,)."""

    a: np.ndarray
    b: np.ndarray

    def prob(self, theta: np.ndarray) -> np.ndarray:
        """``P[m, i]`` for abilities ``theta`` (models, dim)."""
        return 1.0 / (1.0 + np.exp(-(np.asarray(theta) @ self.a.T - self.b)))

    @classmethod
    def fit(cls, responses: np.ndarray, dim: int = 1, *, steps: int = 2000, lr: float = 0.05, seed: int = 0,
            prior: float = 1.0) -> tuple["IRT", np.ndarray]:
        """MAP fit of items and abilities on the calibration matrix (standard normal priors of scale
        ``prior`` on θ, b and log a). Returns the items and the calibration models' abilities."""
        r = torch.as_tensor(_check(responses))
        m, n = r.shape
        g = torch.Generator().manual_seed(seed)
        theta = (0.1 * torch.randn(m, dim, generator=g, dtype=torch.float64)).requires_grad_()
        log_a = torch.zeros(n, dim, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(n, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([theta, log_a, b], lr=lr)
        for _ in range(steps):
            logits = theta @ log_a.exp().T - b
            nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, r, reduction="sum")
            penalty = 0.5 * ((theta ** 2).sum() + (b ** 2).sum() + (log_a ** 2).sum()) / prior ** 2
            opt.zero_grad()
            (nll + penalty).backward()
            opt.step()
        return cls(log_a.detach().exp().numpy(), b.detach().numpy()), theta.detach().numpy()

    def ability(self, items: np.ndarray, scores: np.ndarray, *, steps: int = 500, lr: float = 0.05,
                prior: float = 1.0) -> np.ndarray:
        """MAP ability (dim,) of one model from its ``scores`` on ``items``, the items held fixed."""
        a = torch.as_tensor(self.a[items])
        b = torch.as_tensor(self.b[items])
        y = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        theta = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=lr)
        for _ in range(steps):
            nll = torch.nn.functional.binary_cross_entropy_with_logits(a @ theta - b, y, reduction="sum")
            loss = nll + 0.5 * (theta ** 2).sum() / prior ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        return theta.detach().numpy()


@dataclass(frozen=True)
class IRTEstimate:
    """p-IRT: observed scores on the anchor ``items``, IRT-predicted probabilities on all other items;
    item scores in ``score_range`` are mapped to [0, 1] and the estimate back."""

    irt: IRT
    items: np.ndarray
    score_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def fit(cls, responses: np.ndarray, k: int, dim: int = 1, seed: int = 0, *,
            score_range: tuple[float, float] = (0.0, 1.0), **fit_args) -> "IRTEstimate":
        """Items fitted on the calibration matrix; anchors clustered in the items' IRT parameter space
        (``a`` and ``b``, as tinyBenchmarks does)."""
        low, high = map(float, score_range)
        if not high > low:
            raise ValueError(f"score range {score_range} is empty")
        unit = np.clip((_check(responses, unit=False) - low) / (high - low), 0.0, 1.0)
        irt, _ = IRT.fit(unit, dim, seed=seed, **fit_args)
        anchors = Anchors.fit(unit, k, seed, features=np.column_stack([irt.a, irt.b]))
        return cls(irt, anchors.items, (low, high))

    def estimate(self, scores: np.ndarray) -> float:
        low, high = self.score_range
        unit = np.clip((np.asarray(scores, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        n = len(self.irt.b)
        theta = self.irt.ability(self.items, unit)
        predicted = self.irt.prob(theta[None])[0]
        rest = np.setdiff1d(np.arange(n), self.items)
        return low + (high - low) * float((np.sum(unit) + predicted[rest].sum()) / n)

    def to_json(self) -> dict:
        return {"method": "irt", "items": self.items.tolist(), "a": _floats(self.irt.a), "b": _floats(self.irt.b),
                "score_range": list(self.score_range)}


Estimator = Subsample | Anchors | IRTEstimate
ESTIMATORS = ("subsample", "anchors", "irt")  # fitness.estimate.method


def fit_estimator(method: str, responses: np.ndarray, k: int, *, seed: int = 0, dim: int = 1,
                  score_range: tuple[float, float] | None = None) -> Estimator:
    """An estimator of ``method`` using ``k`` items, fitted on the calibration ``responses`` (models × items).
    IRT needs the item scores' bounded ``score_range``."""
    r = _check(responses, unit=False)
    if method == "subsample":
        return Subsample.fit(r.shape[1], k, seed)
    if method == "anchors":
        return Anchors.fit(r, k, seed)
    if method == "irt":
        if score_range is None:
            raise ValueError("irt needs item scores in a bounded range")
        return IRTEstimate.fit(r, k, dim, seed, score_range=score_range)
    raise ValueError(f"unknown estimator {method!r} ({', '.join(ESTIMATORS)})")


def estimator_from_json(d: dict) -> Estimator:
    """The estimator :meth:`to_json` wrote, exactly."""
    items = np.asarray(d["items"], dtype=np.int64)
    if d["method"] == "subsample":
        return Subsample(items)
    if d["method"] == "anchors":
        return Anchors(items, np.asarray(d["weights"], dtype=np.float64))
    if d["method"] == "irt":
        irt = IRT(np.asarray(d["a"], dtype=np.float64), np.asarray(d["b"], dtype=np.float64))
        return IRTEstimate(irt, items, tuple(map(float, d["score_range"])))
    raise ValueError(f"unknown estimator {d.get('method')!r}")
