"""Search spaces from a config plus each source's config.json data (and, when a checkpoint was opened,
its tensor names), so that a run (:mod:`tsugiki.evolution.problems`) and a plan
(:mod:`tsugiki.evolution.plan`, no weights) build them with one code path."""

from __future__ import annotations

from typing import Any, Mapping

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.evolution.dfs import DFSSpace, fold_for
from tsugiki.evolution.ps import DEFAULT_BOUNDS, PSSpace
from tsugiki.evolution.sdxl import SDXLBlockSpace
from tsugiki.evolution.space import Param, SearchSpace


def ps_members(space: Mapping[str, Any]) -> list[str]:
    return [*([space["base_model"]] if space.get("base_model") else []), *space["models"]]


def text_num_layers(cfg: Mapping[str, Any], label: str) -> int:
    """Layer count of a VLM's language model; hub configs omit values equal to the family default
    (llava-hf's text_config has no num_hidden_layers when it is Mistral's 32)."""
    text = cfg.get("text_config") or {}
    if isinstance(text.get("num_hidden_layers"), int):
        return text["num_hidden_layers"]
    from transformers import CONFIG_MAPPING

    family = text.get("model_type")
    if family not in CONFIG_MAPPING:
        raise EvolutionError(f"source {label}: text_config has no num_hidden_layers and no known model_type ({family!r})")
    return int(CONFIG_MAPPING[family]().num_hidden_layers)


def source_architecture(cfg: Mapping[str, Any], names: list[str] | None, label: str):
    """The merge architecture of an LLM source: checked against its tensor names when given, else
    (a plan) looked up from config.json's ``architectures`` alone."""
    from tsugiki.merging.architecture import architecture_for, spec_for_class

    if names is not None:
        return architecture_for(dict(cfg), names, label)
    classes = cfg.get("architectures") or []
    for cls in classes:
        spec = spec_for_class(cls)
        if spec is not None:
            return spec
    raise EvolutionError(f"source {label}: config.json names no known architecture ({', '.join(classes) or 'none'}); "
                         f"its layer layout needs the checkpoint's tensor names")


def ps_layout(cfg: Mapping[str, Any], names: list[str] | None, label: str, *, vlm_only: bool) -> tuple[int, str]:
    """(number of layers, layer prefix template) that PS layer groups refer to."""
    if vlm_only:
        return text_num_layers(cfg, label), "model.layers.${layer_index}."
    spec = source_architecture(cfg, names, label)
    try:
        return spec.num_layers(dict(cfg), names), spec.layer_prefix
    except TsugikiError as e:
        raise EvolutionError(f"source {label}: {e}") from None


def ps_space(config: EvolveConfig, paths: Mapping[str, str], num_layers: int, prefix: str) -> PSSpace:
    s = config.space
    params = s.get("params") or {k: {"bounds": list(v)} for k, v in DEFAULT_BOUNDS.items()}
    return PSSpace(
        method=s.get("method", "dare_ties"), base_model=s.get("base_model"), models=tuple(s["models"]),
        paths=paths, num_layers=num_layers, layer_prefix=prefix,
        layer_groups=s.get("layer_groups", 1), bounds={k: tuple(v["bounds"]) for k, v in params.items()},
        init={k: v["init"] for k, v in params.items() if "init" in v}, transform=s.get("transform", "sigmoid"),
        fixed=s.get("fixed", {}), merge_seed=s.get("merge_seed", 0), dtype=s.get("dtype"))


def dfs_space(config: EvolveConfig, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]],
               names: Mapping[str, list[str]] | None = None) -> DFSSpace:
    """The DFS space over ``space.models``; ``names`` (tensor names per model) also checks that scales
    can be folded into each model (a plan, from configs alone, leaves that to the run)."""
    s = config.space
    layers, first, fold = {}, None, None
    for name in s["models"]:
        cfg = configs[name]
        layers[name] = int(cfg.get("num_hidden_layers", 0))
        try:
            fold = fold_for(cfg, None if names is None else names[name], name)
        except EvolutionError as e:
            raise EvolutionError(f"{config.where('space.models')}{e}") from None
        shape = (tuple(cfg.get("architectures") or ()), cfg.get("hidden_size"))
        if first is not None and shape != first[1]:
            raise EvolutionError(f"{config.where('space.models')}{name} ({shape[0]}, hidden {shape[1]}) cannot share a "
                                 f"path with {first[0]} ({first[1][0]}, hidden {first[1][1]})")
        first = first or (name, shape)
    ends = s.get("fixed_ends") or {}
    try:
        return DFSSpace(
            models=tuple(s["models"]), paths=paths, num_layers=layers, repeats=s.get("repeats", 3),
            scale_bounds=tuple(s.get("scale_bounds", (0.5, 1.5))), scale_diagonal=s.get("scale_diagonal", True),
            fixed_model=ends.get("model"), fixed_first=ends.get("first", 0), fixed_last=ends.get("last", 0),
            init_model=s.get("init_model"), init_indicator=s.get("init_indicator", 1.0),
            transform=s.get("transform", "sigmoid"), fold=fold)
    except EvolutionError as e:
        raise EvolutionError(f"{config.where('space')}{e}") from None


def box_space(config: EvolveConfig) -> SearchSpace:
    t = config.space.get("transform", "sigmoid")
    return SearchSpace.of(Param(n, *p["bounds"], p.get("init"), p.get("transform", t))
                          for n, p in config.space["params"].items())


def sdxl_space(config: EvolveConfig, paths: Mapping[str, str]) -> SDXLBlockSpace:
    s = config.space
    params = s.get("params") or {"weight": {"bounds": list(DEFAULT_BOUNDS["weight"])}}
    try:
        return SDXLBlockSpace(
            method=s.get("method", "task_arithmetic"), base_model=s.get("base_model"), models=tuple(s["models"]),
            paths=paths, units=s.get("units", "blocks"),
            blocks=tuple(s["blocks"]) if s.get("blocks") is not None else None,
            bounds={k: tuple(v["bounds"]) for k, v in params.items()},
            init={k: v["init"] for k, v in params.items() if "init" in v}, transform=s.get("transform", "sigmoid"),
            fixed=s.get("fixed", {}), merge_seed=s.get("merge_seed", 0))
    except EvolutionError as e:
        raise EvolutionError(f"{config.where('space')}{e}") from None
