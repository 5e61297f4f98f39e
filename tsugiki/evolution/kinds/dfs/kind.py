"""``space.kind: dfs`` and ``ps_dfs``: an inference path per candidate (:class:`~tsugiki.evolution.kinds.dfs.space.DFSSpace`:
which layer of which model runs at each of T = M x r steps, plus the scaling matrix W; Akiba et al.
2024), assembled from the loaded sources without copying weights (:mod:`tsugiki.evolution.kinds.dfs.assemble`).
``ps_dfs`` adds ``ps``: the PS recipe ``ps_recipe`` merged once into ``RUN_DIR/ps_model``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Optional, Union

import yaml
from pydantic import PlainValidator, ValidationInfo

from tsugiki.errors import EvolutionError
from tsugiki.evolution.kinds.dfs.assemble import assemble, check_compatible
from tsugiki.evolution.kinds.dfs.plots import CAPTIONS, PATH_PLOT, plot_dfs
from tsugiki.evolution.kinds.dfs.space import DFSSpace, exact_export, fold_for
from tsugiki.evolution.problems import Problem
from tsugiki.evolution.schema import Bounds, Count, Names, NonNegative, NonNegativeNumber, Section, resolve_path
from tsugiki.evolution.sources import PS_MODEL, load_causal_lm, model_config, recipe_with_paths, search_threads, source_names
from tsugiki.evolution.space_kind import KindPlan, SpaceKind
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import Recipe, load_recipe
from tsugiki.merging.to_disk import merge_to_disk


def _scale_bounds(v: Any) -> tuple[float, float]:
    return Bounds.model_validate(v).bounds


def _model_name(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a model name")
    return v


class FixedEnds(Section):
    """The first and last layers of one model, kept in place on every path."""

    model: Annotated[str, PlainValidator(_model_name)]
    first: NonNegative = 0
    last: NonNegative = 0

    def to_data(self) -> dict[str, Any]:
        return {"model": self.model, "first": self.first, "last": self.last}


class DFSKind(SpaceKind):
    """Keys: ``models``, ``repeats`` (r), ``scale_bounds`` (of W's entries), ``scale_diagonal`` (W's
    diagonal searched too), ``fixed_ends`` ({model, first, last}), ``init_model`` (whose own path the
    initial mean reproduces; default the first model), ``init_indicator``."""

    kind: str = "dfs"
    models: Names
    repeats: Count = 3
    scale_bounds: Annotated[tuple[float, float], PlainValidator(_scale_bounds)] = (0.5, 1.5)
    scale_diagonal: bool = True
    fixed_ends: Optional[FixedEnds] = None
    init_model: Optional[str] = None
    init_indicator: NonNegativeNumber = 1.0

    source_keys = ("models",)
    plot_captions = CAPTIONS

    def plan_sources(self) -> list[str]:
        return list(self.models)

    def build(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]],
              names: Optional[Mapping[str, list[str]]] = None) -> DFSSpace:
        """The DFS space over ``models``; ``names`` (tensor names per model) also checks that scales
        can be folded into each model (a plan, from configs alone, leaves that to the run)."""
        layers, first, fold = {}, None, None
        for name in self.models:
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
        ends = self.fixed_ends
        try:
            return DFSSpace(
                models=tuple(self.models), paths=paths, num_layers=layers, repeats=self.repeats,
                scale_bounds=tuple(self.scale_bounds), scale_diagonal=self.scale_diagonal,
                fixed_model=ends and ends.model, fixed_first=ends.first if ends else 0,
                fixed_last=ends.last if ends else 0, init_model=self.init_model, init_indicator=self.init_indicator,
                transform=self.transform, fold=fold)
        except EvolutionError as e:
            raise EvolutionError(f"{config.where('space')}{e}") from None

    def to_data(self) -> dict[str, Any]:
        out = super().to_data()
        if "scale_bounds" in out:
            out["scale_bounds"] = list(self.scale_bounds)
        return out

    def problem(self, config: Any, paths: Mapping[str, str]) -> "DFSProblem":
        return DFSProblem(config, paths)

    def plan(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]) -> KindPlan:
        dfs = self.build(config, paths, configs)
        total = sum(dfs.num_layers[m] for m in dfs.models)
        fixed = len(dfs.fixed_head()) + len(dfs.fixed_tail())
        sizes = " + ".join(str(dfs.num_layers[m]) for m in dfs.models)
        m = len(dfs.models)
        parts = ((f"indicators I: T = ({sizes}{f' - {fixed} fixed' if fixed else ''}) layers x r={dfs.repeats}", len(dfs.slots())),
                 (f"scaling matrix W: {m} x {m}" + ("" if dfs.scale_diagonal else " off-diagonal"), len(dfs.scale_pairs())))
        notes = (f"{total} source layers; a candidate path has up to {len(dfs.slots()) + fixed} layers",)
        return KindPlan(dfs.space(), parts, notes)

    def plots(self, details: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return [plot_dfs(details, Path(out_dir) / PATH_PLOT)]


def _recipe_ref(v: Any, info: ValidationInfo) -> Union[str, dict]:
    if isinstance(v, str):
        return resolve_path(v, info)
    if not isinstance(v, Mapping):
        raise ValueError(f"expected a mapping, got {type(v).__name__}")
    return dict(v)


class PSDFSKind(DFSKind):
    """DFS keys plus ``ps_recipe`` (a recipe file or mapping; model refs may be source names): merged
    once into RUN_DIR/ps_model, available to ``models`` as ``ps``."""

    kind: str = "ps_dfs"
    ps_recipe: Annotated[Union[str, dict], PlainValidator(_recipe_ref)]

    def run_sources(self, run_dir: Path) -> dict[str, str]:
        return {PS_MODEL: str(Path(run_dir).resolve() / "ps_model")}

    def describe_run_source(self, name: str) -> Optional[tuple[str, str]]:
        if name == PS_MODEL:
            return "ps_model", "the PS model this run merged from space.ps_recipe (its recipe below)"
        return None

    def prepare(self, config: Any, run_dir: Path, paths: Mapping[str, str]) -> None:
        if Path(paths[PS_MODEL]).exists():
            return
        r = self.ps_recipe
        base_dir = Path(r).parent if isinstance(r, str) else None
        data = load_recipe(r).to_dict() if isinstance(r, str) else dict(r)
        recipe = Recipe.from_dict(recipe_with_paths(data, paths), source_name=config.where("space.ps_recipe").rstrip(": "))
        with search_threads(config):  # the PS candidates were evaluated with these threads
            merge_to_disk(recipe, paths[PS_MODEL], MergeOptions(progress=False), base_dir=base_dir,
                          named=source_names(config, run_dir))

    def recipe_base(self, config: Any) -> str:
        """The model ref (a source name or a path/hub id) whose shape ``ps`` has: the PS recipe's base
        model, or its first model (a PS merge keeps that model's layers and config)."""
        r = self.ps_recipe
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

    def plan_configs(self, config: Any, paths: Mapping[str, str], configs: dict[str, Mapping[str, Any]],
                     read: Optional[Callable[[str], Mapping[str, Any]]] = None) -> tuple[str, ...]:
        if read is not None:  # the plan may read files: ps's own config.json, else its base's
            if PS_MODEL in self.models:
                if Path(paths[PS_MODEL]).exists():
                    configs[PS_MODEL] = read(paths[PS_MODEL])
                else:
                    ref = self.recipe_base(config)
                    if ref not in configs:
                        configs[PS_MODEL] = read(paths.get(ref, ref))
            return ()
        if PS_MODEL in configs:
            return ()
        ref = self.recipe_base(config)
        name = ref if ref in configs else next((n for n, p in paths.items() if p == ref and n in configs), None)
        if name is None:
            raise EvolutionError(f"{config.where('space.ps_recipe')}no config.json given for {ref!r}, the PS model's base")
        configs[PS_MODEL] = configs[name]
        return (f"{PS_MODEL}: shaped like {ref} (the PS recipe's base model)",)


class DFSProblem(Problem):
    kind = "dfs"

    def __init__(self, config: Any, paths: Mapping[str, str]):
        super().__init__(config, paths)
        spec: DFSKind = config.spec.space
        self.kind = spec.kind
        metas = {name: model_config(self.paths[name]) for name in spec.models}
        self.dfs = spec.build(config, self.paths, {n: c for n, (c, _) in metas.items()}, {n: names for n, (_, names) in metas.items()})
        self.space = self.dfs.space()

    def setup(self) -> None:
        self.models = {}
        for name in self.dfs.models:
            self.models[name], tok = load_causal_lm(self.paths[name], self.config.spec.search.device)
            if name == self.dfs.models[0]:
                self.tokenizer = tok
        check_compatible(self.models)

    def prepare_candidate(self, values, ctx) -> None:
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
        return merge_to_disk(self.dfs.recipe(self.dfs.path(values)), out, MergeOptions(force=force, progress=False),
                             named=self.named).out
