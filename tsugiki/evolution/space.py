"""Search spaces: named, bounded parameters <-> the unbounded vectors CMA-ES works in.

CMA-ES (as used for model merging by Akiba et al. 2024, "Evolutionary Optimization of Model Merging
Recipes", arXiv:2403.13187) samples points of R^n. A :class:`SearchSpace` maps each coordinate to one
named parameter with documented bounds ``[low, high]``:

- ``sigmoid`` (default): ``value = low + (high - low) * sigmoid(x)``; every x is valid, the bounds
  are approached but never reached, and ``x = 0`` is the middle of the interval.
- ``clip``: ``value = low + (high - low) * clip(x, 0, 1)``; ``x`` in [0, 1] maps linearly and
  anything outside sticks to a bound.
- ``none``: ``value = x`` (unbounded; for indicators whose sign is what counts, e.g. DFS slots).

``encode`` is the inverse (for initial means), clamped a little inside the open interval for sigmoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from tsugiki.errors import EvolutionError

TRANSFORMS = ("sigmoid", "clip", "none")
_EDGE = 1e-4  # sigmoid inverse: an initial value at a bound is moved this fraction inside


@dataclass(frozen=True)
class Param:
    """One searched value: ``name``, bounds, initial value and the transform from CMA-ES space."""

    name: str
    low: float = 0.0
    high: float = 1.0
    init: float | None = None  # default: the middle of [low, high] (0 for transform "none")
    transform: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise EvolutionError(f"parameter {self.name!r}: transform must be one of {TRANSFORMS}, not {self.transform!r}")
        if self.transform != "none" and not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise EvolutionError(f"parameter {self.name!r}: bounds [{self.low}, {self.high}] must be finite with low < high")
        if self.init is not None and self.transform != "none" and not self.low <= self.init <= self.high:
            raise EvolutionError(f"parameter {self.name!r}: init {self.init} outside bounds [{self.low}, {self.high}]")

    def decode(self, x: float) -> float:
        if self.transform == "none":
            return float(x)
        if self.transform == "clip":
            u = min(1.0, max(0.0, x))
        else:  # numerically stable logistic
            u = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return self.low + (self.high - self.low) * u

    def encode(self, value: float) -> float:
        if self.transform == "none":
            return float(value)
        u = (value - self.low) / (self.high - self.low)
        if self.transform == "clip":
            return min(1.0, max(0.0, u))
        u = min(1.0 - _EDGE, max(_EDGE, u))
        return math.log(u / (1.0 - u))

    @property
    def initial(self) -> float:
        if self.init is not None:
            return self.init
        return 0.0 if self.transform == "none" else (self.low + self.high) / 2


@dataclass(frozen=True)
class SearchSpace:
    """An ordered tuple of :class:`Param`; coordinate i of a CMA-ES vector is ``params[i]``."""

    params: tuple[Param, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for p in self.params:
            if p.name in seen:
                raise EvolutionError(f"parameter {p.name!r} appears twice in the search space")
            seen.add(p.name)
        if not self.params:
            raise EvolutionError("the search space has no parameters")

    @property
    def dim(self) -> int:
        return len(self.params)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def decode(self, x: Sequence[float]) -> dict[str, float]:
        if len(x) != self.dim:
            raise EvolutionError(f"vector of length {len(x)} for a search space of {self.dim} parameters")
        return {p.name: p.decode(float(v)) for p, v in zip(self.params, x)}

    def encode(self, values: Mapping[str, float]) -> list[float]:
        missing = [p.name for p in self.params if p.name not in values]
        if missing:
            raise EvolutionError(f"no value for parameter {missing[0]!r}")
        return [p.encode(values[p.name]) for p in self.params]

    def x0(self, overrides: Mapping[str, float] | None = None) -> list[float]:
        """The initial CMA-ES mean: every parameter's ``initial`` value (or an override), encoded."""
        values = {p.name: p.initial for p in self.params}
        values.update(overrides or {})
        return self.encode(values)

    @classmethod
    def of(cls, params: Iterable[Param]) -> "SearchSpace":
        return cls(tuple(params))
