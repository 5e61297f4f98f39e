"""Multi-objective runs: the Pareto front of the evaluated candidates, its file, and choosing one point.

A run whose ``fitness:`` is a list of objectives keeps, generation by generation, the non-dominated
candidates of everything evaluated so far (dominance on the objectives signed so that higher is better:
a minimised objective counts as ``-value``; failed candidates never enter). ``front.json`` holds them,
rewritten atomically after each generation, best first in the first objective (then by generation and
index): per point its generation, index, objectives, validation objectives (or null), parameters and
vector. With ``validation:`` (one per objective), the candidates of each generation that are on the front
when it ends are validated (each at most once: a later generation can only push them off).

The run's best (``best.json``, ``best.yaml``, a plain ``--export``) is the front point with the highest
equal-weight sum of min-max normalised objectives (:func:`pick`, normalised over the front; earliest on
ties); ``--front-weights`` picks with other weights, ``--front-index`` by position in ``front.json``.
A history line's ``fitness`` in such a run is the mean of its signed objectives (:func:`summary`): a scalar
for the fitness plot and the summary; the search itself uses the objectives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tsugiki.errors import EvolutionError
from tsugiki.fileio import atomic_write

FRONT = "front.json"


def signed(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    """Objective values as maximised quantities (a minimised one negated)."""
    return [v if d == "maximize" else -v for v, d in zip(values, directions)]


def summary(values: Sequence[float], directions: Sequence[str]) -> float:
    """A multi-objective candidate's ``fitness``: the mean of its signed objectives."""
    s = signed(values, directions)
    return sum(s) / len(s)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` dominates ``b`` (both signed: higher is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (signed)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def pick(objectives: Sequence[Sequence[float]], directions: Sequence[str], weights: Sequence[float] | None = None) -> int:
    """The index of the point maximising ``sum(w_k * n_k)``, ``n_k`` the k-th signed objective min-max
    normalised over ``objectives`` (0 where all are equal); equal weights by default; first on ties."""
    m = len(directions)
    w = [1.0] * m if weights is None else [float(x) for x in weights]
    if len(w) != m or any(x < 0 for x in w) or not any(w):
        raise EvolutionError(f"front weights {list(weights or [])}: expected {m} non-negative numbers, not all 0")
    pts = [signed(p, directions) for p in objectives]
    lo = [min(p[k] for p in pts) for k in range(m)]
    hi = [max(p[k] for p in pts) for k in range(m)]
    score = [sum(w[k] * ((p[k] - lo[k]) / (hi[k] - lo[k]) if hi[k] > lo[k] else 0.0) for k in range(m)) for p in pts]
    return max(range(len(pts)), key=lambda i: (score[i], -i))


class Front:
    """The front of a run's evaluated candidates (``entries``: dicts as ``front.json`` holds them)."""

    def __init__(self, names: Sequence[str], directions: Sequence[str]):
        self.names, self.directions = list(names), list(directions)
        self.entries: list[dict[str, Any]] = []

    def values(self, entry: dict) -> list[float]:
        return [entry["objectives"][n] for n in self.names]

    def add(self, candidates: list[dict[str, Any]]) -> list[int]:
        """Add a generation's successful candidates (dicts with generation, index, objectives, params, x);
        returns the indices of those now on the front."""
        pool = self.entries + [dict(c, validation=None) for c in candidates]
        keep = non_dominated([signed(self.values(e), self.directions) for e in pool])
        self.entries = sorted((pool[i] for i in keep),
                              key=lambda e: (-signed(self.values(e), self.directions)[0], e["generation"], e["index"]))
        new = {id(c) for c in pool[len(pool) - len(candidates):]}
        return sorted(e["index"] for e in self.entries if id(e) in new)

    def set_validation(self, generation: int, index: int, objectives: dict | None) -> None:
        for e in self.entries:
            if (e["generation"], e["index"]) == (generation, index):
                e["validation"] = objectives

    def best(self) -> dict[str, Any] | None:
        """The front point :func:`pick` chooses with equal weights, as the run's best (best.json)."""
        if not self.entries:
            return None
        e = self.entries[pick([self.values(x) for x in self.entries], self.directions)]
        val = e["validation"]
        ok = val is not None and all(val.get(n) is not None for n in self.names)
        return {"generation": e["generation"], "index": e["index"], "fitness": summary(self.values(e), self.directions),
                "validation": summary([val[n] for n in self.names], self.directions) if ok else None,
                "objectives": dict(e["objectives"]), "validation_objectives": val, "params": e["params"], "x": e["x"]}

    def write(self, run_dir: Path) -> None:
        doc = {"objectives": [{"name": n, "direction": d} for n, d in zip(self.names, self.directions)],
               "front": self.entries}
        atomic_write(Path(run_dir) / FRONT, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def read_front(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / FRONT
    if not p.exists():
        raise EvolutionError(f"{run_dir}: no {FRONT}: not a multi-objective run")
    return json.loads(p.read_text(encoding="utf-8"))


def choose(run_dir: str | Path, *, index: int | None = None, weights: Sequence[float] | None = None) -> dict[str, Any]:
    """A point of a run's ``front.json``: the one at ``index``, or :func:`pick`'s with ``weights``."""
    doc = read_front(run_dir)
    front, dirs = doc["front"], [o["direction"] for o in doc["objectives"]]
    if not front:
        raise EvolutionError(f"{run_dir}: the front is empty (no successful candidate)")
    if index is not None:
        if not 0 <= index < len(front):
            raise EvolutionError(f"--front-index {index}: the front has {len(front)} points (0..{len(front) - 1})")
        return front[index]
    names = [o["name"] for o in doc["objectives"]]
    return front[pick([[e["objectives"][n] for n in names] for e in front], dirs, weights)]
