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

from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.evolution.data import Pair, check_disjoint, load_pairs
from tsugiki.evolution.dfs import exact_export
from tsugiki.evolution.fitness import EvalContext, FitnessSpec, as_fitness, resolve_fitness
from tsugiki.evolution.sdxl import load_unet
from tsugiki.evolution.sources import (
    is_vlm_path,
    load_causal_lm,
    load_vlm,
    local_dir,
    model_config,
    read_json_config,
    search_threads,
    source_names,
    source_paths,
)
from tsugiki.evolution.space import SearchSpace
from tsugiki.evolution.spaces import box_space, dfs_space, ps_layout, ps_members, ps_space, sdxl_space
from tsugiki.merging.provenance import Named


class SetupError(EvolutionError):
    """The problem cannot be set up in an evaluating process; no candidate can succeed."""


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
        self.space = box_space(config)


class PSProblem(Problem):
    kind = "ps"

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        super().__init__(config, paths)
        s = config.space
        self._check_sources("models", "base_model")
        members = ps_members(s)
        vlms = [m for m in members if is_vlm_path(self.paths[m])]
        # VLM mode: the language model inside the first VLM (the base if it is one) is merged in place;
        # its vision tower and projector stay as loaded (tsugiki.vlm.inmemory)
        self.vlm = vlms[0] if vlms else None
        llms = [m for m in members if m not in vlms]
        if self.vlm is not None and not llms:
            layout = ps_layout(read_json_config(self.paths[self.vlm]), None, self.vlm, vlm_only=True)
        else:
            cfg, names = model_config(self.paths[llms[0]])
            layout = ps_layout(cfg, names, llms[0], vlm_only=False)
        self.ps = ps_space(config, self.paths, *layout)
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
        metas = {name: model_config(self.paths[name]) for name in config.space["models"]}
        self.dfs = dfs_space(config, self.paths, {n: c for n, (c, _) in metas.items()}, {n: names for n, (_, names) in metas.items()})
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
        self.sdxl = sdxl_space(config, self.paths)
        self.space = self.sdxl.space()
        self.sdxl.recipe(self.space.decode(self.space.x0()))

    def setup(self) -> None:
        from tsugiki.diffusion.sources import UNetSource

        # hub ids become their local snapshots here (the UNet loaders and the fitness take folders)
        self.local = {n: str(local_dir(p) or p) for n, p in self.paths.items()}
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
