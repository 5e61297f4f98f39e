"""Merge recipes: mergekit 0.1.5 YAML configurations, loaded, validated and dumped.

A recipe is a YAML mapping with these top-level keys (mergekit's, with its meaning):

- ``merge_method`` (required): a method name from ``tsugiki.merging.methods``.
- ``base_model``: a model reference (a local path or a hub id, optionally ``@revision``; ``MODEL+ADAPTER``
  or ``{model: MODEL, lora: ADAPTER}`` for a model with a peft LoRA adapter merged in, see
  :mod:`tsugiki.merging.refs` and :mod:`tsugiki.merging.lora`).
- exactly one of
  - ``models``: a list of ``{model, parameters}``;
  - ``slices``: a list of ``{sources: [{model, layer_range: [start, end], parameters}], parameters,
    base_model}``; all sources of a slice span the same number of layers.
- ``parameters``: global parameter settings (see :mod:`tsugiki.merging.parameters` for scalars,
  gradients and ``{filter, value}`` conditionals, and for the precedence of scopes).
- ``dtype``, ``out_dtype``: ``bfloat16``, ``float16``, ``float32``, ``float64`` or ``int64``
  (a ``torch.`` prefix is accepted and dropped).
- ``tokenizer_source``: ``base``, ``union`` or a model reference; or ``tokenizer: {source, tokens,
  pad_to_multiple_of}`` (token surgery; ``source`` defaults to ``union``): see :mod:`tsugiki.merging.vocab`.
- ``chat_template``, ``name``: strings.

tsugiki extras:

- ``seed``: an int in [0, 2**64) seeding the randomized methods (DARE, DELLA).

Rejected with a RecipeError as not supported (yet): ``modules``, ``override_architecture``, a slice's ``residual_weight`` (which mergekit ignores),
YAML merge keys (``<<``) and non-standard tags.

Also refused, as mergekit refuses them: a model listed twice in ``models`` or in one slice's sources,
a base model that is not among a slice's sources of a method that uses a base, a required base or
parameter missing, too few/many inputs for the method.

Accepted as mergekit accepts them: ``int8_mask`` (a memory option; ignored when the method does not
declare it), and a global parameter written in a model entry (mergekit ignores it there; tsugiki
warns with :class:`RecipeWarning`).

Every error message starts with ``FILE:LINE: `` (the YAML node at fault) followed by the dotted
path of the key, e.g. ``merge.yaml:7: slices[0].sources[1].layer_range: end (4) must be greater than
start (8)``. Recipes built with :meth:`Recipe.from_dict` report ``<dict>: path: ...``.

Usage::

    recipe = load_recipe("merge.yaml")            # or load_recipe(yaml_text, source_name="cli")
    recipe.model_refs()                           # ['base', 'model-a', ...]
    text = recipe.to_yaml(); assert load_recipe(text) == recipe

This module holds the data model, dumping and the :func:`load_recipe` entry point; the internals
live in :mod:`tsugiki.yaml_lines` (YAML text -> plain data + line maps) and
:mod:`tsugiki.merging.recipe_check` (validation into a :class:`Recipe`; imported lazily, as it
builds the dataclasses defined here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import yaml

from tsugiki.errors import RecipeError
from tsugiki.merging.parameters import Conditional, Setting, resolve_param
from tsugiki.merging.recipe_check import RecipeChecker
from tsugiki.merging.recipe_schema import DTYPES, MethodLookup, ModelEntry, Params, RecipeWarning, Slice, SliceSource
from tsugiki.merging.recipe_tokenizer import TokenizerSpec, tokenizer_data
from tsugiki.yaml_lines import nearest_line, parse_yaml

if TYPE_CHECKING:  # pragma: no cover
    from tsugiki.merging.methods.base import MergeMethod

__all__ = [
    "Conditional",
    "ModelEntry",
    "Recipe",
    "RecipeWarning",
    "Setting",
    "Slice",
    "SliceSource",
    "DTYPES",
    "load_recipe",
    "resolve_params",
]


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Exactly one of ``models``/``slices`` is set (a non-empty tuple).

    Parameter dicts map names to settings: a scalar, a tuple of scalars (gradient) or a tuple of
    :class:`Conditional`. Treat them as read-only; build changed recipes with
    ``dataclasses.replace`` and call :meth:`validate`, or go through :meth:`from_dict`.
    """

    merge_method: str
    models: Optional[tuple[ModelEntry, ...]] = None
    slices: Optional[tuple[Slice, ...]] = None
    base_model: Optional[str] = None
    parameters: Params = field(default_factory=dict)
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None  # "base", "union" or a model reference
    tokenizer: Optional[TokenizerSpec] = None  # token rules and padding (the `tokenizer:` form)
    chat_template: Optional[str] = None
    name: Optional[str] = None
    seed: Optional[int] = None
    source_name: Optional[str] = field(default=None, compare=False, repr=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    # ---- construction / serialization -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, methods: MethodLookup = None, source_name: str = "<dict>") -> "Recipe":
        """Validate plain data (as yaml.safe_load gives, tuples allowed for lists) into a Recipe."""
        return RecipeChecker(source_name, {}, {}, methods).recipe(data, cls)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in mergekit's layout (lists, dicts, scalars), omitting unset keys."""
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            d["base_model"] = self.base_model
        if self.models is not None:
            d["models"] = [_entry_data(m.model, None, m.parameters) for m in self.models]
        if self.slices is not None:
            out = []
            for s in self.slices:
                sd: dict[str, Any] = {"sources": [_entry_data(x.model, x.layer_range, x.parameters) for x in s.sources]}
                if s.base_model is not None:
                    sd["base_model"] = s.base_model
                if s.parameters:
                    sd["parameters"] = _params_data(s.parameters)
                out.append(sd)
            d["slices"] = out
        if self.parameters:
            d["parameters"] = _params_data(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template", "name", "seed"):
            value = getattr(self, key)
            if key == "tokenizer_source":
                d.update(tokenizer_data(value, self.tokenizer))
            elif value is not None:
                d[key] = value
        return d

    def to_yaml(self) -> str:
        """mergekit-style YAML; ``load_recipe(r.to_yaml()) == r``."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    def map_refs(self, fn: Callable[[str], str]) -> "Recipe":
        """The same recipe with every model reference ``r`` written as ``fn(r)`` (``tokenizer_source``
        too, unless it is ``base``)."""
        d = self.to_dict()
        if "base_model" in d:
            d["base_model"] = fn(d["base_model"])
        for m in d.get("models", ()):
            m["model"] = fn(m["model"])
        for s in d.get("slices", ()):
            if "base_model" in s:
                s["base_model"] = fn(s["base_model"])
            for src in s["sources"]:
                src["model"] = fn(src["model"])
        source, spec = self.tokenizer_source, self.tokenizer
        if source not in (None, "base", "union"):
            source = fn(source)
        if spec is not None:
            spec = TokenizerSpec(tuple((t, rule.mapped(fn)) for t, rule in spec.tokens), spec.pad_to_multiple_of)
        d.update(tokenizer_data(source, spec))
        return Recipe.from_dict(d, source_name=self.source_name or "<dict>")

    def validate(self, *, methods: MethodLookup = None) -> "Recipe":
        """Re-validate (e.g. after ``dataclasses.replace``); returns the normalized recipe."""
        return Recipe.from_dict(self.to_dict(), methods=methods, source_name=self.source_name or "<dict>")

    # ---- queries for the planner -------------------------------------------------------------
    def model_refs(self, *, include_tokenizer: bool = False) -> list[str]:
        """Distinct model references in order of first appearance, the base model first if set.
        Slice base models come before their slice's sources. ``include_tokenizer`` adds a
        ``tokenizer_source`` model reference at the end."""
        refs: list[str] = []

        def add(ref: Optional[str]) -> None:
            if ref is not None and ref not in refs:
                refs.append(ref)

        add(self.base_model)
        for m in self.models or ():
            add(m.model)
        for s in self.slices or ():
            add(s.base_model)
            for src in s.sources:
                add(src.model)
        if include_tokenizer and self.tokenizer_source not in (None, "base", "union"):
            add(self.tokenizer_source)
        return refs

    def _slice_index(self, slice_index: Optional[int]) -> Optional[int]:
        if self.slices is None:
            if slice_index not in (None, 0, -1):
                raise ValueError(f"recipe uses models:, slice_index must be None, got {slice_index!r}")
            return None
        if slice_index is None:
            if len(self.slices) == 1:
                return 0
            raise ValueError("recipe uses slices:, a slice_index is needed")
        n = len(self.slices)
        if not -n <= slice_index < n:
            raise ValueError(f"slice_index {slice_index} out of range for {n} slices")
        return slice_index % n

    def slice(self, slice_index: Optional[int]) -> Optional[Slice]:
        """The slice at ``slice_index`` (negative allowed); None in the ``models:`` form."""
        i = self._slice_index(slice_index)
        return None if i is None else self.slices[i]  # type: ignore[index]

    def base_for(self, slice_index: Optional[int] = None) -> Optional[str]:
        """The base model of a slice: its own ``base_model``, else the recipe's."""
        sl = self.slice(slice_index)
        if sl is not None and sl.base_model is not None:
            return sl.base_model
        return self.base_model

    def sources(self, slice_index: Optional[int] = None) -> tuple[Union[ModelEntry, SliceSource], ...]:
        """The merge inputs of a slice, in kernel order. In the ``models:`` form these are the model
        entries, plus the base model appended (with no parameters) when it is set and not listed, as
        mergekit does (for every method)."""
        sl = self.slice(slice_index)
        if sl is not None:
            return sl.sources
        entries: tuple[ModelEntry, ...] = self.models or ()
        if self.base_model is not None and all(m.model != self.base_model for m in entries):
            entries = entries + (ModelEntry(self.base_model),)
        return entries

    def slice_path(self, slice_index: Optional[int]) -> str:
        i = self._slice_index(slice_index)
        return "models" if i is None else f"slices[{i}]"

    def entry_path(self, slice_index: Optional[int], model: str) -> str:
        """Dotted path of the first entry naming ``model`` in a slice (or ``models``)."""
        i = self._slice_index(slice_index)
        if i is None:
            for j, m in enumerate(self.models or ()):
                if m.model == model:
                    return f"models[{j}]"
            return "base_model" if model == self.base_model else "models"
        for j, s in enumerate(self.slices[i].sources):  # type: ignore[index]
            if s.model == model:
                return f"slices[{i}].sources[{j}]"
        return f"slices[{i}]"

    @property
    def builds_tokenizer(self) -> bool:
        """Whether the output tokenizer is built (``union``, token rules) rather than one model's taken as it is."""
        return self.tokenizer_source == "union" or self.tokenizer is not None

    def ref_where(self, ref: str) -> str:
        """``"FILE:LINE: PATH: "`` of the first place naming model ``ref`` (for errors about that source)."""
        paths = ["base_model"] if self.base_model == ref else []
        paths += [f"models[{j}].model" for j, m in enumerate(self.models or ()) if m.model == ref]
        for i, s in enumerate(self.slices or ()):
            paths += [f"slices[{i}].base_model"] if s.base_model == ref else []
            paths += [f"slices[{i}].sources[{j}].model" for j, x in enumerate(s.sources) if x.model == ref]
        return f"{self.where(paths[0])}{paths[0]}: " if paths else self.where()

    def where(self, path: str = "") -> str:
        """``"FILE:LINE: "`` for a dotted path (the nearest enclosing node known), for messages."""
        src = self.source_name
        if not src:
            return ""
        line = nearest_line(self.lines, path)
        return f"{src}: " if line is None else f"{src}:{line}: "


# ---------------------------------------------------------------------------------------------
# dumping


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = bool(data) and all(isinstance(e, (int, float)) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # YAML reads NEL/LS/PS as line breaks inside plain and single-quoted scalars (folding them to a
    # space); only a double-quoted scalar escapes them, so the round trip keeps them
    style = '"' if any(ch in data for ch in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(str, _represent_str)


def _setting_data(s: Any) -> Any:
    if isinstance(s, Conditional):
        return [s.to_data()]
    if isinstance(s, tuple):
        return [e.to_data() if isinstance(e, Conditional) else e for e in s]
    return s


def _params_data(p: Params) -> dict[str, Any]:
    return {k: _setting_data(v) for k, v in p.items()}


def _entry_data(model: str, layer_range: Optional[tuple[int, int]], params: Params) -> dict[str, Any]:
    d: dict[str, Any] = {"model": model}
    if layer_range is not None:
        d["layer_range"] = list(layer_range)
    if params:
        d["parameters"] = _params_data(params)
    return d


# ---------------------------------------------------------------------------------------------
# loading (parsing: tsugiki.yaml_lines; validation: recipe_check)


def load_recipe(
    path_or_text: Union[str, os.PathLike, bytes], *, source_name: Optional[str] = None, methods: MethodLookup = None
) -> Recipe:
    """Load and validate a recipe from a file path or from YAML text.

    A ``Path``, or a one-line string naming an existing file or ending in ``.yml``/``.yaml``, is read
    as a file; anything else is YAML text. ``source_name`` names the source in messages (default:
    the path, or ``<recipe>``). ``methods`` looks method names up (a Registry, a mapping or a
    callable); by default ``tsugiki.merging.methods.get_method``. Raises RecipeError only.
    """
    text: str
    if isinstance(path_or_text, bytes):
        try:
            text = path_or_text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecipeError(f"{source_name or '<recipe>'}: recipe is not UTF-8 text ({e})") from None
        name = source_name or "<recipe>"
    elif isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str)
        and "\n" not in path_or_text
        and (path_or_text.endswith((".yaml", ".yml")) or os.path.isfile(path_or_text))
    ):
        p = Path(path_or_text)
        name = source_name or str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"{name}: recipe file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"{name}: cannot read recipe: {e}") from None
    elif isinstance(path_or_text, str):
        text = path_or_text
        name = source_name or "<recipe>"
    else:
        raise TypeError(f"load_recipe() expects a path or YAML text, got {type(path_or_text).__name__}")
    data, lines, key_lines = parse_yaml(text, name)
    return RecipeChecker(name, lines, key_lines, methods).recipe(data, Recipe)


def resolve_params(
    method: "MergeMethod",
    recipe: "Recipe",
    slice_index: Optional[int],
    tensor_name: str,
    t: float,
    models: Optional[Sequence[str]] = None,
    *,
    input_names: Optional[Sequence[str]] = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Resolve every parameter of ``method`` for one output tensor.

    slice_index: index into ``recipe.slices`` (negative counts from the end); ``None`` (or 0) for the
      ``models:`` form.
    tensor_name: the output tensor's name (filters of global parameters match it).
    t: gradient position, see :func:`layer_t`.
    models: the model reference of each input tensor, in kernel order; defaults to
      ``[s.model for s in recipe.sources(slice_index)]``.
    input_names: the input tensor name of each model (mergekit matches per-model filters against the
      *input* name, which differs from the output name when layer ranges shift); defaults to
      ``tensor_name`` for all.

    Returns ``(global_params, per_model)``: ``global_params`` maps every non-per-model Param to its
    value; ``per_model[i]`` maps every per-model Param to its value for ``models[i]`` (empty for the
    base model when the method uses a base). Raises RecipeError (with the recipe's file:line where
    known) for a missing required parameter or a value invalid for the Param's kind.
    """
    sl = recipe.slice(slice_index)
    slice_params = sl.parameters if sl is not None else {}
    shared = (slice_params, recipe.parameters)
    where = recipe.where(recipe.slice_path(slice_index)) if sl is not None else recipe.where("merge_method")
    global_params = {p.name: resolve_param(p, shared, tensor_name, t, where=where) for p in method.global_params}

    entries = sl.sources if sl is not None else (recipe.models or ())
    if models is None:
        models = [s.model for s in recipe.sources(slice_index)]
    if input_names is not None and len(input_names) != len(models):
        raise ValueError("input_names must have one name per model")
    base = recipe.base_for(slice_index) if method.base != "ignored" else None
    model_params = method.model_params
    per_model: list[dict[str, Any]] = []
    for i, model in enumerate(models):
        if base is not None and model == base:
            per_model.append({})
            continue
        name = input_names[i] if input_names is not None else tensor_name
        own = [e.parameters for e in entries if e.model == model]
        scopes = (*own, *shared)
        where_m = recipe.where(recipe.entry_path(slice_index, model))
        per_model.append(
            {p.name: resolve_param(p, scopes, name, t, model=model, where=where_m) for p in model_params}
        )
    return global_params, per_model
