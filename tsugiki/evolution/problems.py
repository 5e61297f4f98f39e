"""Problems: a search space plus how one candidate is scored, documented and exported.

A problem is built from a validated config and the run dir's source paths, cheaply (configs and
metadata only); :meth:`Problem.setup` loads models the first time a candidate is evaluated, once per
process, so worker processes pay for it once. Kinds (Akiba et al. 2024, arXiv:2403.13187):

- ``box``: named bounded numbers scored by a function of the parameters alone (tests the optimiser).
- ``ps``: a merge recipe per candidate (:mod:`tsugiki.evolution.ps`), merged in place into one loaded
  model with :class:`~tsugiki.merging.inmemory.InMemoryMerger`. When a merged model is a LLaVA-family
  VLM, the language model inside it is merged in place with
  :class:`~tsugiki.vlm.inmemory.VlmLanguageModelMerger` (vision tower and projector never touched;
  the candidate context carries the processor) and the best exports as a grafted VLM dir.
- ``sdxl_blocks``: per-block (or per block group) merge parameters of SDXL UNets
  (:mod:`tsugiki.evolution.sdxl`), merged in place into one loaded UNet; exports a pipeline folder.
- ``dfs`` / ``ps_dfs``: an inference path per candidate (:mod:`tsugiki.evolution.dfs`), assembled
  from the loaded sources without copying weights (:mod:`tsugiki.evolution.assemble`); ``ps_dfs``
  includes ``ps``, the PS recipe merged once into ``RUN_DIR/ps_model``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.evolution.data import Pair, check_disjoint, load_pairs
from tsugiki.evolution.dfs import DFSSpace, exact_export, fold_for
from tsugiki.evolution.fitness import EvalContext, FitnessSpec, as_fitness, names_code, resolve_fitness
from tsugiki.evolution.ps import DEFAULT_BOUNDS, PSSpace
from tsugiki.evolution.sdxl import SDXLBlockSpace, load_unet
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.merging.provenance import Named
from tsugiki.threads import torch_threads

PS_MODEL = "ps"


# ------------------------------------------------------------------------------ sources
def source_paths(config: EvolveConfig, run_dir: Path) -> dict[str, str]:
    """Short name -> model path: ``sources``, tiny factory models and the ps_dfs merged model."""
    paths = dict(config.data["sources"])
    tiny = config.data.get("tiny_models")
    if tiny is not None:
        root = Path(run_dir).resolve() / "models"
        paths.setdefault("base", str(root / "base"))
        for i in range(tiny.get("n", 2)):
            paths.setdefault(f"variant_{i}", str(root / f"variant_{i}"))
    sd = config.data.get("tiny_sdxl")
    if sd is not None:
        root = Path(run_dir).resolve() / "models"
        paths.setdefault("base", str(root / "base"))
        for i in range(sd.get("n", 2)):
            paths.setdefault(f"variant_{i}", str(root / f"variant_{i}"))
    vlm = config.data.get("tiny_vlm")
    if vlm is not None:
        root = Path(run_dir).resolve() / "models"
        paths.setdefault("llava", str(root / vlm.get("kind", "llava")))
        paths.setdefault("base", str(root / "llms" / "base"))
        for i in range(vlm.get("n", 2)):
            paths.setdefault(f"variant_{i}", str(root / "llms" / f"variant_{i}"))
    if config.space["kind"] == "ps_dfs":
        paths.setdefault(PS_MODEL, str(Path(run_dir).resolve() / "ps_model"))
    return paths


def source_names(config: EvolveConfig, run_dir: Path) -> dict[str, Named]:
    """Each source's path (as the recipes a run builds name it) -> how the user named it, for the
    outputs' recipes and cards (:mod:`tsugiki.merging.provenance`): the config's words for its
    ``sources``; run-dir-relative names for what the run built itself."""
    paths = source_paths(config, Path(run_dir))
    named_as = config.data.get("named_as") or {}
    out = {}
    for name, path in paths.items():
        if name in config.data["sources"]:
            n = named_as.get(name) or {"given": path, "where": f"sources.{name}"}
            out[path] = Named(n["given"], n["where"])
        elif name == PS_MODEL and config.space["kind"] == "ps_dfs":
            out[path] = Named("ps_model", "the PS model this run merged from space.ps_recipe (its recipe below)")
        else:
            out[path] = Named(f"models/{name}", "built by the run in its run dir (tiny models)")
    return out


def prepare_sources(config: EvolveConfig, run_dir: Path) -> dict[str, str]:
    """Build what the sources need and is missing (tiny models, the ps_dfs merge); main process only."""
    run_dir = Path(run_dir)
    tiny = config.data.get("tiny_models")
    if tiny is not None and not (run_dir / "models" / ".complete").exists():
        from tsugiki.factory.lm import TinyLMSpec, build_siblings

        shutil.rmtree(run_dir / "models", ignore_errors=True)
        shape = {k: tiny[k] for k in ("hidden_size", "num_layers") if k in tiny}
        spec = TinyLMSpec(arch=tiny.get("arch", "llama"), seed=tiny.get("seed", 0), **shape)
        build_siblings(run_dir / "models", n=tiny.get("n", 2), spec=spec, kind=tiny.get("kind", "finetuned"),
                       steps=tiny.get("steps", 20))
        (run_dir / "models" / ".complete").write_text("")
    sd = config.data.get("tiny_sdxl")
    if sd is not None and not (run_dir / "models" / ".complete").exists():
        from tsugiki.factory.sdxl import build_tiny_sdxl

        shutil.rmtree(run_dir / "models", ignore_errors=True)
        seed = sd.get("seed", 0)  # one seed for text encoders and VAE; UNets differ
        build_tiny_sdxl(run_dir / "models" / "base", seed=seed, unet_seed=seed)
        for i in range(sd.get("n", 2)):
            build_tiny_sdxl(run_dir / "models" / f"variant_{i}", seed=seed, unet_seed=seed + 1 + i)
        (run_dir / "models" / ".complete").write_text("")
    vlm = config.data.get("tiny_vlm")
    if vlm is not None and not (run_dir / "models" / ".complete").exists():
        from tsugiki.factory.lm import TinyLMSpec
        from tsugiki.factory.vlm import build_graft_set

        shutil.rmtree(run_dir / "models", ignore_errors=True)
        shape = {k: vlm[k] for k in ("hidden_size", "num_layers") if k in vlm}
        build_graft_set(run_dir / "models", TinyLMSpec(arch="mistral", seed=vlm.get("seed", 0), **shape), n=vlm.get("n", 2),
                        lm_delta=vlm.get("lm_delta", 0.02))
        (run_dir / "models" / ".complete").write_text("")
    paths = source_paths(config, run_dir)
    if config.space["kind"] == "ps_dfs" and not Path(paths[PS_MODEL]).exists():
        from tsugiki.merging.execute import MergeOptions
        from tsugiki.merging.recipe import Recipe, load_recipe
        from tsugiki.merging.to_disk import merge_to_disk

        r = config.space["ps_recipe"]
        base_dir = Path(r).parent if isinstance(r, str) else None
        data = load_recipe(r).to_dict() if isinstance(r, str) else dict(r)
        recipe = Recipe.from_dict(recipe_with_paths(data, paths), source_name=config.where("space.ps_recipe").rstrip(": "))
        with search_threads(config):  # the PS candidates were evaluated with these threads
            merge_to_disk(recipe, paths[PS_MODEL], MergeOptions(progress=False), base_dir=base_dir,
                          named=source_names(config, run_dir))
    return paths


def recipe_with_paths(recipe: dict, paths: Mapping[str, str]) -> dict:
    """A recipe's model refs that are source names replaced by their paths."""
    sub = lambda ref: paths.get(ref, ref) if isinstance(ref, str) else ref  # noqa: E731
    out = json.loads(json.dumps(recipe))
    if "base_model" in out:
        out["base_model"] = sub(out["base_model"])
    for m in out.get("models") or []:
        m["model"] = sub(m.get("model"))
    for s in out.get("slices") or []:
        if "base_model" in s:
            s["base_model"] = sub(s["base_model"])
        for src in s.get("sources") or []:
            src["model"] = sub(src.get("model"))
    return out


def _model_config(path: str) -> tuple[dict, list[str]]:
    from tsugiki.merging.checkpoint import Checkpoint, resolve_model_ref

    try:
        with Checkpoint(resolve_model_ref(path)) as ckpt:
            return ckpt.config() or {}, ckpt.names()
    except TsugikiError as e:
        raise EvolutionError(f"source {path}: {e}") from None


def load_causal_lm(path: str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    from tsugiki.tokenizer_cache import load_tokenizer

    with hf_progress_bars_off():
        model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").to(device)
    return model.eval(), load_tokenizer(path)


def load_vlm(path: str, device: str = "cpu"):
    """A LLaVA-family model (float32, eval mode) and its processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    with hf_progress_bars_off():
        model = AutoModelForImageTextToText.from_pretrained(path, dtype="float32").to(device)
    return model.eval(), AutoProcessor.from_pretrained(path)


# ------------------------------------------------------------------------------ search spaces
# Built from the config plus each source's config.json data (and, when a checkpoint was opened, its
# tensor names), so that a run (problems below) and a plan (plan_space, no weights) share one code path.
def _ps_members(space: Mapping[str, Any]) -> list[str]:
    return [*([space["base_model"]] if space.get("base_model") else []), *space["models"]]


def _local_dir(ref: str) -> Path | None:
    """A source's local folder: the path itself, or a hub id's snapshot (fetched like any merge source)."""
    from tsugiki.merging.checkpoint import HUB_ID, resolve_model_ref

    p = Path(ref)
    if p.exists():
        return p if p.is_dir() else None
    if not HUB_ID.match(ref):
        return None  # the checkpoint loader reports the missing path
    try:
        return resolve_model_ref(ref)
    except TsugikiError as e:
        raise EvolutionError(f"source {ref}: {e}") from None


def _is_vlm_path(ref: str) -> bool:
    from tsugiki.vlm.merge import is_vlm_source

    d = _local_dir(ref)
    return d is not None and is_vlm_source(d)


def _read_json_config(ref: str) -> dict:
    d = _local_dir(ref)
    path = d / "config.json" if d is not None else None
    if path is None or not path.exists():
        raise EvolutionError(f"source {ref}: no config.json")
    return json.loads(path.read_text())


def _text_num_layers(cfg: Mapping[str, Any], label: str) -> int:
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


def _architecture(cfg: Mapping[str, Any], names: list[str] | None, label: str):
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


def _ps_layout(cfg: Mapping[str, Any], names: list[str] | None, label: str, *, vlm_only: bool) -> tuple[int, str]:
    """(number of layers, layer prefix template) that PS layer groups refer to."""
    if vlm_only:
        return _text_num_layers(cfg, label), "model.layers.${layer_index}."
    spec = _architecture(cfg, names, label)
    try:
        return spec.num_layers(dict(cfg), names), spec.layer_prefix
    except TsugikiError as e:
        raise EvolutionError(f"source {label}: {e}") from None


def _ps_space(config: EvolveConfig, paths: Mapping[str, str], num_layers: int, prefix: str) -> PSSpace:
    s = config.space
    params = s.get("params") or {k: {"bounds": list(v)} for k, v in DEFAULT_BOUNDS.items()}
    return PSSpace(
        method=s.get("method", "dare_ties"), base_model=s.get("base_model"), models=tuple(s["models"]),
        paths=paths, num_layers=num_layers, layer_prefix=prefix,
        layer_groups=s.get("layer_groups", 1), bounds={k: tuple(v["bounds"]) for k, v in params.items()},
        init={k: v["init"] for k, v in params.items() if "init" in v}, transform=s.get("transform", "sigmoid"),
        fixed=s.get("fixed", {}), merge_seed=s.get("merge_seed", 0), dtype=s.get("dtype"))


def _dfs_space(config: EvolveConfig, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]],
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


def _box_space(config: EvolveConfig) -> SearchSpace:
    t = config.space.get("transform", "sigmoid")
    return SearchSpace.of(Param(n, *p["bounds"], p.get("init"), p.get("transform", t))
                          for n, p in config.space["params"].items())


def _sdxl_space(config: EvolveConfig, paths: Mapping[str, str]) -> SDXLBlockSpace:
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


# ------------------------------------------------------------------------------ problems
def search_threads(config: EvolveConfig):
    """Run a block with the search's torch thread count (``search.threads``), then restore it."""
    return torch_threads(int(config.search.get("threads", 1)))


def parameter_matrices(space, values: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per parameter (weight, density, …) of a PS-like space: its model × layer-group (or UNet block)
    matrix and bounds, as the PS heatmap plots them."""
    mats = {}
    for pname, bounds in space.bounds.items():
        rows, cols, vals = space.matrix(values, pname)
        mats[pname] = {"rows": rows, "cols": cols, "values": vals, "bounds": list(bounds)}
    return mats


def _check_args(spec: FitnessSpec, args: Mapping[str, Any], where: str) -> None:
    """Refuse fitness arguments the function does not take now, not when the first candidate runs."""
    import inspect

    try:
        inspect.signature(spec.fn).bind(None, None, **args)
    except TypeError as e:
        raise EvolutionError(f"{where}{e}") from None


class Problem:
    kind = ""
    space: SearchSpace

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        self.config = config
        self.paths = dict(paths)
        self.named: dict[str, Named] = {}  # source path -> how the user named it (make_problem sets it)
        fit = config.data["fitness"]
        val = config.data.get("validation")
        self.fitness: FitnessSpec = self._resolve("fitness", fit["function"])
        self.fitness_args = dict(fit["args"])
        _check_args(self.fitness, self.fitness_args, config.where("fitness.args"))
        self.data: dict[str, list[Pair] | None] = {"fitness": load_pairs(fit["data"], config.where("fitness.data")) if fit.get("data") else None}
        if val is not None:
            self.val_fitness = self._resolve("validation", val["function"]) if val.get("function") else self.fitness
            self.val_args = dict(val["args"]) if val.get("function") or val["args"] else self.fitness_args
            _check_args(self.val_fitness, self.val_args, config.where("validation.args"))
            self.data["validation"] = load_pairs(val["data"], config.where("validation.data"))
            if self.data["fitness"] is not None:
                check_disjoint(self.data["fitness"], self.data["validation"], "validation", config.where("validation.data"))
        if config.data.get("test") is not None:  # the evaluation set: never scored here, only kept apart
            test = load_pairs(config.data["test"]["data"], config.where("test.data"))
            for split in ("fitness", "validation"):
                if self.data.get(split) is not None:
                    check_disjoint(test, self.data[split], split, config.where(f"{split}.data"), against="test")
        self._ready = False

    def _check_sources(self, *keys: str) -> None:
        """Every model named under `space.<key>` (a name or a list of names) is a known source."""
        for key in keys:
            value = self.config.space.get(key)
            for name in value if isinstance(value, list) else [value] if value else []:
                if name not in self.paths:
                    raise EvolutionError(
                        f"{self.config.where('space.' + key)}unknown source {name!r} (known: {', '.join(self.paths)})")

    def _resolve(self, section: str, name: str) -> FitnessSpec:
        try:
            return resolve_fitness(name)
        except TsugikiError as e:
            raise EvolutionError(f"{self.config.where(section + '.function')}{e}") from None

    @property
    def has_validation(self) -> bool:
        return "validation" in self.data

    def setup(self) -> None:
        """Load what evaluation needs (models); called once per process before the first candidate."""

    def check(self) -> None:
        """Fail fast, before any candidate runs, on sources that cannot work together (metadata only)."""

    def evaluate(self, values: Mapping[str, float], split: str = "fitness", seed: int = 0) -> float:
        if not self._ready:
            from tsugiki.evolution.backends import SetupError

            try:
                self.setup()
            except Exception as e:  # noqa: BLE001 - no candidate can succeed: stop the run, say why
                raise SetupError(f"cannot set up the {self.kind} problem: {type(e).__name__}: {e}") from e
            self._ready = True
        spec, args = (self.fitness, self.fitness_args) if split == "fitness" else (self.val_fitness, self.val_args)
        ctx = EvalContext(params=dict(values), split=split, seed=seed)
        self.prepare_candidate(values, ctx)
        return as_fitness(spec.fn(ctx, self.data[split], **args))

    def prepare_candidate(self, values: Mapping[str, float], ctx: EvalContext) -> None:
        """Put the candidate (model, tokenizer) into ``ctx``."""

    def document(self, values: Mapping[str, float], header: str = "") -> str:
        """The best candidate as YAML text (``best.yaml``)."""
        return header + yaml.safe_dump({"params": dict(values)}, sort_keys=False)

    def details(self, values: Mapping[str, float]) -> dict[str, Any]:
        return {"kind": self.kind}

    def export(self, values: Mapping[str, float], out: str | Path, *, force: bool = False) -> Path:
        raise EvolutionError(f"a {self.kind} space has no model to export")

    def export_as_evaluated(self, values: Mapping[str, float], out: str | Path, *, force: bool = False) -> Path:
        """:meth:`export` with the torch thread count candidates were evaluated with: some of the kernels'
        float32 reductions sum in an order that depends on torch's thread count (measured: DARE-TIES
        exports differed by ~2e-6), so this makes the exported weights the evaluated ones bit for bit."""
        with search_threads(self.config):
            return self.export(values, out, force=force)


class BoxProblem(Problem):
    kind = "box"

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        super().__init__(config, paths)
        self.space = _box_space(config)


class PSProblem(Problem):
    kind = "ps"

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        super().__init__(config, paths)
        s = config.space
        self._check_sources("models", "base_model")
        members = _ps_members(s)
        vlms = [m for m in members if _is_vlm_path(self.paths[m])]
        # VLM mode: the language model inside the first VLM (the base if it is one) is merged in place;
        # its vision tower and projector stay as loaded (tsugiki.vlm.inmemory)
        self.vlm = vlms[0] if vlms else None
        llms = [m for m in members if m not in vlms]
        if self.vlm is not None and not llms:
            layout = _ps_layout(_read_json_config(self.paths[self.vlm]), None, self.vlm, vlm_only=True)
        else:
            cfg, names = _model_config(self.paths[llms[0]])
            layout = _ps_layout(cfg, names, llms[0], vlm_only=False)
        self.ps = _ps_space(config, self.paths, *layout)
        self.space = self.ps.space()
        self.ps.recipe(self.space.decode(self.space.x0()))  # bad method/parameter names fail now, not per candidate

    def check(self) -> None:
        from tsugiki.merging.checkpoint import open_sources
        from tsugiki.merging.plan import plan_merge

        if self.vlm is not None:
            return  # VLM sources are checked when the merger is built (setup: shapes, vocabulary)
        recipe = self.ps.recipe(self.space.decode(self.space.x0()))
        sources = open_sources(recipe.model_refs())
        try:
            plan_merge(recipe, sources)  # MergeError names the tensor, model and shape at fault
        finally:
            for src in sources.values():
                src.close()

    def setup(self) -> None:
        from tsugiki.merging.inmemory import InMemoryMerger

        refs = {self.paths[m] for m in (*self.ps.models, *([self.ps.base_model] if self.ps.base_model else []))}
        self.processor = None
        if self.vlm is not None:
            from tsugiki.vlm.inmemory import VlmLanguageModelMerger

            self.model, self.processor = load_vlm(self.paths[self.vlm], self.config.search["device"])
            self.tokenizer = self.processor.tokenizer
            self.merger = VlmLanguageModelMerger(self.model, {r: r for r in sorted(refs)})
            return
        ref = self.ps.base_model or self.ps.models[0]
        self.model, self.tokenizer = load_causal_lm(self.paths[ref], self.config.search["device"])
        self.merger = InMemoryMerger(self.model, {r: r for r in sorted(refs)})

    def prepare_candidate(self, values, ctx) -> None:
        self.merger.apply(self.ps.recipe(values))
        ctx.model, ctx.tokenizer = self.model, self.tokenizer
        if self.processor is not None:
            ctx.extra["processor"] = self.processor

    def document(self, values, header: str = "") -> str:
        return header + self.ps.recipe(values).to_yaml()

    def details(self, values) -> dict[str, Any]:
        return {"kind": "ps", "matrices": parameter_matrices(self.ps, values)}

    def export(self, values, out, *, force: bool = False) -> Path:
        from tsugiki.merging.execute import MergeOptions
        from tsugiki.merging.to_disk import merge_to_disk

        if self.vlm is not None:  # a grafted VLM dir: the vision donor's files with the merged language model
            from tsugiki.vlm.merge import merge_vlm_to_disk

            return merge_vlm_to_disk(self.ps.recipe(values), out, MergeOptions(force=force, progress=False),
                                     named=self.named).out
        return merge_to_disk(self.ps.recipe(values), out, MergeOptions(force=force, progress=False), named=self.named).out


class DFSProblem(Problem):
    kind = "dfs"

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        super().__init__(config, paths)
        self.kind = config.space["kind"]
        self._check_sources("models")
        metas = {name: _model_config(self.paths[name]) for name in config.space["models"]}
        self.dfs = _dfs_space(config, self.paths, {n: c for n, (c, _) in metas.items()}, {n: names for n, (_, names) in metas.items()})
        self.space = self.dfs.space()

    def setup(self) -> None:
        from tsugiki.evolution.assemble import check_compatible

        self.models = {}
        for name in self.dfs.models:
            self.models[name], tok = load_causal_lm(self.paths[name], self.config.search["device"])
            if name == self.dfs.models[0]:
                self.tokenizer = tok
        check_compatible(self.models)

    def prepare_candidate(self, values, ctx) -> None:
        from tsugiki.evolution.assemble import assemble

        ctx.model, ctx.tokenizer = assemble(self.models, self.dfs.path(values)), self.tokenizer

    def document(self, values, header: str = "") -> str:
        path = self.dfs.path(values)
        lines = [f"#   {i:3d}: {m} layer {l}  scale {s:.4f}" for i, ((m, l), s) in enumerate(zip(path.layers, path.scales))]
        exact = "exact" if exact_export(path) else f"equal up to RMSNorm epsilon (scales folded into {self.dfs.fold.describe()})"
        note = f"# DFS inference path ({len(path.layers)} layers); this passthrough recipe is {exact}\n"
        return header + note + "\n".join(lines) + "\n" + self.dfs.recipe(path).to_yaml()

    def details(self, values) -> dict[str, Any]:
        path = self.dfs.path(values)
        return {"kind": self.kind, "models": list(self.dfs.models), "num_layers": dict(self.dfs.num_layers),
                "path": path.to_data(), "scales": self.dfs.scale_matrix(values), "exact_export": exact_export(path)}

    def export(self, values, out, *, force: bool = False) -> Path:
        from tsugiki.merging.execute import MergeOptions
        from tsugiki.merging.to_disk import merge_to_disk

        return merge_to_disk(self.dfs.recipe(self.dfs.path(values)), out, MergeOptions(force=force, progress=False),
                             named=self.named).out


class SDXLBlocksProblem(Problem):
    """PS over SDXL UNet blocks or block groups (:mod:`tsugiki.evolution.sdxl`), merged in place into
    one loaded UNet; the best exports as a diffusers pipeline folder."""

    kind = "sdxl_blocks"

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        super().__init__(config, paths)
        self._check_sources("models", "base_model")
        self.sdxl = _sdxl_space(config, self.paths)
        self.space = self.sdxl.space()
        self.sdxl.recipe(self.space.decode(self.space.x0()))

    def setup(self) -> None:
        from tsugiki.diffusion.sources import UNetSource

        # hub ids become their local snapshots here (the UNet loaders and the fitness take folders)
        self.local = {n: str(_local_dir(p) or p) for n, p in self.paths.items()}
        ref = self.sdxl.base_model or self.sdxl.models[0]
        self.model = load_unet(self.local[ref], self.config.search["device"])
        self.targets = dict(self.model.state_dict(keep_vars=True))
        refs = {self.paths[m] for m in (*self.sdxl.models, *([self.sdxl.base_model] if self.sdxl.base_model else []))}
        local_of = {self.paths[n]: p for n, p in self.local.items()}
        self.sources = {r: UNetSource(Path(local_of[r]), label=r) for r in sorted(refs)}

    @torch.no_grad()
    def prepare_candidate(self, values, ctx) -> None:
        from tsugiki.diffusion.merge import plan_unet_merge
        from tsugiki.merging.execute import iter_merged

        plan = plan_unet_merge(self.sdxl.recipe(values), self.sources)
        for job, tensor in iter_merged(plan, self.sources, device=self.config.search["device"]):
            self.targets[job.out_name].copy_(tensor)
        ctx.model = self.model
        ctx.extra["paths"] = self.local

    def document(self, values, header: str = "") -> str:
        return header + self.sdxl.recipe(values).to_yaml()

    def details(self, values) -> dict[str, Any]:
        return {"kind": "ps", "matrices": parameter_matrices(self.sdxl, values), "xlabel": "UNet " + self.sdxl.units[:-1]}

    def export(self, values, out, *, force: bool = False) -> Path:
        from tsugiki.diffusion.merge import merge_sdxl_to_disk
        from tsugiki.merging.execute import MergeOptions

        return merge_sdxl_to_disk(self.sdxl.recipe(values), out, MergeOptions(force=force, progress=False),
                                  named=self.named).out


PROBLEMS = {"box": BoxProblem, "ps": PSProblem, "dfs": DFSProblem, "ps_dfs": DFSProblem, "sdxl_blocks": SDXLBlocksProblem}


def make_problem(config: EvolveConfig, run_dir: str | Path) -> Problem:
    problem = PROBLEMS[config.space["kind"]](config, source_paths(config, Path(run_dir)))
    problem.named = source_names(config, Path(run_dir))  # how exports name their sources
    return problem


# ------------------------------------------------------------------------------ plan (no weights)
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
        return _ps_members(config.space)
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
        space = _box_space(config)
        parts.append(("box parameters", space.dim))
    elif kind == "ps":
        from tsugiki.vlm.sources import is_multimodal_config

        members = _ps_members(s)
        vlms = [m for m in members if is_multimodal_config(configs[m])]
        llms = [m for m in members if m not in vlms]
        ref = llms[0] if llms else vlms[0]
        num_layers, prefix = _ps_layout(configs[ref], None, ref, vlm_only=not llms)
        ps = _ps_space(config, paths, num_layers, prefix)
        space = ps.space()
        ps.recipe(space.decode(space.x0()))
        groups = ps.groups()
        per = ("1 value" if groups == [""]
               else f"{len(groups)} values ({ps.layer_groups} groups of {num_layers} layers + rest)")
        parts += [(f"{p}: {len(ps.models)} models x {per}", len(ps.models) * len(groups)) for p in ps.bounds]
        if vlms:
            notes.append(f"VLM: the language model inside {vlms[0]} is merged; its vision tower and projector stay fixed")
    elif kind in ("dfs", "ps_dfs"):
        dfs = _dfs_space(config, paths, configs)
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
        sd = _sdxl_space(config, paths)
        space = sd.space()
        sd.recipe(space.decode(space.x0()))
        parts += [(f"{p}: {len(sd.models)} models x {len(sd.columns())} UNet {sd.units}", len(sd.models) * len(sd.columns()))
                  for p in sd.bounds]
    search = config.search
    population = search["population"] or cma_population(space.dim)
    budgets = [b for b in (search["generations"] and search["generations"] * population, search["max_evaluations"]) if b]
    return SpacePlan(kind, space, tuple(parts), population, min(budgets), tuple(notes))


def read_source_config(ref: str) -> dict:
    """A source's config.json alone: a local folder's, or a hub id's (that one small file is fetched, or
    read from the Hugging Face cache when offline); never any weights."""
    from tsugiki.merging.checkpoint import HUB_ID

    p = Path(ref)
    if p.is_dir():
        for candidate in (p / "config.json", p / "unet" / "config.json"):
            if candidate.exists():
                return json.loads(candidate.read_text())
        raise EvolutionError(f"source {ref}: no config.json")
    if p.exists() or not HUB_ID.match(ref):
        raise EvolutionError(f"source {ref}: not a model folder or hub id")
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(ref, "config.json")).read_text())
    except Exception as e:  # offline and not cached, unknown repo, auth: one message
        raise EvolutionError(f"source {ref}: cannot read its config.json ({type(e).__name__})") from None


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
