"""The evolve config: one YAML file, validated into typed sections (unknown keys refused, ``file:line``
in errors). Each section below is a class whose fields are its keys, with their defaults; ``space:`` is
one of the kinds in :mod:`tsugiki.evolution.kinds` (``space.kind`` picks it: ps, dfs, ps_dfs, box,
sdxl_blocks; each kind's class lists its keys). Paths are relative to the config file.

    name: str                                   [file stem]
    sources: {NAME: model dir or hub id, ...}   models the space refers to by NAME
    tiny_models | tiny_vlm | tiny_sdxl: {...}   tiny factory models built offline into RUN_DIR/models
    space: {kind: ..., ...}                     the search space (tsugiki.evolution.kinds)
    fitness: {function: NAME | module:function | file.py:function, args: {...}, data: DATA}
             or a list of objectives, each also with {name, direction: maximize | minimize}
    validation: {data: DATA, function, args}    optional, never searched on (a list, one per objective)
    test: {data: DATA}                          optional: the evaluation set, kept disjoint
    search: {seed, optimizer, population, sigma, generations, max_evaluations, timeout, workers, backend,
             threads, device, cma_options}      (:mod:`tsugiki.evolution.search_config`)
    engine: {name: hf | vllm, dtype, ...}       optional: what scores text (:class:`EngineSection`)

DATA is described in :mod:`tsugiki.evolution.data`. ``workers``, ``backend``, ``generations`` and
``max_evaluations`` may change when a run is resumed; any other change makes the config incompatible
with the run dir (see :meth:`EvolveConfig.fingerprint`, kept in the run dir's ``run.json``). A resume
rebuilds the optimiser's state by replaying the run's logs under this config (no pickle; see
:mod:`tsugiki.evolution.rundir`). A run dir's ``config.yaml`` also carries ``named_as``: the sources as
the user wrote them, which outputs name them by.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional, Union

import yaml
from pydantic import PlainValidator, StrictBool, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator

from tsugiki.errors import EvolutionError, RecipeError
from tsugiki.evolution.schema import (
    Count,
    Mapping_,
    NonNegative,
    PathStr,
    Section,
    at,
    config_error,
    one_of,
    resolve_path,
    where,
)
from tsugiki.evolution.engine_config import EngineSection
from tsugiki.evolution.estimate import ESTIMATORS
from tsugiki.evolution.search_config import Search
from tsugiki.evolution.tiny_config import TinyModels, TinySdxl, TinyVlm
from tsugiki.evolution.space_kind import SPACE_KINDS, SpaceKind
from tsugiki.registry import did_you_mean
from tsugiki.yaml_lines import parse_yaml

RESUMABLE_CHANGES = ("workers", "backend", "generations", "max_evaluations")
BRINGS_ITEMS = ("lm_eval",)  # fitness functions whose items come from their args (no data: needed)


def _generator(v: Any) -> Union[str, list]:
    if not (isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))):
        raise ValueError("expected a generator name or a list of them")
    return v


def _language(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a language code (ja, en)")
    return v


def _image(v: Any, info: ValidationInfo) -> Any:
    return resolve_path(v, info) if isinstance(v, str) else v


class PairItem(Section):
    """One inline item of ``data.pairs``."""

    prompt: Any = None
    question: Any = None
    answer: Any = None
    id: Any = None
    image: Annotated[Any, PlainValidator(_image)] = None

    @model_validator(mode="after")
    def _complete(self) -> "PairItem":
        if ("prompt" not in self.model_fields_set and "question" not in self.model_fields_set) or "answer" not in self.model_fields_set:
            raise ValueError("needs 'prompt' (or 'question') and 'answer'")
        return self


class Data(Section):
    """``data:`` of fitness, validation and test (:mod:`tsugiki.evolution.data`)."""

    pairs: Optional[list[PairItem]] = None
    file: Optional[PathStr] = None
    mgsm: Annotated[Optional[str], PlainValidator(_language)] = None
    source: Optional[PathStr] = None
    limit: Optional[NonNegative] = None
    generator: Annotated[Optional[Union[str, list]], PlainValidator(_generator)] = None
    split: Any = None
    n: Optional[NonNegative] = None
    seed: Optional[NonNegative] = None

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        if len([k for k in ("pairs", "file", "generator", "mgsm") if k in d]) != 1:
            raise ValueError("expected exactly one of 'pairs', 'file', 'generator', 'mgsm'")
        if "source" in d and "mgsm" not in d:
            raise at("source", "'source' goes with 'mgsm'")
        return d

    @field_validator("pairs", mode="before")
    @classmethod
    def _a_list(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("expected a list of {prompt, answer}")
        return v


def _function(v: Any, info: ValidationInfo) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    target, sep, attr = v.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{resolve_path(target, info)}:{attr}"
    return v


class Estimate(Section):
    """``fitness.estimate``: score each candidate on ``items`` of the fitness items and estimate its full-set
    score (:mod:`tsugiki.evolution.estimate`): ``method`` subsample (a fixed random subset), anchors
    (representative items, weighted) or irt (2PL item parameters, ``dim`` dimensions). For anchors and irt,
    a calibration pass first scores the sources (with ``sources``, where the space can score them as they are) and
    ``calibration`` random candidates on the full set. Every ``full_every``-th generation's best is also
    scored on the full set, so the history shows how far the estimate strays, and the run's best is the
    checked generation best with the highest full-set score (0: no checks; the best is by estimate)."""

    method: Annotated[str, one_of(*ESTIMATORS)] = "irt"
    items: Count
    calibration: NonNegative = 8
    sources: StrictBool = True
    seed: NonNegative = 0
    dim: Count = 1
    full_every: NonNegative = 1


def _lm_eval_paths(function: Any, args: Any, info: ValidationInfo) -> Any:
    """An ``lm_eval`` function's ``include_path``, relative to the config file like every path in it."""
    ok = function == "lm_eval" and isinstance(args, Mapping) and isinstance(args.get("include_path"), str)
    return dict(args, include_path=resolve_path(args["include_path"], info)) if ok else args


class Fitness(Section):
    """``fitness:``: a registered name, ``module:function`` or ``file.py:function`` (code named by a
    path runs only with ``--allow-code``), its keyword ``args``, its ``data`` and, optionally, how a
    candidate's score is estimated from a few items (``estimate``)."""

    function: Annotated[Optional[str], PlainValidator(_function)] = None
    args: Mapping_ = {}
    data: Optional[Data] = None
    estimate: Optional[Estimate] = None

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        cls._required(d)
        d["args"] = _lm_eval_paths(d.get("function"), d.get("args") or {}, info)
        return d

    @classmethod
    def _required(cls, d: dict) -> None:
        if not isinstance(d.get("function"), str):
            raise at("function", "expected a fitness function name (registered, module:function or file.py:function)")


class Validation(Fitness):
    """``validation:``: scored on the best candidates only, never searched on; ``function`` and ``args`` default to
    the fitness's; ``data`` is required unless the function brings its items (``lm_eval``: its tasks' docs)."""

    @classmethod
    def _required(cls, d: dict) -> None:
        if "estimate" in d:
            raise at("estimate", "only the fitness is estimated; validation scores its whole set")


def _default_name(d: dict) -> None:
    if "name" not in d and isinstance(d.get("function"), str):
        d["name"] = d["function"].rpartition(":")[2]  # a registered name, or the function of module:function
    if "name" in d and (not isinstance(d["name"], str) or not d["name"]):
        raise at("name", f"expected a non-empty string, got {d['name']!r}")


class Objective(Fitness):
    """One objective of a multi-objective ``fitness:`` (a list of these): a fitness plus its ``name``
    (default: the function's name; unique) and ``direction`` (maximize or minimize)."""

    name: Optional[str] = None
    direction: Annotated[str, one_of("maximize", "minimize")] = "maximize"

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        d = super()._check(d, info)
        if "estimate" in d:
            raise at("estimate", "a multi-objective fitness is not estimated (score every item, or search one fitness)")
        _default_name(d)
        return d


class ValidationObjective(Validation):
    """One entry of a multi-objective ``validation:`` list: the objective ``name`` it validates (default:
    the objective at the same position), whose ``function``, ``args`` and direction it takes by default."""

    name: Optional[str] = None


def _sections(kind: type[Section], what: str):
    def check(v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, list):
            return (Validation if kind is ValidationObjective else Fitness).model_validate(v, context=info.context)
        if len(v) < 2:
            raise ValueError(f"a list of {what} needs two or more (one {what[:-1]} is a mapping)")
        return tuple(TypeAdapter(list[kind]).validate_python(v, context=info.context))

    return PlainValidator(check)


class Test(Section):
    """``test:``: the evaluation set (``data``, or ``function: lm_eval`` and ``args``), disjoint from the others."""

    data: Optional[Data] = None
    function: Optional[str] = None
    args: Mapping_ = {}

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        if ("data" in d) == ("function" in d):
            raise ValueError("expected 'data' or a 'function' that brings its items (lm_eval), not both")
        d["args"] = _lm_eval_paths(d.get("function"), d.get("args") or {}, info)
        return d


def _space(v: Any, info: ValidationInfo) -> SpaceKind:
    if isinstance(v, SpaceKind):
        return v
    if not isinstance(v, Mapping):
        raise ValueError(f"expected a mapping, got {type(v).__name__}")
    kind = v.get("kind")
    if not isinstance(kind, str) or kind not in SPACE_KINDS:
        raise at("kind", f"expected one of {', '.join(sorted(SPACE_KINDS.names()))}, got {kind!r}"
                         f"{did_you_mean(kind, SPACE_KINDS)}")
    return SPACE_KINDS.get(kind).model_validate(v, context=info.context)


def _sources(v: Any, info: ValidationInfo) -> dict[str, str]:
    if not isinstance(v, Mapping):
        raise ValueError(f"expected a mapping, got {type(v).__name__}")
    out = {}
    for k, p in v.items():
        try:
            out[str(k)] = resolve_path(p, info)
        except ValueError as e:
            raise at(k, str(e)) from None
    return out


class ConfigModel(Section):
    """The whole evolve config, typed (``EvolveConfig.spec``)."""

    name: str
    sources: Annotated[dict[str, str], PlainValidator(_sources)] = {}
    named_as: dict[str, dict[str, str]] = {}
    tiny_models: Optional[TinyModels] = None
    tiny_vlm: Optional[TinyVlm] = None
    tiny_sdxl: Optional[TinySdxl] = None
    space: Annotated[SpaceKind, PlainValidator(_space)]
    fitness: Annotated[Union[Fitness, tuple[Objective, ...]], _sections(Objective, "objectives")]
    validation: Annotated[Optional[Union[Validation, tuple[ValidationObjective, ...]]], _sections(ValidationObjective, "validations")] = None
    test: Optional[Test] = None
    search: Search = Search()
    engine: Optional[EngineSection] = None

    @classmethod
    def _check(cls, v: dict, info: ValidationInfo) -> dict:
        d = {k: x for k, x in v.items() if x is not None or k in ("space", "fitness")}
        for key in ("space", "fitness"):
            if key not in d:
                raise ValueError(f"missing required key {key!r}")
        name = (info.context or {}).get("name", "<config>")
        d["name"] = d.get("name") or Path(name).stem
        d["search"] = d.get("search") or {}
        sources = d["sources"] = d.get("sources") or {}
        if isinstance(sources, Mapping):
            # how the user wrote each source (outputs name them so: tsugiki.merging.provenance); a run
            # dir's config.yaml carries this over from the config the run was started with
            named = {str(k): {"given": str(x), "where": f"sources.{k} in {Path(name).name}"} for k, x in sources.items()}
            given = d.get("named_as") or {}
            if not isinstance(given, Mapping):
                raise at("named_as", f"expected a mapping, got {type(given).__name__}")
            for k, x in given.items():
                if k in named:
                    if not isinstance(x, Mapping) or set(x) - {"given", "where"}:
                        raise at(("named_as", k), "expected {given, where}")
                    named[k] = {"given": str(x.get("given")), "where": str(x.get("where"))}
            d["named_as"] = named
        val, fit = d.get("validation"), d["fitness"]
        if isinstance(val, Mapping) and val.get("data") is None:  # code may bring items: checked as it loads
            fn = val.get("function") or (fit.get("function") if isinstance(fit, Mapping) else None)
            if not (fn in BRINGS_ITEMS or (isinstance(fn, str) and ":" in fn)):
                raise at("validation", "missing required key 'data'")
        if "tiny_sdxl" in d and ("tiny_models" in d or "tiny_vlm" in d):
            raise at("tiny_sdxl", "use only one of tiny_models, tiny_vlm, tiny_sdxl")
        if "tiny_vlm" in d and "tiny_models" in d:
            raise at("tiny_vlm", "use either tiny_models or tiny_vlm, not both")
        return d

    @model_validator(mode="after")
    def _objectives_agree(self) -> "ConfigModel":
        objs, val = self.objectives, self.validation
        names = [o.name for o in objs]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise at(("fitness", i, "name"), f"objective name {name!r} is used twice; give each objective a unique name")
        if objs and self.search.optimizer == "cma":
            raise at(("search", "optimizer"), f"cma optimises one fitness, not {len(objs)} objectives; use optimizer: "
                                              f"nsga2 or random (or one weighted_sum fitness)")
        if objs and isinstance(val, Validation):
            raise at("validation", f"a multi-objective run validates each objective: give a list of validation "
                                   f"sections, one per objective ({', '.join(names)})")
        if not objs and isinstance(val, tuple):
            raise at("validation", "a list of validations goes with a list of objectives; this fitness is one")
        if isinstance(val, tuple):
            if len(val) != len(objs):
                raise at("validation", f"{len(val)} validations for {len(objs)} objectives ({', '.join(names)})")
            for i, (v, o) in enumerate(zip(val, objs)):
                if v.name is not None and v.name != o.name:
                    raise at(("validation", i, "name"), f"{v.name!r}: validation {i} validates objective {o.name!r} "
                                                        f"(same order as fitness)")
        return self

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """The objectives of a multi-objective fitness; () for one fitness."""
        return self.fitness if isinstance(self.fitness, tuple) else ()

    @property
    def estimate(self) -> Optional[Estimate]:
        """``fitness.estimate`` (a multi-objective fitness is never estimated)."""
        return None if self.objectives else self.fitness.estimate


@dataclass(frozen=True)
class EvolveConfig:
    """A validated config as plain data (``data``; paths absolute; what the run dir's config.yaml
    holds) plus where each key was written; :attr:`spec` is the same config typed."""

    data: Mapping[str, Any]
    source_name: str = "<config>"
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def spec(self) -> ConfigModel:
        return _validate(self.data, self.source_name, self.lines, Path("/"))

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def space(self) -> Mapping[str, Any]:
        return self.data["space"]

    @property
    def search(self) -> Mapping[str, Any]:
        return self.data["search"]

    def where(self, path: str) -> str:
        """``"FILE:LINE: path: "`` for messages about a dotted path (``space.models``)."""
        return where(self.source_name, self.lines, path)

    def fingerprint(self) -> str:
        """Hash of everything that changes results: the config minus :data:`RESUMABLE_CHANGES`."""
        d = copy.deepcopy(dict(self.data))
        d["search"] = {k: v for k, v in d["search"].items() if k not in RESUMABLE_CHANGES}
        d.pop("name", None)
        d.pop("named_as", None)  # describes the sources; changes no result
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def differences(self, other: "EvolveConfig") -> list[str]:
        """Dotted keys whose values differ, ignoring resumable changes (for the resume error)."""
        out: list[str] = []

        def walk(a: Any, b: Any, path: str) -> None:
            if isinstance(a, Mapping) and isinstance(b, Mapping):
                for k in sorted(set(a) | set(b)):
                    if path == "search" and k in RESUMABLE_CHANGES:
                        continue
                    walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            elif a != b and path != "name" and not path.startswith("named_as"):
                out.append(path)

        walk(self.data, other.data, "")
        return out

    def with_search(self, **changes: Any) -> "EvolveConfig":
        d = copy.deepcopy(dict(self.data))
        d["search"].update(changes)
        return EvolveConfig(d, self.source_name, self.lines)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self.data)), sort_keys=False, allow_unicode=True, width=100)


def _validate(data: Any, name: str, lines: Mapping[str, int], base: Path) -> ConfigModel:
    try:
        return ConfigModel.model_validate(data, context={"base": base, "name": name})
    except ValidationError as e:
        raise config_error(e, name, lines) from None


def load_config(path_or_text: str | os.PathLike, *, source_name: str | None = None, base_dir: Path | None = None) -> EvolveConfig:
    """Load and validate a config file (or YAML text, with ``base_dir`` for relative paths)."""
    if isinstance(path_or_text, os.PathLike) or ("\n" not in str(path_or_text) and str(path_or_text).endswith((".yaml", ".yml"))):
        p = Path(path_or_text)
        name = source_name or str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise EvolutionError(f"{name}: cannot read config: {e}") from None
        base = base_dir or p.resolve().parent
    else:
        text, name, base = str(path_or_text), source_name or "<config>", base_dir or Path.cwd()
    try:
        data, lines, _ = parse_yaml(text, name)
    except RecipeError as e:
        raise EvolutionError(str(e)) from None
    return from_data(data, source_name=name, base_dir=base, lines=lines)


def from_data(data: Any, *, source_name: str = "<dict>", base_dir: Path | None = None,
              lines: Mapping[str, int] | None = None) -> EvolveConfig:
    """Validate plain data (as YAML gives) into an :class:`EvolveConfig`."""
    spec = _validate(data, source_name, lines or {}, base_dir or Path.cwd())
    config = EvolveConfig(spec.to_data(), source_name, lines or {})
    config.__dict__["spec"] = spec  # the typed form, already made
    return config
