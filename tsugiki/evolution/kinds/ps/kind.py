"""``space.kind: ps``: a merge recipe per candidate (:class:`~tsugiki.evolution.kinds.ps.space.PSSpace`: per-model,
per-layer-group parameters of ``method``; Akiba et al. 2024), merged in place into one loaded model with
:class:`~tsugiki.merging.inmemory.InMemoryMerger`. When a merged model is a LLaVA-family VLM, the
language model inside it is merged in place (:class:`~tsugiki.vlm.inmemory.VlmLanguageModelMerger`;
vision tower and projector never touched; the candidate context carries the processor) and the best
exports as a grafted VLM dir."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Optional

from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.kinds.ps.plots import CAPTIONS, heatmap_plots
from tsugiki.evolution.kinds.ps.space import DEFAULT_BOUNDS, PSSpace, recipe_data
from tsugiki.evolution.problems import Problem, parameter_matrices
from tsugiki.evolution.schema import Bounds, Count, Mapping_, Names, NonNegative
from tsugiki.evolution.sources import is_vlm_path, load_causal_lm, load_vlm, model_config, read_json_config
from tsugiki.evolution.space_kind import KindPlan, SpaceKind
from tsugiki.families import merge
from tsugiki.merging.architecture import architecture_for, spec_for_class
from tsugiki.merging.sources import open_sources
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.inmemory import InMemoryMerger
from tsugiki.merging.plan import plan_merge
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.vocab import recipe_vocabulary
from tsugiki.vlm.inmemory import VlmLanguageModelMerger
from tsugiki.vlm.sources import is_multimodal_config


def text_num_layers(cfg: Mapping[str, Any], label: str) -> int:
    """Layer count of a VLM's language model; hub configs omit values equal to the family default
    (llava-hf's text_config has no num_hidden_layers when it is Mistral's 32)."""
    text = cfg.get("text_config") or {}
    if isinstance(text.get("num_hidden_layers"), int):
        return text["num_hidden_layers"]
    from transformers import CONFIG_MAPPING  # transformers loads in seconds: only for such hub configs

    family = text.get("model_type")
    if family not in CONFIG_MAPPING:
        raise EvolutionError(f"source {label}: text_config has no num_hidden_layers and no known model_type ({family!r})")
    return int(CONFIG_MAPPING[family]().num_hidden_layers)


def ps_layout(cfg: Mapping[str, Any], names: Optional[list[str]], label: str, *, vlm_only: bool) -> tuple[int, str]:
    """(number of layers, layer prefix template) that PS layer groups refer to: checked against the
    tensor names when given, else (a plan) from config.json's ``architectures`` alone."""
    if vlm_only:
        return text_num_layers(cfg, label), "model.layers.${layer_index}."
    if names is not None:
        spec = architecture_for(dict(cfg), names, label)
    else:
        classes = cfg.get("architectures") or []
        spec = next((s for s in map(spec_for_class, classes) if s is not None), None)
        if spec is None:
            raise EvolutionError(f"source {label}: config.json names no known architecture ({', '.join(classes) or 'none'}); "
                                 f"its layer layout needs the checkpoint's tensor names")
    try:
        return spec.num_layers(dict(cfg), names), spec.layer_prefix
    except TsugikiError as e:
        raise EvolutionError(f"source {label}: {e}") from None


class PSKind(SpaceKind):
    """Keys: ``method`` (any merge method; its real-valued parameters may be searched), ``base_model``,
    ``models``, ``layer_groups`` (values per model: that many layer groups plus the rest; 1: one value),
    ``params`` ({NAME: [low, high] or {bounds, init, transform}}: per model, or once for a method-level
    parameter), ``fixed`` (method-level parameters not searched), ``merge_seed``, ``dtype``, ``tokenizer_source``
    (base, union or a source name: models whose tokenizers differ, laid out in one vocabulary as
    ``tsugiki merge`` does; the candidate is that vocabulary's size, scored with the hf engine)."""

    kind: str = "ps"
    method: str = "dare_ties"
    base_model: Optional[str] = None
    models: Names
    layer_groups: Count = 1
    params: Optional[dict[str, Bounds]] = None
    fixed: Mapping_ = {}
    merge_seed: NonNegative = 0
    dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None

    source_keys = ("models", "base_model")
    plot_captions = CAPTIONS

    def check_sources(self, config: Any, paths: Mapping[str, str]) -> None:
        super().check_sources(config, paths)
        ts = self.tokenizer_source
        if ts is not None and ts not in ("base", "union") and ts not in paths:
            raise EvolutionError(f"{config.where('space.tokenizer_source')}expected base, union or a source name, "
                                 f"got {ts!r} (known: {', '.join(paths)})")

    def members(self) -> list[str]:
        return [*([self.base_model] if self.base_model else []), *self.models]

    def plan_sources(self) -> list[str]:
        return self.members()

    def build(self, paths: Mapping[str, str], num_layers: int, prefix: str) -> PSSpace:
        params = self.params or {k: Bounds(bounds=v) for k, v in DEFAULT_BOUNDS.items()}
        return PSSpace(
            method=self.method, base_model=self.base_model, models=tuple(self.models), paths=paths,
            num_layers=num_layers, layer_prefix=prefix, layer_groups=self.layer_groups,
            bounds={k: v.bounds for k, v in params.items()},
            init={k: v.init for k, v in params.items() if v.init is not None}, transform=self.transform,
            fixed=self.fixed, merge_seed=self.merge_seed, dtype=self.dtype, tokenizer_source=self.tokenizer_source)

    def problem(self, config: Any, paths: Mapping[str, str]) -> "PSProblem":
        return PSProblem(config, paths)

    def plan(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]) -> KindPlan:
        members = self.members()
        vlms = [m for m in members if is_multimodal_config(configs[m])]
        llms = [m for m in members if m not in vlms]
        ref = llms[0] if llms else vlms[0]
        num_layers, prefix = ps_layout(configs[ref], None, ref, vlm_only=not llms)
        ps = self.build(paths, num_layers, prefix)
        space = ps.space()
        ps.recipe(space.decode(space.x0()))
        groups = ps.groups()
        per = ("1 value" if groups == [""]
               else f"{len(groups)} values ({ps.layer_groups} groups of {num_layers} layers + rest)")
        parts = tuple((f"{p}: {len(ps.models)} models x {per}", len(ps.models) * len(groups)) for p in ps.bounds)
        notes = (f"VLM: the language model inside {vlms[0]} is merged; its vision tower and projector stay fixed",) if vlms else ()
        return KindPlan(space, parts, notes)

    def plots(self, details: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return heatmap_plots(details, out_dir)


class PSProblem(Problem):
    kind = "ps"

    @property
    def engines(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("hf",) if self.vlm is not None or self.ps.tokenizer_source is not None else ("hf", "vllm")

    def engine_note(self) -> str:
        return "the language model inside a LLaVA is scored with transformers"

    def __init__(self, config: Any, paths: Mapping[str, str]):
        super().__init__(config, paths)
        spec: PSKind = config.spec.space
        members = spec.members()
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
        self.ps = spec.build(self.paths, *layout)
        self.space = self.ps.space()
        self.ps.recipe(self.space.decode(self.space.x0()))  # bad method/parameter names fail now, not per candidate

    def check(self) -> None:
        if self.vlm is not None:
            return  # VLM sources are checked when the merger is built (setup: shapes, vocabulary)
        recipe = self.ps.recipe(self.space.decode(self.space.x0()))
        sources = open_sources(recipe.model_refs())
        try:
            plan_merge(recipe, sources, vocab=self.vocabulary)  # MergeError names the tensor at fault
        finally:
            for src in sources.values():
                src.close()

    def setup(self) -> None:
        refs = {self.paths[m] for m in (*self.ps.models, *([self.ps.base_model] if self.ps.base_model else []))}
        self.processor = None
        device = self.config.spec.search.device
        if self.vlm is not None:
            self.model, self.processor = load_vlm(self.paths[self.vlm], device)
            self.tokenizer = self.processor.tokenizer
            self.merger = VlmLanguageModelMerger(self.model, {r: r for r in sorted(refs)})
            return
        ref = self.ps.base_model or self.ps.models[0]
        self.model, self.tokenizer = load_causal_lm(self.paths[ref], device)
        vocab = self.vocabulary
        if vocab is not None:  # the candidate has the output vocabulary's rows and tokenizer
            self.model.resize_token_embeddings(vocab.size, mean_resizing=False)
            self.tokenizer = vocab.tokenizer
        self.merger = InMemoryMerger(self.model, {r: r for r in sorted(refs)}, vocab=vocab)
        self.engine = self.start_engine(self.model, self.tokenizer, self.paths[ref])

    @cached_property
    def vocabulary(self):
        """The output vocabulary every candidate shares (None without ``tokenizer_source``), built once per
        process: the check and the setup both need it, and it loads every source's tokenizer."""
        recipe = self.ps.recipe(self.space.decode(self.space.x0()))
        if recipe.tokenizer_source is None:
            return None
        sources = open_sources(recipe.model_refs())
        try:
            return recipe_vocabulary(recipe, sources)
        finally:
            for src in sources.values():
                src.close()

    def prepare_candidate(self, values, ctx) -> None:
        self._merge_into(ctx, self.ps.recipe(values))

    def _merge_into(self, ctx, recipe: Recipe) -> None:
        """Merge ``recipe`` in place into the loaded model and hand it (and tokenizer, processor) to ``ctx``."""
        self.merger.apply(recipe)
        ctx.model, ctx.tokenizer = self.model, self.tokenizer
        if self.engine is not None:  # hf: the engine holds this very model; vllm: the weights go in from memory
            self.engine.load_model(self.model)
            ctx.engine = self.engine
        if self.processor is not None:
            ctx.extra["processor"] = self.processor

    def scorable_sources(self) -> list[str]:
        if self.vlm is not None:  # a VLM's language model merged in place: its sources are not candidates as they are
            return []
        return [*([self.ps.base_model] if self.ps.base_model else []), *self.ps.models]

    def prepare_source(self, name: str, ctx) -> None:
        """The source alone (a linear merge of it with weight 1: its own weights), merged in place."""
        data = recipe_data("linear", [{"model": self.paths[name], "parameters": {"weight": 1.0}}], None, {}, 0,
                           self.ps.dtype)
        self._merge_into(ctx, Recipe.from_dict(data, source_name=f"<source {name}>"))

    def document(self, values, header: str = "") -> str:
        return header + self.ps.recipe(values).to_yaml()

    def details(self, values) -> dict[str, Any]:
        return {"kind": "ps", "matrices": parameter_matrices(self.ps, values)}

    def export(self, values, out, *, force: bool = False) -> Path:
        # the recipe names each member's path, so a VLM member (self.vlm) makes it a VLM recipe: a grafted
        # VLM dir (the vision donor's files with the merged language model), else a causal-LM dir
        return merge(self.ps.recipe(values), out, MergeOptions(force=force, progress=False), named=self.named).out
