"""Planning a search without weights or data: what a config searches (its space, named parts and
evaluation budget), resolved from the sources' config.json files alone. ``tsugiki evolve CONFIG
--plan`` prints it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.evolution.fitness import names_code, resolve_fitness
from tsugiki.evolution.sources import PS_MODEL, read_source_config, source_paths
from tsugiki.evolution.space import SearchSpace
from tsugiki.evolution.spaces import box_space, dfs_space, ps_layout, ps_members, ps_space, sdxl_space


@dataclass(frozen=True)
class SpacePlan:
    """What a config searches, resolved from model configs alone: the space, its named parts (sizes
    summing to ``space.dim``) and the evaluation budget. ``tsugiki evolve CONFIG --plan`` prints it."""

    kind: str
    space: SearchSpace
    parts: tuple[tuple[str, int], ...]
    population: int
    evaluations: int
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [f"search space ({self.kind}): {self.space.dim} dimensions"]
        lines += [f"  {count:6d}  {label}" for label, count in self.parts]
        lines.append(f"budget: population {self.population}, {self.evaluations} evaluations")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def cma_population(dim: int) -> int:
    """pycma's default population size for ``dim`` dimensions (used when search.population is unset)."""
    return 4 + int(3 * math.log(dim))


def plan_sources(config: EvolveConfig) -> list[str]:
    """The source names whose config.json a plan needs (``ps`` of ps_dfs: see :func:`plan_space`)."""
    kind = config.space["kind"]
    if kind == "ps":
        return ps_members(config.space)
    if kind in ("dfs", "ps_dfs"):
        return list(config.space["models"])
    return []


def ps_recipe_base(config: EvolveConfig) -> str:
    """The model ref (a source name or a path/hub id) whose shape the ps_dfs model ``ps`` has: the PS
    recipe's base model, or its first model (a PS merge keeps that model's layers and config)."""
    r = config.space["ps_recipe"]
    if isinstance(r, str):
        try:
            r = yaml.safe_load(Path(r).read_text(encoding="utf-8"))
        except OSError as e:
            raise EvolutionError(f"{config.where('space.ps_recipe')}cannot read the PS recipe ({e}); run the PS search "
                                 f"first, or give the ps model's config.json") from None
    ref = None
    if isinstance(r, Mapping):
        models = r.get("models") or [{}]
        ref = r.get("base_model") or (models[0].get("model") if isinstance(models[0], Mapping) else None)
    if not isinstance(ref, str):
        raise EvolutionError(f"{config.where('space.ps_recipe')}the PS recipe names no base_model or models")
    return ref


def plan_space(config: EvolveConfig, model_configs: Mapping[str, Mapping[str, Any]], run_dir: str | Path = ".") -> SpacePlan:
    """Resolve ``config``'s search space from the sources' config.json data (``model_configs``: source
    name -> parsed config.json; see :func:`plan_sources`) without opening any weights or data.

    The same builders as a run construct the space, so its dims and names are the run's. What a plan
    cannot check (tensor names, DFS scale folding, data files) is checked when the run starts. For
    ps_dfs, ``ps`` may be given; otherwise it takes the config of the PS recipe's base model."""
    paths = source_paths(config, Path(run_dir))
    kind, s = config.space["kind"], config.space
    for section in ("fitness", "validation"):
        fn = (config.data.get(section) or {}).get("function")
        if fn is not None and not names_code(fn):  # a plan never imports user code
            try:
                resolve_fitness(fn)
            except TsugikiError as e:
                raise EvolutionError(f"{config.where(section + '.function')}{e}") from None
    missing = [n for n in plan_sources(config) if n not in paths]
    if missing:
        raise EvolutionError(f"{config.where('space')}unknown source {missing[0]!r} (known: {', '.join(paths)})")
    configs = dict(model_configs)
    notes: list[str] = []
    if kind == "ps_dfs" and PS_MODEL not in configs:
        ref = ps_recipe_base(config)
        name = ref if ref in configs else next((n for n, p in paths.items() if p == ref and n in configs), None)
        if name is None:
            raise EvolutionError(f"{config.where('space.ps_recipe')}no config.json given for {ref!r}, the PS model's base")
        configs[PS_MODEL] = configs[name]
        notes.append(f"{PS_MODEL}: shaped like {ref} (the PS recipe's base model)")
    lacking = [n for n in plan_sources(config) if n not in configs]
    if lacking:
        raise EvolutionError(f"plan: no config.json data for source {lacking[0]!r}")
    parts: list[tuple[str, int]] = []
    if kind == "box":
        space = box_space(config)
        parts.append(("box parameters", space.dim))
    elif kind == "ps":
        from tsugiki.vlm.sources import is_multimodal_config

        members = ps_members(s)
        vlms = [m for m in members if is_multimodal_config(configs[m])]
        llms = [m for m in members if m not in vlms]
        ref = llms[0] if llms else vlms[0]
        num_layers, prefix = ps_layout(configs[ref], None, ref, vlm_only=not llms)
        ps = ps_space(config, paths, num_layers, prefix)
        space = ps.space()
        ps.recipe(space.decode(space.x0()))
        groups = ps.groups()
        per = ("1 value" if groups == [""]
               else f"{len(groups)} values ({ps.layer_groups} groups of {num_layers} layers + rest)")
        parts += [(f"{p}: {len(ps.models)} models x {per}", len(ps.models) * len(groups)) for p in ps.bounds]
        if vlms:
            notes.append(f"VLM: the language model inside {vlms[0]} is merged; its vision tower and projector stay fixed")
    elif kind in ("dfs", "ps_dfs"):
        dfs = dfs_space(config, paths, configs)
        space = dfs.space()
        total = sum(dfs.num_layers[m] for m in dfs.models)
        fixed = len(dfs.fixed_head()) + len(dfs.fixed_tail())
        sizes = " + ".join(str(dfs.num_layers[m]) for m in dfs.models)
        parts.append((f"indicators I: T = ({sizes}{f' - {fixed} fixed' if fixed else ''}) layers x r={dfs.repeats}",
                      len(dfs.slots())))
        m = len(dfs.models)
        w = f"scaling matrix W: {m} x {m}" + ("" if dfs.scale_diagonal else " off-diagonal")
        parts.append((w, len(dfs.scale_pairs())))
        notes.append(f"{total} source layers; a candidate path has up to {len(dfs.slots()) + fixed} layers")
    else:
        sd = sdxl_space(config, paths)
        space = sd.space()
        sd.recipe(space.decode(space.x0()))
        parts += [(f"{p}: {len(sd.models)} models x {len(sd.columns())} UNet {sd.units}", len(sd.models) * len(sd.columns()))
                  for p in sd.bounds]
    search = config.search
    population = search["population"] or cma_population(space.dim)
    budgets = [b for b in (search["generations"] and search["generations"] * population, search["max_evaluations"]) if b]
    return SpacePlan(kind, space, tuple(parts), population, min(budgets), tuple(notes))


def plan_from_sources(config: EvolveConfig, run_dir: str | Path = ".") -> SpacePlan:
    """:func:`plan_space` with each needed source's config.json read by :func:`read_source_config`."""
    paths = source_paths(config, Path(run_dir))
    configs = {n: read_source_config(paths[n]) for n in plan_sources(config) if n != PS_MODEL and n in paths}
    if config.space["kind"] == "ps_dfs" and PS_MODEL in plan_sources(config):
        if Path(paths[PS_MODEL]).exists():
            configs[PS_MODEL] = read_source_config(paths[PS_MODEL])
        else:
            ref = ps_recipe_base(config)
            if ref not in configs:
                configs[PS_MODEL] = read_source_config(paths.get(ref, ref))
    return plan_space(config, configs, run_dir)
