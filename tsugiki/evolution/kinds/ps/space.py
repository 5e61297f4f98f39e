"""Parameter-space (PS) search: per-model merge parameters, optionally per layer group.

PS evolution as in Akiba et al. 2024 (arXiv:2403.13187, Sec. 3.1): a merge method (default DARE-TIES,
Yu et al. 2023) whose per-model ``weight`` and ``density`` are searched by CMA-ES. A candidate is a
plain tsugiki/mergekit :class:`~tsugiki.merging.recipe.Recipe`, so the best one is a YAML recipe that
``tsugiki merge`` (and mergekit) can run.

Parameter names (what ``history.jsonl`` and the heatmap use)::

    layer_groups == 1:  "<model>.<param>"                         e.g. "variant_0.weight"
    layer_groups  > 1:  "<model>.<param>.g<k>", k = 0..G-1      one value per group of layers
                        "<model>.<param>.rest"                  embeddings, final norm, lm_head

A method-level numeric parameter in the bounds (nearswap's ``t``, sce's ``select_topk``, ram's
``epsilon``, ramplus_tl's ``r``/``alpha``, karcher's ``tol``) is searched once for all models and named
``"<param>"`` (``"<param>.g<k>"``/``"<param>.rest"`` with layer groups); it lands in the recipe's
top-level ``parameters``.

Layer i of L belongs to group ``i * G // L``. Groups become ``{filter, value}`` conditionals, one per
layer, whose filter is the architecture's exact layer prefix (``model.layers.3.``), followed by a
catch-all conditional holding the ``rest`` value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tsugiki.errors import EvolutionError
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.merging.methods import METHODS
from tsugiki.merging.recipe import Recipe

DEFAULT_BOUNDS = {"weight": (0.0, 1.0), "density": (0.1, 1.0)}


@dataclass(frozen=True)
class PSSpace:
    """PS search space. ``models`` are the searched (non-base) models' short names; ``paths`` maps every
    short name (the base included) to the model reference written into recipes."""

    method: str
    base_model: str | None
    models: tuple[str, ...]
    paths: Mapping[str, str]
    num_layers: int
    layer_prefix: str = "model.layers.${layer_index}."
    layer_groups: int = 1
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BOUNDS))
    init: Mapping[str, float] = field(default_factory=dict)
    transform: str = "sigmoid"
    fixed: Mapping[str, Any] = field(default_factory=dict)  # method-level parameters, not searched
    merge_seed: int | None = 0
    dtype: str | None = None
    tokenizer_source: str | None = None  # base, union or a source name (tsugiki.merging.vocab)

    def __post_init__(self) -> None:
        if not self.models:
            raise EvolutionError("space.models: at least one model to merge is needed")
        if not 1 <= self.layer_groups <= max(1, self.num_layers):
            raise EvolutionError(f"space.layer_groups: {self.layer_groups} must be within 1..{self.num_layers} (the layer count)")
        check_searched(self.method, self.bounds, self.fixed)
        for name in (*self.models, *([self.base_model] if self.base_model else [])):
            if name not in self.paths:
                raise EvolutionError(f"space: model {name!r} is not among the sources ({', '.join(self.paths)})")

    # ---- naming ---------------------------------------------------------------------------------
    def groups(self) -> list[str]:
        return [""] if self.layer_groups == 1 else [f"g{k}" for k in range(self.layer_groups)] + ["rest"]

    def name(self, model: str | None, param: str, group: str = "") -> str:
        """A searched value's name; ``model`` None for a method-level parameter."""
        return (f"{model}.{param}" if model is not None else param) + (f".{group}" if group else "")

    def is_global(self, param: str) -> bool:
        return method_level(self.method, param)

    def owners(self, param: str) -> list[str | None]:
        """The models a parameter is searched for: each model, or None once for a method-level one."""
        return [None] if self.is_global(param) else list(self.models)

    def space(self) -> SearchSpace:
        params = []
        for pname, (lo, hi) in self.bounds.items():
            for model in self.owners(pname):
                for g in self.groups():
                    params.append(Param(self.name(model, pname, g), lo, hi, self.init.get(pname), self.transform))
        return SearchSpace.of(params)

    def group_of_layer(self, layer: int) -> int:
        return layer * self.layer_groups // self.num_layers

    # ---- decoding -------------------------------------------------------------------------------
    def recipe_dict(self, values: Mapping[str, float]) -> dict[str, Any]:
        """Plain recipe data (mergekit layout) for decoded parameter values."""
        entries = []
        for model in self.models:
            params = {pname: self.setting(values, model, pname) for pname in self.bounds if not self.is_global(pname)}
            entries.append({"model": self.paths[model], "parameters": params})
        fixed = {**self.fixed, **{pname: self.setting(values, None, pname) for pname in self.bounds if self.is_global(pname)}}
        data = recipe_data(self.method, entries, self.paths[self.base_model] if self.base_model is not None else None,
                           fixed, self.merge_seed, self.dtype)
        if self.tokenizer_source is not None:
            ts = self.tokenizer_source
            data["tokenizer_source"] = ts if ts in ("base", "union") else self.paths[ts]
        return data

    def setting(self, values: Mapping[str, float], model: str | None, pname: str) -> Any:
        """One parameter's recipe value: a number, or per-layer conditionals with layer groups."""
        if self.layer_groups == 1:
            return float(values[self.name(model, pname)])
        conds = []
        for layer in range(self.num_layers):
            g = self.group_of_layer(layer)
            prefix = self.layer_prefix.replace("${layer_index}", str(layer))
            conds.append({"filter": prefix, "value": float(values[self.name(model, pname, f"g{g}")])})
        conds.append({"value": float(values[self.name(model, pname, "rest")])})
        return conds

    def recipe(self, values: Mapping[str, float]) -> Recipe:
        return Recipe.from_dict(self.recipe_dict(values), source_name="<candidate>")

    def matrix(self, values: Mapping[str, float], pname: str) -> tuple[list[str], list[str], list[list[float]]]:
        """(row labels = models, column labels = groups, values) of one parameter, for the heatmap."""
        cols, owners = self.groups(), self.owners(pname)
        rows = [[float(values[self.name(m, pname, g)]) for g in cols] for m in owners]
        return [m if m is not None else "(all models)" for m in owners], [g or "all" for g in cols], rows


def method_level(method: str, param: str) -> bool:
    """Whether ``param`` is a method-level parameter of ``method`` (one value for all models)."""
    spec = METHODS.get(method).param(param) if method in METHODS else None
    return spec is not None and not spec.per_model


def check_searched(method: str, bounds: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    """Searched parameters must be real-valued and not also fixed (EvolutionError naming the key)."""
    spec_of = METHODS.get(method).param if method in METHODS else (lambda name: None)
    for pname in bounds:
        spec = spec_of(pname)
        if spec is not None and spec.kind is not float:
            raise EvolutionError(f"space.params.{pname}: {method}'s {pname} is {spec.kind.__name__}; "
                                 "only real-valued parameters can be searched (set it under space.fixed)")
        if pname in fixed:
            raise EvolutionError(f"space.params.{pname}: also set under space.fixed; a parameter is searched or fixed")


def recipe_data(method: str, entries: list[dict[str, Any]], base_path: str | None, fixed: Mapping[str, Any],
                merge_seed: int | None, dtype: str | None = None) -> dict[str, Any]:
    """A mergekit-style recipe dict from per-model entries plus the space's fixed settings."""
    data: dict[str, Any] = {"merge_method": method, "models": entries}
    if base_path is not None:
        data["base_model"] = base_path
    if fixed:
        data["parameters"] = dict(fixed)
    if dtype is not None:
        data["dtype"] = dtype
    if merge_seed is not None:
        data["seed"] = int(merge_seed)
    return data
