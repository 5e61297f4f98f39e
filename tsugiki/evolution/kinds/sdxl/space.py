"""SDXL UNet block search space (PS over blocks / block groups).

EvoSDXL-JP (Akiba et al. 2024, arXiv:2403.13187) merged SDXL UNets with per-block parameters. Here a
candidate is a merge recipe whose per-model parameters (``weight``, and ``density`` for DARE/TIES) are
conditionals over the UNet's blocks, or over its (block, group) units, from
:mod:`tsugiki.diffusion.blocks` (BASE, IN00..IN08, M00, OUT00..OUT08; groups attention / resnet /
norm / embedding). Parameter names::

    "<model>.<param>.<BLOCK>"            units: blocks   e.g. "variant_0.weight.IN04"
    "<model>.<param>.<BLOCK>/<group>"    units: groups   e.g. "variant_0.weight.M00/attention"
    "<model>.<param>.rest"               every tensor outside the searched ``blocks`` (when a subset)

Candidates are merged in place into one loaded UNet with the same planner and kernels as ``tsugiki
merge`` (:func:`tsugiki.diffusion.merge.plan_unet_merge`), so a candidate equals the disk merge of its
recipe; the best exports as a full pipeline folder (:func:`tsugiki.diffusion.merge.merge_sdxl_to_disk`).
The cheap UNet fitness ``unet_output_mse`` is in :mod:`tsugiki.evolution.kinds.sdxl.unet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tsugiki.diffusion.blocks import BLOCKS, GROUPS, block_groups, conditional_setting
from tsugiki.errors import EvolutionError
from tsugiki.evolution.kinds.ps.space import DEFAULT_BOUNDS, check_searched, method_level, recipe_data
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.merging.recipe import Recipe

UNITS = ("blocks", "groups")


@dataclass(frozen=True)
class SDXLBlockSpace:
    method: str
    base_model: str | None
    models: tuple[str, ...]
    paths: Mapping[str, str]
    units: str = "blocks"
    blocks: tuple[str, ...] | None = None  # searched blocks/units; None: all
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {"weight": DEFAULT_BOUNDS["weight"]})
    init: Mapping[str, float] = field(default_factory=dict)
    transform: str = "sigmoid"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    merge_seed: int | None = 0

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise EvolutionError(f"space.units: expected one of {', '.join(UNITS)}, got {self.units!r}")
        for b in self.blocks or ():
            block, _, group = b.partition("/")
            if block not in BLOCKS or (group and group not in GROUPS) or (group and self.units == "blocks"):
                raise EvolutionError(f"space.blocks: unknown {self.units[:-1]} {b!r} (blocks: {', '.join(BLOCKS)}"
                                     + (f"; groups: {', '.join(GROUPS)}" if self.units == "groups" else "") + ")")
        for name in (*self.models, *([self.base_model] if self.base_model else [])):
            if name not in self.paths:
                raise EvolutionError(f"space: model {name!r} is not among the sources ({', '.join(self.paths)})")
        check_searched(self.method, self.bounds, self.fixed)

    def owners(self, param: str) -> list[str | None]:
        """Each model, or None once for a method-level parameter (as in the PS space)."""
        return [None] if method_level(self.method, param) else list(self.models)

    @staticmethod
    def name(model: str | None, param: str, unit: str) -> str:
        return (f"{model}.{param}" if model is not None else param) + f".{unit}"

    def unit_names(self) -> list[str]:
        if self.units == "blocks":
            every = list(BLOCKS)
        else:
            every = [u.name for u in block_groups()]
        if self.blocks is None:
            return every
        wanted = set(self.blocks)
        if self.units == "groups":  # a whole block in the list selects its groups
            wanted |= {u for u in every if u.split("/")[0] in self.blocks}
        return [u for u in every if u in wanted]

    def columns(self) -> list[str]:
        return self.unit_names() + (["rest"] if self.blocks is not None else [])

    def space(self) -> SearchSpace:
        return SearchSpace.of(Param(self.name(m, p, u), lo, hi, self.init.get(p), self.transform)
                              for p, (lo, hi) in self.bounds.items() for m in self.owners(p) for u in self.columns())

    def recipe_dict(self, values: Mapping[str, float]) -> dict[str, Any]:
        def setting(m: str | None, p: str):
            units = {u: float(values[self.name(m, p, u)]) for u in self.unit_names()}
            return conditional_setting(units, float(values[self.name(m, p, "rest")]) if self.blocks is not None else None)

        searched = {p: self.owners(p) for p in self.bounds}
        entries = [{"model": self.paths[m], "parameters": {p: setting(m, p) for p, o in searched.items() if o != [None]}}
                   for m in self.models]
        fixed = {**self.fixed, **{p: setting(None, p) for p, o in searched.items() if o == [None]}}
        return recipe_data(self.method, entries, self.paths[self.base_model] if self.base_model is not None else None,
                           fixed, self.merge_seed)

    def recipe(self, values: Mapping[str, float]):
        return Recipe.from_dict(self.recipe_dict(values), source_name="<candidate>")

    def matrix(self, values: Mapping[str, float], pname: str):
        cols, owners = self.columns(), self.owners(pname)
        return ([m if m is not None else "(all models)" for m in owners], cols,
                [[float(values[self.name(m, pname, c)]) for c in cols] for m in owners])
