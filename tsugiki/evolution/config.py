"""The evolve config: one YAML file, validated strictly (unknown keys refused, ``file:line`` in errors).

Schema (defaults in brackets; paths are relative to the config file)::

    name: str                                   [file stem]
    sources: {NAME: model dir or hub id, ...}   models the space refers to by NAME
    named_as: {NAME: {given, where}}            (written by tsugiki into a run dir's config.yaml: the
                                                sources as the user wrote them; outputs name them so)
    tiny_models:                                build tiny factory siblings on demand, offline, into
      {arch: llama, n: 2, kind: finetuned,      RUN_DIR/models; adds sources base, variant_0, ...
       seed: 0, steps: 20, hidden_size: 32, num_layers: 4}
    space:
      kind: ps | dfs | ps_dfs | box
      # ps (tsugiki.evolution.ps): method [dare_ties], base_model, models: [NAME...], layer_groups [1],
      #   params: {weight: [0, 1], density: [0.1, 1]} (each [low, high] or {bounds, init}; any real-valued
      #   parameter of the method: per model, or once for a method-level one such as nearswap's t),
      #   fixed: {method-level parameters not searched}, transform [sigmoid], merge_seed [0], dtype
      # dfs (tsugiki.evolution.dfs): models: [NAME...], repeats [3], scale_bounds [[0.5, 1.5]],
      #   scale_diagonal [true], fixed_ends: {model, first, last}, init_model, init_indicator [1.0],
      #   transform [sigmoid]
      # ps_dfs: dfs keys plus ps_recipe: a recipe file or mapping (model refs may be source NAMEs);
      #   it is merged once into RUN_DIR/ps_model, available to models: as "ps"
      # box: params: {NAME: [low, high] or {bounds, init}}, transform [sigmoid]
      # sdxl_blocks (tsugiki.evolution.sdxl): method [task_arithmetic], base_model, models, units
      #   [blocks] | groups, blocks: [BLOCK or BLOCK/group, ...] (default all; others share a "rest"
      #   value), params [{weight: [0, 1]}], fixed, transform, merge_seed
    fitness: {function: NAME | module:function | file.py:function, args: {...}, data: DATA}
    tiny_sdxl: {n: 2, seed: 0}                 tiny SDXL pipelines base, variant_0, ... (same text
                                                encoders and VAE, different UNets) in RUN_DIR/models
    tiny_vlm: {kind: llava, n: 2, seed: 0,      build a tiny graft set on demand into RUN_DIR/models
               lm_delta: 0.02}                  (tsugiki.factory.vlm.build_graft_set): sources llava
                                                (the VLM), base, variant_0, ... (mistral LLMs)
    validation: {data: DATA, function: [fitness's], args: [fitness's]}      optional, never searched on
    test: {data: DATA}                          optional: the evaluation set; fitness (and validation)
                                                items sharing an id or text with it are an error
    search: {seed: 0, population: [CMA-ES default], sigma: 0.5, generations: 10, max_evaluations,
             timeout (s per candidate), workers: 1, backend: local | ray, threads: 1 (torch threads per
             evaluation, the same on every backend), device: cpu (where models live and merge: cuda, ...),
             cma_options: {}}

DATA is described in :mod:`tsugiki.evolution.data`. ``workers``, ``backend``, ``generations`` and
``max_evaluations`` may change when a run is resumed; any other change makes the config incompatible
with the run dir (see :meth:`EvolveConfig.fingerprint`, kept in the run dir's ``run.json``). A resume
rebuilds the CMA-ES state by replaying the run's logs under this config (no pickle; see
:mod:`tsugiki.evolution.rundir`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from tsugiki.errors import EvolutionError, RecipeError
from tsugiki.merging.recipe_yaml import dotted_path, parent_path, parse_yaml

KINDS = ("ps", "dfs", "ps_dfs", "box", "sdxl_blocks")
TOP = ("name", "sources", "named_as", "tiny_models", "tiny_vlm", "tiny_sdxl", "space", "fitness", "validation", "test", "search")
SPACE_KEYS = {
    "ps": ("kind", "method", "base_model", "models", "layer_groups", "params", "fixed", "transform", "merge_seed", "dtype"),
    "dfs": ("kind", "models", "repeats", "scale_bounds", "scale_diagonal", "fixed_ends", "init_model", "init_indicator", "transform"),
    "box": ("kind", "params", "transform"),
    "sdxl_blocks": ("kind", "method", "base_model", "models", "units", "blocks", "params", "fixed", "transform", "merge_seed"),
}
SPACE_KEYS["ps_dfs"] = SPACE_KEYS["dfs"] + ("ps_recipe",)
TINY_KEYS = ("arch", "n", "kind", "seed", "steps", "hidden_size", "num_layers")
TINY_VLM_KEYS = ("kind", "n", "seed", "hidden_size", "num_layers", "lm_delta")
FITNESS_KEYS = ("function", "args", "data")
DATA_KEYS = ("pairs", "file", "mgsm", "source", "limit", "generator", "split", "n", "seed")
SEARCH_DEFAULTS: dict[str, Any] = {"seed": 0, "population": None, "sigma": 0.5, "generations": 10, "max_evaluations": None,
                                   "timeout": None, "workers": 1, "backend": "local", "threads": 1, "device": "cpu",
                                   "cma_options": {}}
RESUMABLE_CHANGES = ("workers", "backend", "generations", "max_evaluations")


@dataclass(frozen=True)
class EvolveConfig:
    """A validated config as plain data (``data``; paths absolute) plus where each key was written."""

    data: Mapping[str, Any]
    source_name: str = "<config>"
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

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
        p = path
        while p and p not in self.lines:
            p = parent_path(p)
        line = f":{self.lines[p]}" if p in self.lines else ""
        return f"{self.source_name}{line}: {path + ': ' if path else ''}"

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
    return ConfigChecker(source_name, lines or {}, base_dir or Path.cwd()).config(data)


class ConfigChecker:
    def __init__(self, name: str, lines: Mapping[str, int], base: Path):
        self.name, self.lines, self.base = name, lines, base

    def err(self, path: Sequence, msg: str) -> EvolutionError:
        p = dotted_path(path)
        q = p
        while q and q not in self.lines:
            q = parent_path(q)
        line = f":{self.lines[q]}" if q in self.lines else ""
        return EvolutionError(f"{self.name}{line}: {p + ': ' if p else ''}{msg}")

    def mapping(self, v: Any, path: tuple, allowed: Sequence[str] | None = None) -> dict:
        if not isinstance(v, Mapping):
            raise self.err(path, f"expected a mapping, got {type(v).__name__}")
        for k in v:
            if allowed is not None and k not in allowed:
                close = difflib.get_close_matches(str(k), list(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.err(path + (k,), f"unknown key {k!r}{hint} (allowed: {', '.join(allowed)})")
        return dict(v)

    def number(self, v: Any, path: tuple, *, integer: bool = False, minimum: float | None = None) -> Any:
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok:
            raise self.err(path, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
        if minimum is not None and v < minimum:
            raise self.err(path, f"must be >= {minimum}, got {v!r}")
        return v if integer else float(v)

    def names(self, v: Any, path: tuple) -> list[str]:
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise self.err(path, "expected a non-empty list of model names")
        return list(v)

    def path(self, v: Any, path: tuple) -> str:
        if not isinstance(v, str) or not v:
            raise self.err(path, "expected a path")
        p = Path(v).expanduser()
        # a hub id (org/name) that is not a local path stays as written
        if not p.is_absolute() and not (self.base / p).exists() and v.count("/") == 1 and not v.startswith("."):
            return v
        return str(p if p.is_absolute() else (self.base / p).resolve())

    def bounds(self, v: Any, path: tuple) -> dict:
        if isinstance(v, list):
            v = {"bounds": v}
        d = self.mapping(v, path, ("bounds", "init", "transform"))
        b = d.get("bounds")
        if not isinstance(b, list) or len(b) != 2:
            raise self.err(path + ("bounds",), "expected [low, high]")
        lo, hi = (self.number(x, path + ("bounds", i)) for i, x in enumerate(b))
        if not lo < hi:
            raise self.err(path + ("bounds",), f"low {lo} must be below high {hi}")
        out: dict[str, Any] = {"bounds": [lo, hi]}
        if d.get("init") is not None:
            init = self.number(d["init"], path + ("init",))
            if not lo <= init <= hi:
                raise self.err(path + ("init",), f"{init} is outside [{lo}, {hi}]")
            out["init"] = init
        if "transform" in d:
            out["transform"] = self.transform(d["transform"], path + ("transform",))
        return out

    def transform(self, v: Any, path: tuple) -> str:
        if v not in ("sigmoid", "clip"):
            raise self.err(path, f"expected 'sigmoid' or 'clip', got {v!r}")
        return v

    # ---- sections -------------------------------------------------------------------------------
    def config(self, data: Any) -> EvolveConfig:
        d = self.mapping(data, (), TOP)
        for key in ("space", "fitness"):
            if key not in d:
                raise self.err((), f"missing required key {key!r}")
        out: dict[str, Any] = {"name": d.get("name") or Path(self.name).stem}
        sources = self.mapping(d.get("sources") or {}, ("sources",))
        out["sources"] = {str(k): self.path(v, ("sources", k)) for k, v in sources.items()}
        # how the user wrote each source (outputs name them so: tsugiki.merging.provenance); a run
        # dir's config.yaml carries this over from the config the run was started with
        given = self.mapping(d.get("named_as") or {}, ("named_as",))
        out["named_as"] = {str(k): {"given": str(v), "where": f"sources.{k} in {Path(self.name).name}"}
                           for k, v in sources.items()}
        for k, v in given.items():
            if k in out["named_as"]:
                v = self.mapping(v, ("named_as", k), ("given", "where"))
                out["named_as"][k] = {"given": str(v.get("given")), "where": str(v.get("where"))}
        if d.get("tiny_models") is not None:
            t = self.mapping(d["tiny_models"], ("tiny_models",), TINY_KEYS)
            for k, allowed in (("arch", ("llama", "mistral", "qwen2")), ("kind", ("finetuned", "perturbed"))):
                if k in t and t[k] not in allowed:
                    raise self.err(("tiny_models", k), f"expected one of {', '.join(allowed)}, got {t[k]!r}")
            for k in ("n", "seed", "steps", "hidden_size", "num_layers"):
                if k in t:
                    t[k] = self.number(t[k], ("tiny_models", k), integer=True, minimum=0)
            out["tiny_models"] = t
        out["space"] = self.space(d["space"])
        out["fitness"] = self.fitness(d["fitness"], ("fitness",), required=True)
        if d.get("validation") is not None:
            out["validation"] = self.fitness(d["validation"], ("validation",), required=False)
        if d.get("test") is not None:
            t = self.mapping(d["test"], ("test",), ("data",))
            if t.get("data") is None:
                raise self.err(("test",), "missing required key 'data'")
            out["test"] = {"data": self.data(t["data"], ("test", "data"))}
        if d.get("tiny_sdxl") is not None:
            t = self.mapping(d["tiny_sdxl"], ("tiny_sdxl",), ("n", "seed"))
            for k in ("n", "seed"):
                if k in t:
                    t[k] = self.number(t[k], ("tiny_sdxl", k), integer=True, minimum=1 if k == "n" else 0)
            if d.get("tiny_models") is not None or d.get("tiny_vlm") is not None:
                raise self.err(("tiny_sdxl",), "use only one of tiny_models, tiny_vlm, tiny_sdxl")
            out["tiny_sdxl"] = t
        if d.get("tiny_vlm") is not None:
            t = self.mapping(d["tiny_vlm"], ("tiny_vlm",), TINY_VLM_KEYS)
            if t.get("kind", "llava") not in ("llava", "llava_next"):
                raise self.err(("tiny_vlm", "kind"), f"expected llava or llava_next, got {t['kind']!r}")
            for k in ("n", "seed", "hidden_size", "num_layers"):
                if k in t:
                    t[k] = self.number(t[k], ("tiny_vlm", k), integer=True, minimum=1 if k == "n" else 0)
            if "lm_delta" in t:
                t["lm_delta"] = self.number(t["lm_delta"], ("tiny_vlm", "lm_delta"), minimum=0)
            if d.get("tiny_models") is not None:
                raise self.err(("tiny_vlm",), "use either tiny_models or tiny_vlm, not both")
            out["tiny_vlm"] = t
        out["search"] = self.search(d.get("search") or {})
        return EvolveConfig(out, self.name, self.lines)

    def space(self, v: Any) -> dict:
        kind = self.mapping(v, ("space",)).get("kind")
        if kind not in KINDS:
            raise self.err(("space", "kind"), f"expected one of {', '.join(KINDS)}, got {kind!r}")
        d = self.mapping(v, ("space",), SPACE_KEYS[kind])
        at = lambda *k: ("space", *k)  # noqa: E731
        if "transform" in d:
            d["transform"] = self.transform(d["transform"], at("transform"))
        if kind == "box" or "params" in d:
            params = self.mapping(d.get("params") or {}, at("params"))
            if kind == "box" and not params:
                raise self.err(at("params"), "a box space needs at least one parameter")
            d["params"] = {str(k): self.bounds(b, at("params", k)) for k, b in params.items()}
        if "models" in d:
            d["models"] = self.names(d["models"], at("models"))
        elif kind != "box":
            raise self.err(("space",), "missing required key 'models'")
        for key in ("layer_groups", "repeats", "merge_seed"):
            if key in d:
                d[key] = self.number(d[key], at(key), integer=True, minimum=0 if key == "merge_seed" else 1)
        if "scale_bounds" in d:
            d["scale_bounds"] = self.bounds(d["scale_bounds"], at("scale_bounds"))["bounds"]
        if "init_indicator" in d:
            d["init_indicator"] = self.number(d["init_indicator"], at("init_indicator"), minimum=0)
        if "fixed_ends" in d:
            f = self.mapping(d["fixed_ends"], at("fixed_ends"), ("model", "first", "last"))
            if not isinstance(f.get("model"), str):
                raise self.err(at("fixed_ends", "model"), "expected a model name")
            for k in ("first", "last"):
                f[k] = self.number(f.get(k, 0), at("fixed_ends", k), integer=True, minimum=0)
            d["fixed_ends"] = f
        if "fixed" in d:
            d["fixed"] = self.mapping(d["fixed"], at("fixed"))
        if "units" in d and d["units"] not in ("blocks", "groups"):
            raise self.err(at("units"), f"expected 'blocks' or 'groups', got {d['units']!r}")
        if "blocks" in d and not (isinstance(d["blocks"], list) and d["blocks"] and all(isinstance(b, str) for b in d["blocks"])):
            raise self.err(at("blocks"), "expected a non-empty list of block names (IN04, M00, OUT01/attention, ...)")
        if kind == "ps_dfs":
            if "ps_recipe" not in d:
                raise self.err(("space",), "missing required key 'ps_recipe' (a recipe file or mapping)")
            r = d["ps_recipe"]
            d["ps_recipe"] = self.path(r, at("ps_recipe")) if isinstance(r, str) else self.mapping(r, at("ps_recipe"))
        return d

    def fitness(self, v: Any, path: tuple, *, required: bool) -> dict:
        d = self.mapping(v, path, FITNESS_KEYS)
        if required and not isinstance(d.get("function"), str):
            raise self.err(path + ("function",), "expected a fitness function name (registered, module:function or file.py:function)")
        if "function" in d:
            fn = d["function"]
            if not isinstance(fn, str):
                raise self.err(path + ("function",), "expected a string")
            target, sep, attr = fn.rpartition(":")
            if sep and target.endswith(".py"):
                d["function"] = f"{self.path(target, path + ('function',))}:{attr}"
        d["args"] = self.mapping(d.get("args") or {}, path + ("args",))
        if d.get("data") is not None:
            d["data"] = self.data(d["data"], path + ("data",))
        elif not required:
            raise self.err(path, "missing required key 'data'")
        return d

    def data(self, v: Any, path: tuple) -> dict:
        d = self.mapping(v, path, DATA_KEYS)
        kinds = [k for k in ("pairs", "file", "generator", "mgsm") if k in d]
        if len(kinds) != 1:
            raise self.err(path, "expected exactly one of 'pairs', 'file', 'generator', 'mgsm'")
        if "mgsm" in d and not isinstance(d["mgsm"], str):
            raise self.err(path + ("mgsm",), "expected a language code (ja, en)")
        if "source" in d:
            if "mgsm" not in d:
                raise self.err(path + ("source",), "'source' goes with 'mgsm'")
            d["source"] = self.path(d["source"], path + ("source",))
        if "pairs" in d:
            if not isinstance(d["pairs"], list):
                raise self.err(path + ("pairs",), "expected a list of {prompt, answer}")
            for i, p in enumerate(d["pairs"]):
                self.mapping(p, path + ("pairs", i), ("prompt", "question", "answer", "id", "image"))
                if ("prompt" not in p and "question" not in p) or "answer" not in p:
                    raise self.err(path + ("pairs", i), "needs 'prompt' (or 'question') and 'answer'")
                if isinstance(p.get("image"), str):
                    p["image"] = self.path(p["image"], path + ("pairs", i, "image"))
        if "file" in d:
            d["file"] = self.path(d["file"], path + ("file",))
        if "generator" in d:
            g = d["generator"]
            if not (isinstance(g, str) or (isinstance(g, list) and g and all(isinstance(x, str) for x in g))):
                raise self.err(path + ("generator",), "expected a generator name or a list of them")
        for k in ("n", "limit", "seed"):
            if k in d:
                d[k] = self.number(d[k], path + (k,), integer=True, minimum=0)
        return d

    def search(self, v: Any) -> dict:
        d = self.mapping(v, ("search",), tuple(SEARCH_DEFAULTS))
        out = dict(SEARCH_DEFAULTS)
        if d.get("max_evaluations") is not None and "generations" not in d:
            out["generations"] = None  # the evaluation budget alone
        out.update(d)
        at = lambda k: ("search", k)  # noqa: E731
        out["seed"] = self.number(out["seed"], at("seed"), integer=True, minimum=0)
        for k in ("population", "generations", "max_evaluations"):
            if out[k] is not None:
                out[k] = self.number(out[k], at(k), integer=True, minimum=2 if k == "population" else 1)
        out["workers"] = self.number(out["workers"], at("workers"), integer=True, minimum=1)
        out["threads"] = self.number(out["threads"], at("threads"), integer=True, minimum=1)
        out["sigma"] = self.number(out["sigma"], at("sigma"))
        if out["sigma"] <= 0:
            raise self.err(at("sigma"), "must be > 0")
        if out["timeout"] is not None:
            out["timeout"] = self.number(out["timeout"], at("timeout"))
        if not isinstance(out["device"], str):
            raise self.err(at("device"), "expected a device name (cpu, cuda, cuda:1, ...)")
        if out["backend"] not in ("local", "ray"):
            raise self.err(at("backend"), f"expected 'local' or 'ray', got {out['backend']!r}")
        out["cma_options"] = self.mapping(out["cma_options"] or {}, at("cma_options"))
        if out["generations"] is None and out["max_evaluations"] is None:
            raise self.err(("search",), "set generations or max_evaluations")
        return out
