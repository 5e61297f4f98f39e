"""Planning a search without weights or data: what a config searches (its space, named parts and
evaluation budget), resolved from the sources' config.json files alone. ``tsugiki evolve CONFIG
--plan`` prints it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.evolution.data import check_data
from tsugiki.evolution.fitness import function_refs, names_code, resolve_fitness
from tsugiki.evolution.optimizers import cma_population
from tsugiki.evolution.sources import read_source_config, source_paths, tiny_configs
from tsugiki.evolution.space import SearchSpace
from tsugiki.hf_load import code_named
from tsugiki.merging.checkpoint import HUB_ID
from tsugiki.merging.refs import split_lora_ref


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


def plan_sources(config: EvolveConfig) -> list[str]:
    """The source names whose config.json a plan needs (the space kind says)."""
    return config.spec.space.plan_sources()


def plan_space(config: EvolveConfig, model_configs: Mapping[str, Mapping[str, Any]], run_dir: str | Path = ".") -> SpacePlan:
    """Resolve ``config``'s search space from the sources' config.json data (``model_configs``: source
    name -> parsed config.json; see :func:`plan_sources`) without opening any weights or data.

    The same builders as a run construct the space, so its dims and names are the run's. What a plan
    cannot check (tensor names, DFS scale folding, data files) is checked when the run starts. For
    ps_dfs, ``ps`` may be given; otherwise it takes the config of the PS recipe's base model."""
    paths = source_paths(config, Path(run_dir))
    kind = config.spec.space
    check_names(config, paths)
    missing = [n for n in plan_sources(config) if n not in paths]
    if missing:
        raise EvolutionError(f"{config.where('space')}unknown source {missing[0]!r} (known: {', '.join(paths)})")
    configs = dict(model_configs)
    notes = kind.plan_configs(config, paths, configs)
    lacking = [n for n in plan_sources(config) if n not in configs]
    if lacking:
        raise EvolutionError(f"plan: no config.json data for source {lacking[0]!r}")
    planned = kind.plan(config, paths, configs)
    search = config.spec.search
    population = search.population or cma_population(planned.space.dim)
    if search.optimizer != "cma":
        objectives = config.spec.objectives
        notes = (*notes, f"optimizer {search.optimizer}" + (f" over {len(objectives)} objectives ("
                 + ", ".join(f"{o.name}: {o.direction}" for o in objectives) + ")" if objectives else ""))
    budgets = [b for b in (search.generations and search.generations * population, search.max_evaluations) if b]
    est = config.spec.estimate
    if est is not None:
        calibration = ("" if est.method == "subsample" else
                       f"; first a calibration pass scores {'the sources and ' if est.sources else ''}{est.calibration} "
                       f"random candidates on every item")
        which = "each generation's best" if est.full_every == 1 else f"the best of one generation in {est.full_every}"
        check = f"; {which} also on every item" if est.full_every else ""
        notes = (*notes, f"fitness estimated ({est.method}): each candidate scores {est.items} of the fitness items"
                 f"{calibration}{check}")
    engine = config.spec.engine
    if engine is not None and engine.name != "hf":
        notes = (*notes, f"text scored with the {engine.name} engine (dtype {engine.dtype or 'auto'}); each "
                 "candidate's weights are swapped into it from memory")
    return SpacePlan(kind.kind, planned.space, planned.parts, population, min(budgets), (*notes, *planned.notes))


def config_function_refs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:func:`~tsugiki.evolution.fitness.function_refs` of a config's data, whose fitness may be a list
    of objectives (and its validation a list, one per objective): keys as ``fitness[1].function``."""
    fit, val = data.get("fitness"), data.get("validation")
    if not isinstance(fit, list):
        return function_refs(data)
    out = []
    for i, obj in enumerate(fit):
        view = {"fitness": obj, **({"validation": val[i]} if isinstance(val, list) and i < len(val) else {})}
        out += [(key.replace("fitness", f"fitness[{i}]", 1) if key.startswith("fitness") else
                 key.replace("validation", f"validation[{i}]", 1), name) for key, name in function_refs(view)]
    return out


def data_sections(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(dotted key, DATA) of every data section a config's data names (fitness, validation, test; per objective)."""
    out = []
    for section in ("fitness", "validation", "test"):
        d = data.get(section) or {}
        for key, part in ([(f"{section}[{i}]", x) for i, x in enumerate(d)] if isinstance(d, list) else [(section, d)]):
            if part.get("data") is not None:
                out.append((f"{key}.data", part["data"]))
    return out


def check_names(config: EvolveConfig, paths: Mapping[str, str]) -> None:
    """Refuse a fitness function (a registered name; code is not imported, a ``file.py`` must exist) or a
    model the space names that is not there (``paths``: the sources), at the config's ``FILE:LINE: key``."""
    for key, name in config_function_refs(config.data):
        target = name.rpartition(":")[0]
        try:
            if not names_code(name):
                resolve_fitness(name)
            elif target.endswith(".py") and not Path(target).is_file():
                raise EvolutionError(f"{target}: no such file")
        except TsugikiError as e:
            raise EvolutionError(f"{config.where(key)}{e}") from None
    config.spec.space.check_sources(config, paths)


def check_source_paths(config: EvolveConfig) -> None:
    """Refuse a source that is neither a local path that exists nor a hub id, at its ``FILE:LINE: sources.NAME``."""
    for name, whole in config.spec.sources.items():
        for ref in filter(None, split_lora_ref(whole)):  # MODEL+ADAPTER: each part
            if not Path(ref).exists() and not HUB_ID.match(ref):
                given = (config.spec.named_as.get(name) or {}).get("given", whole)
                what = given if ref == whole else f"{given}: {ref}"
                raise EvolutionError(f"{config.where('sources.' + name)}{what}: no such file or folder (and not a hub id)")
            if why := code_named(ref):  # a folder that names its own code (tsugiki.hf_load)
                raise EvolutionError(f"{config.where('sources.' + name)}{why}")


def check_config(config: EvolveConfig, run_dir: str | Path) -> None:
    """Everything the config names is there (:func:`check_source_paths`, :func:`check_names`, and its data:
    :func:`~tsugiki.evolution.data.check_data`), reading no model and no data: a run checks this before
    it builds or writes anything."""
    check_source_paths(config)
    check_names(config, source_paths(config, Path(run_dir)))
    for key, data in data_sections(config.data):
        check_data(data, config.where(key))


def plan_from_sources(config: EvolveConfig, run_dir: str | Path = ".") -> SpacePlan:
    """:func:`plan_space` with each needed source's config.json read by :func:`read_source_config`, or
    for the tiny models a run builds, as the factory would write it (nothing is built)."""
    check_source_paths(config)
    paths = source_paths(config, Path(run_dir))
    tiny = tiny_configs(config, Path(run_dir))
    read = lambda ref: tiny[ref] if ref in tiny else read_source_config(ref)  # noqa: E731
    run_built = config.spec.space.run_sources(Path(run_dir))
    configs = {n: read(paths[n]) for n in plan_sources(config) if n not in run_built and n in paths}
    config.spec.space.plan_configs(config, paths, configs, read=read)
    return plan_space(config, configs, run_dir)
