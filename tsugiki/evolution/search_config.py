"""``search:`` of an evolve config (:class:`Search`): which optimiser, its budget, and how candidates are
evaluated. Split from :mod:`tsugiki.evolution.config`, which uses it as the ``search`` section."""

from __future__ import annotations

import copy
from typing import Annotated, Any, Optional

from pydantic import PlainValidator, ValidationInfo, model_validator

from tsugiki.evolution.optimizers import OPTIMIZERS
from tsugiki.evolution.schema import Count, Mapping_, NonNegative, Number, Section, at, integer, number_value, one_of
from tsugiki.registry import did_you_mean

#: the names :data:`tsugiki.evolution.backends.BACKENDS` registers (checked by a test); listed here because
#: that module imports this one (through the config) and torch
BACKEND_NAMES = ("local", "ray")


def _device(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a device name (cpu, cuda, cuda:1, ...)")
    return v


def _sigma(v: Any) -> float:
    v = number_value(v)
    if v <= 0:
        raise ValueError("must be > 0")
    return v


def _optimizer(v: Any) -> str:
    if v not in OPTIMIZERS:  # the registry's names (pymoo and cma are imported only when a search starts)
        raise ValueError(f"unknown optimizer {v!r}{did_you_mean(v, OPTIMIZERS)} (known: {', '.join(OPTIMIZERS.names())})")
    return v


class Search(Section):
    """``search:``: the optimiser (``optimizer``: cma, nsga2 or random; :mod:`tsugiki.evolution.optimizers`)
    and how candidates are evaluated. ``sigma`` and ``cma_options`` are CMA-ES's. ``threads``: torch threads
    per evaluation, the same on every backend; ``device``: where models live and merge (cpu, cuda, ...);
    ``timeout``: s per candidate. With ``max_evaluations`` alone, that is the budget."""

    seed: NonNegative = 0
    optimizer: Annotated[str, PlainValidator(_optimizer)] = "cma"
    population: Optional[Annotated[int, integer(2)]] = None
    sigma: Annotated[float, PlainValidator(_sigma)] = 0.5
    generations: Optional[Count] = 10
    max_evaluations: Optional[Count] = None
    timeout: Optional[Number] = None
    workers: Count = 1
    backend: Annotated[str, one_of(*BACKEND_NAMES)] = "local"
    threads: Count = 1
    device: Annotated[str, PlainValidator(_device)] = "cpu"
    cma_options: Mapping_ = {}

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        if d.get("max_evaluations") is not None and "generations" not in d:
            d["generations"] = None  # the evaluation budget alone
        if d.get("optimizer", "cma") != "cma":
            for key in ("cma_options", "sigma"):
                if key in d:
                    raise at(key, f"{key} is CMA-ES's; optimizer {d['optimizer']!r} does not use it (drop it, or use "
                                  f"optimizer: cma)")
        return d

    @model_validator(mode="after")
    def _some_budget(self) -> "Search":
        if self.generations is None and self.max_evaluations is None:
            raise ValueError("set generations or max_evaluations")
        return self

    def to_data(self) -> dict[str, Any]:
        """Every key, defaults too, except ``optimizer: cma`` (the default, which configs written before
        there was a choice do not hold: their data, and so their fingerprints, stay as they were) and,
        for another optimiser, CMA-ES's keys (which it refuses)."""
        cma = self.optimizer == "cma"
        skip = ("optimizer",) if cma else ("sigma", "cma_options")
        return {k: copy.deepcopy(getattr(self, k)) for k in type(self).model_fields if k not in skip}
