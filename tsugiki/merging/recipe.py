"""Merge recipes: mergekit 0.1.5 YAML configurations, loaded, validated and dumped.

A recipe is a YAML mapping with these top-level keys (mergekit's, with its meaning):

- ``merge_method`` (required): a method name from ``tsugiki.merging.methods``.
- ``base_model``: a model reference (a local path or a hub id, optionally ``@revision``).
- exactly one of
  - ``models``: a list of ``{model, parameters}``;
  - ``slices``: a list of ``{sources: [{model, layer_range: [start, end], parameters}], parameters,
    base_model}``; all sources of a slice span the same number of layers.
- ``parameters``: global parameter settings (see :mod:`tsugiki.merging.parameters` for scalars,
  gradients and ``{filter, value}`` conditionals, and for the precedence of scopes).
- ``dtype``, ``out_dtype``: ``bfloat16``, ``float16``, ``float32``, ``float64`` or ``int64``
  (a ``torch.`` prefix is accepted and dropped).
- ``tokenizer_source``: ``base`` or a model reference. ``tokenizer: {source: ...}`` with nothing but
  a ``source`` is accepted as a spelling of ``tokenizer_source``.
- ``chat_template``, ``name``: strings.

tsugiki extras:

- ``seed``: an int in [0, 2**64) seeding the randomized methods (DARE, DELLA).

Rejected with a RecipeError as not supported (yet): ``modules``, ``tokenizer_source: union``,
``tokenizer:`` token surgery (``tokens``, ``pad_to_multiple_of``, a union source), LoRA references
(``model+lora``), ``override_architecture``, a slice's ``residual_weight`` (which mergekit ignores),
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
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import yaml

from tsugiki.errors import RecipeError, UnknownNameError
from tsugiki.merging.parameters import Conditional, Setting, coerce, is_scalar, resolve_params
from tsugiki.registry import Registry

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

DTYPES = ("bfloat16", "float16", "float32", "float64", "int64")
TOP_LEVEL_KEYS = (
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
    "seed",
)
# Parameters mergekit accepts for every method of the task-arithmetic family that only tune memory.
IGNORABLE_PARAMS = {"int8_mask": bool}
_MAX_NODES = 200_000
_MAX_DEPTH = 200

Params = Mapping[str, Setting]
MethodLookup = Union[Registry, Mapping[str, Any], Callable[[str], Any], None]


class RecipeWarning(UserWarning):
    """A recipe construct that is accepted but has no effect."""


@dataclass(frozen=True)
class ModelEntry:
    """One item of ``models:``."""

    model: str
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    """One source of a slice: layers ``[layer_range[0], layer_range[1])`` of ``model``."""

    model: str
    layer_range: tuple[int, int]
    parameters: Params = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


@dataclass(frozen=True)
class Slice:
    """One output slice; its sources all span ``num_layers`` layers."""

    sources: tuple[SliceSource, ...]
    parameters: Params = field(default_factory=dict)
    base_model: Optional[str] = None

    @property
    def num_layers(self) -> int:
        return self.sources[0].num_layers


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
    tokenizer_source: Optional[str] = None  # "base" or a model reference
    chat_template: Optional[str] = None
    name: Optional[str] = None
    seed: Optional[int] = None
    source_name: Optional[str] = field(default=None, compare=False, repr=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    # ---- construction / serialization -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, methods: MethodLookup = None, source_name: str = "<dict>") -> "Recipe":
        """Validate plain data (as yaml.safe_load gives, tuples allowed for lists) into a Recipe."""
        return _Checker(source_name, {}, {}, methods).recipe(data)

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
            if value is not None:
                d[key] = value
        return d

    def to_yaml(self) -> str:
        """mergekit-style YAML; ``load_recipe(r.to_yaml()) == r``."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

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
        if include_tokenizer and self.tokenizer_source not in (None, "base"):
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

    def where(self, path: str = "") -> str:
        """``"FILE:LINE: "`` for a dotted path (the nearest enclosing node known), for messages."""
        src = self.source_name
        if not src:
            return ""
        p = path
        while True:
            if p in self.lines:
                return f"{src}:{self.lines[p]}: "
            if not p:
                return f"{src}: "
            p = _parent(p)


# ---------------------------------------------------------------------------------------------
# dumping


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = bool(data) and all(isinstance(e, (int, float)) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


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
# loading: YAML nodes -> plain data + path -> line maps


def _fmt(path: Sequence[Union[str, int]]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _parent(p: str) -> str:
    if p.endswith("]"):
        return p[: p.rindex("[")]
    return p.rsplit(".", 1)[0] if "." in p else ""


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
    data, lines, key_lines = _parse_yaml(text, name)
    return _Checker(name, lines, key_lines, methods).recipe(data)


def _parse_yaml(text: str, name: str) -> tuple[Any, dict[str, int], dict[str, int]]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        line = text[: max(e.position, 0)].count("\n") + 1
        raise RecipeError(f"{name}:{line}: invalid YAML: unacceptable character #x{e.character:04x}") from None
    except yaml.YAMLError as e:  # pragma: no cover - defensive
        raise RecipeError(f"{name}: invalid YAML: {e}") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(x) for x in (e.context, e.problem) if x)
            raise RecipeError(f"{name}{line}: invalid YAML: {problem or e}") from None
        except yaml.YAMLError as e:
            raise RecipeError(f"{name}: invalid YAML: {e}") from None
        except RecursionError:
            raise RecipeError(f"{name}: invalid YAML: nested too deeply") from None
        if node is None:
            raise RecipeError(f"{name}:1: recipe is empty")
        walker = _Walker(name, loader)
        data = walker.walk(node, (), 0)
        return data, walker.lines, walker.key_lines
    finally:
        loader.dispose()


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Walker:
    """Turns a composed YAML node graph into plain data, recording the line of every node."""

    def __init__(self, name: str, loader: yaml.SafeLoader):
        self.name = name
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.key_lines: dict[str, int] = {}
        self.count = 0
        self.stack: set[int] = set()

    def fail(self, node: yaml.Node, path: tuple, msg: str) -> RecipeError:
        at = _fmt(path)
        return RecipeError(f"{self.name}:{node.start_mark.line + 1}: {at + ': ' if at else ''}{msg}")

    def walk(self, node: yaml.Node, path: tuple, depth: int) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise self.fail(node, path, "recipe is too large (alias expansion?)")
        if depth > _MAX_DEPTH:
            raise self.fail(node, path, "recipe is nested too deeply")
        key = _fmt(path)
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.stack:
            raise self.fail(node, path, "recursive YAML alias")
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ_TAG:
                    raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
                return [self.walk(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                if node.tag != _MAP_TAG:
                    raise self.fail(node, path, f"unsupported YAML tag {node.tag!r}")
                out: dict[str, Any] = {}
                for knode, vnode in node.value:
                    if knode.tag == _MERGE_TAG:
                        raise self.fail(knode, path, "YAML merge keys (<<) are not supported")
                    if not isinstance(knode, yaml.ScalarNode):
                        raise self.fail(knode, path, "mapping keys must be plain strings")
                    k = self.scalar(knode, path)
                    if not isinstance(k, str):
                        raise self.fail(knode, path, f"mapping key {k!r} is not a string")
                    if k in out:
                        raise self.fail(knode, path + (k,), f"duplicate key {k!r}")
                    self.key_lines.setdefault(_fmt(path + (k,)), knode.start_mark.line + 1)
                    out[k] = self.walk(vnode, path + (k,), depth + 1)
                return out
            raise self.fail(node, path, "unsupported YAML node")  # pragma: no cover
        finally:
            self.stack.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e)
            raise self.fail(node, path, f"invalid YAML value: {problem}") from None
        except Exception as e:  # PyYAML raises ValueError etc. for e.g. "2020-13-45" or "!!int x"
            raise self.fail(node, path, f"invalid YAML value {node.value!r}: {e}") from None


# ---------------------------------------------------------------------------------------------
# validation


def _lookup_method(methods: MethodLookup, name: str) -> Any:
    if methods is None:
        from tsugiki.merging.methods import get_method  # written elsewhere; imported lazily

        return get_method(name)
    if isinstance(methods, Registry):
        return methods.get(name)
    if isinstance(methods, Mapping):
        if name in methods:
            return methods[name]
        close = difflib.get_close_matches(name, [str(k) for k in methods], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown merge method {name!r}{hint} (known: {', '.join(sorted(map(str, methods)))})")
    return methods(name)


def _is_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if _is_seq(v):
        return "a list"
    if isinstance(v, Mapping):
        return "a mapping"
    return f"a {type(v).__name__}"


class _Checker:
    def __init__(self, name: str, lines: dict[str, int], key_lines: dict[str, int], methods: MethodLookup):
        self.name = name
        self.lines = lines
        self.key_lines = key_lines
        self.methods = methods
        self.method: Any = None

    # -- errors --
    def where(self, path: tuple, *, key: bool = False) -> str:
        p = _fmt(path)
        if key and p in self.key_lines:
            return f"{self.name}:{self.key_lines[p]}"
        while True:
            if p in self.lines:
                return f"{self.name}:{self.lines[p]}"
            if not p:
                return self.name
            p = _parent(p)

    def err(self, path: tuple, msg: str, *, key: bool = False) -> RecipeError:
        at = _fmt(path)
        return RecipeError(f"{self.where(path, key=key)}: {at + ': ' if at else ''}{msg}")

    def warn(self, path: tuple, msg: str) -> None:
        at = _fmt(path)
        warnings.warn(f"{self.where(path, key=True)}: {at + ': ' if at else ''}{msg}", RecipeWarning, stacklevel=4)

    def mapping(self, value: Any, path: tuple, allowed: Sequence[str], what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.err(path, f"{what} must be a mapping, got {_type_name(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.err(path, f"key {k!r} is not a string")
            if k not in allowed:
                close = difflib.get_close_matches(k, list(allowed), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.err(
                    path + (k,), f"unknown key {k!r} in {what}{hint} (allowed: {', '.join(allowed)})", key=True
                )
        return value

    def string(self, value: Any, path: tuple, *, optional: bool = True) -> Optional[str]:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.err(path, f"expected a string, got {_type_name(value)}")
        return value

    # -- recipe --
    def recipe(self, data: Any) -> Recipe:
        if data is None:
            raise self.err((), "recipe is empty")
        if isinstance(data, Mapping) and "modules" in data:
            raise self.err(("modules",), "'modules' (per-module merges) is not supported; use models: or slices:", key=True)
        d = self.mapping(data, (), TOP_LEVEL_KEYS, "the recipe")
        if "merge_method" not in d or d["merge_method"] is None:
            raise self.err((), "missing required key 'merge_method'")
        method_name = self.string(d["merge_method"], ("merge_method",), optional=False)
        try:
            self.method = _lookup_method(self.methods, method_name)  # type: ignore[arg-type]
        except UnknownNameError as e:
            raise self.err(("merge_method",), str(e)) from None
        except KeyError as e:
            raise self.err(("merge_method",), f"unknown merge method {method_name!r} ({e})") from None

        base = self.model_ref(d.get("base_model"), ("base_model",), optional=True)
        has_models = bool(d.get("models"))
        has_slices = bool(d.get("slices"))
        if has_models == has_slices:
            if has_models:
                raise self.err(("slices",), "give either 'models' or 'slices', not both", key=True)
            raise self.err((), "exactly one of 'models' or 'slices' must be given (and not empty)")
        models = self.models(d["models"], ("models",)) if has_models else None
        slices = self.slices(d["slices"], ("slices",)) if has_slices else None
        params = self.params(d.get("parameters"), ("parameters",), per_model_scope=False)

        dtype = self.dtype(d.get("dtype"), ("dtype",))
        out_dtype = self.dtype(d.get("out_dtype"), ("out_dtype",))
        tok = self.tokenizer(d, base)
        chat_template = self.string(d.get("chat_template"), ("chat_template",))
        name = self.string(d.get("name"), ("name",))
        seed = d.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise self.err(("seed",), f"seed must be an integer, got {_type_name(seed)}")
            if not 0 <= seed < 2**64:
                raise self.err(("seed",), "seed must be within [0, 2**64)")

        recipe = Recipe(
            merge_method=method_name,  # type: ignore[arg-type]
            models=models,
            slices=slices,
            base_model=base,
            parameters=params,
            dtype=dtype,
            out_dtype=out_dtype,
            tokenizer_source=tok,
            chat_template=chat_template,
            name=name,
            seed=seed,
            source_name=self.name,
            lines=dict(self.lines),
        )
        self.check_method(recipe)
        return recipe

    def model_ref(self, value: Any, path: tuple, *, optional: bool = False) -> Optional[str]:
        if value is None:
            if optional:
                return None
            raise self.err(path, "a model reference is required")
        if isinstance(value, Mapping):  # mergekit's expanded form {model: {path, revision}, lora, ...}
            v = self.mapping(value, path, ("model", "lora", "override_architecture"), "a model reference")
            if v.get("lora") is not None:
                raise self.err(path + ("lora",), "LoRA references are not supported", key=True)
            if v.get("override_architecture") is not None:
                raise self.err(path + ("override_architecture",), "'override_architecture' is not supported", key=True)
            inner = v.get("model")
            if isinstance(inner, Mapping):
                m = self.mapping(inner, path + ("model",), ("path", "revision"), "a model path")
                p = self.string(m.get("path"), path + ("model", "path"), optional=False)
                rev = self.string(m.get("revision"), path + ("model", "revision"))
                for ch in "@+":
                    if ch in p:  # type: ignore[operator]
                        raise self.err(path + ("model", "path"), f"{ch!r} in a model path is not supported")
                value = f"{p}@{rev}" if rev is not None else p
                path = path + ("model",)
            else:
                return self.model_ref(inner, path + ("model",))
        if not isinstance(value, str):
            raise self.err(path, f"a model reference must be a string, got {_type_name(value)}")
        if not value.strip():
            raise self.err(path, "empty model reference")
        if "+" in value:
            raise self.err(path, f"LoRA references are not supported ({value!r} uses mergekit's model+lora syntax)")
        if value.count("@") > 1:
            raise self.err(path, f"invalid model reference {value!r}: more than one '@'")
        if value.endswith("@") or value.startswith("@"):
            raise self.err(path, f"invalid model reference {value!r}: empty path or revision")
        return value

    def models(self, value: Any, path: tuple) -> tuple[ModelEntry, ...]:
        if not _is_seq(value):
            raise self.err(path, f"'models' must be a list, got {_type_name(value)}")
        out: list[ModelEntry] = []
        for i, item in enumerate(value):
            p = path + (i,)
            if not isinstance(item, Mapping):
                raise self.err(p, f"each model entry must be a mapping with a 'model' key, got {_type_name(item)}")
            m = self.mapping(item, p, ("model", "parameters"), "a model entry")
            if "model" not in m:
                raise self.err(p, "missing required key 'model'")
            ref = self.model_ref(m["model"], p + ("model",))
            if any(e.model == ref for e in out):
                raise self.err(p + ("model",), f"model {ref!r} is listed twice")
            out.append(ModelEntry(ref, self.params(m.get("parameters"), p + ("parameters",), per_model_scope=True)))  # type: ignore[arg-type]
        return tuple(out)

    def slices(self, value: Any, path: tuple) -> tuple[Slice, ...]:
        if not _is_seq(value):
            raise self.err(path, f"'slices' must be a list, got {_type_name(value)}")
        out: list[Slice] = []
        for i, item in enumerate(value):
            p = path + (i,)
            if isinstance(item, Mapping) and "residual_weight" in item:
                raise self.err(p + ("residual_weight",), "'residual_weight' is not supported (mergekit ignores it)", key=True)
            s = self.mapping(item, p, ("sources", "parameters", "base_model"), "a slice")
            srcs = s.get("sources")
            if not srcs:
                raise self.err(p, "a slice needs a non-empty 'sources' list")
            if not _is_seq(srcs):
                raise self.err(p + ("sources",), f"'sources' must be a list, got {_type_name(srcs)}")
            sources: list[SliceSource] = []
            for j, src in enumerate(srcs):
                q = p + ("sources", j)
                sm = self.mapping(src, q, ("model", "layer_range", "parameters"), "a slice source")
                for req in ("model", "layer_range"):
                    if req not in sm:
                        raise self.err(q, f"missing required key {req!r}")
                ref = self.model_ref(sm["model"], q + ("model",))
                if any(x.model == ref for x in sources):
                    raise self.err(q + ("model",), f"model {ref!r} appears twice in this slice's sources")
                lr = self.layer_range(sm["layer_range"], q + ("layer_range",))
                if sources and (lr[1] - lr[0]) != sources[0].num_layers:
                    raise self.err(
                        q + ("layer_range",),
                        f"spans {lr[1] - lr[0]} layers but the slice's first source spans {sources[0].num_layers};"
                        " all sources of a slice must span the same number of layers",
                    )
                sources.append(SliceSource(ref, lr, self.params(sm.get("parameters"), q + ("parameters",), per_model_scope=True)))  # type: ignore[arg-type]
            out.append(
                Slice(
                    tuple(sources),
                    self.params(s.get("parameters"), p + ("parameters",), per_model_scope=False),
                    self.model_ref(s.get("base_model"), p + ("base_model",), optional=True),
                )
            )
        return tuple(out)

    def layer_range(self, value: Any, path: tuple) -> tuple[int, int]:
        if not _is_seq(value) or len(value) != 2:
            raise self.err(path, "layer_range must be a list of two integers [start, end]")
        for k, v in enumerate(value):
            if not isinstance(v, int) or isinstance(v, bool):
                raise self.err(path + (k,), f"layer_range entries must be integers, got {_type_name(v)}")
        a, b = value
        if a < 0:
            raise self.err(path, f"start ({a}) must not be negative")
        if b <= a:
            raise self.err(path, f"end ({b}) must be greater than start ({a})")
        return (a, b)

    def dtype(self, value: Any, path: tuple) -> Optional[str]:
        v = self.string(value, path)
        if v is None:
            return None
        name = v[len("torch.") :] if v.startswith("torch.") else v
        if name not in DTYPES:
            close = difflib.get_close_matches(name, DTYPES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.err(path, f"unknown dtype {v!r}{hint} (known: {', '.join(DTYPES)})")
        return name

    def tokenizer(self, d: Mapping[str, Any], base: Optional[str]) -> Optional[str]:
        ts = d.get("tokenizer_source")
        tk = d.get("tokenizer")
        if ts is not None and tk is not None:
            raise self.err(("tokenizer",), "give either 'tokenizer_source' or 'tokenizer', not both", key=True)
        path: tuple = ("tokenizer_source",)
        if tk is not None:
            t = self.mapping(tk, ("tokenizer",), ("source", "tokens", "pad_to_multiple_of"), "'tokenizer'")
            for k in ("tokens", "pad_to_multiple_of"):
                if t.get(k) is not None:
                    raise self.err(("tokenizer", k), f"tokenizer '{k}' (token surgery) is not supported yet", key=True)
            if t.get("source") is None:
                raise self.err(("tokenizer",), "a tokenizer built as the union of the models' vocabularies (mergekit's default source) is not supported yet")
            ts, path = t["source"], ("tokenizer", "source")
        if ts is None:
            return None
        if ts == "union":
            raise self.err(path, "tokenizer source 'union' is not supported yet; use 'base' or a model reference")
        if ts == "base":
            if base is None:
                raise self.err(path, "tokenizer source 'base' needs a top-level 'base_model'")
            return "base"
        return self.model_ref(ts, path)

    # -- parameters --
    def params(self, value: Any, path: tuple, *, per_model_scope: bool) -> dict[str, Setting]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.err(path, f"'parameters' must be a mapping, got {_type_name(value)}")
        out: dict[str, Setting] = {}
        method = self.method
        names = [p.name for p in method.params]
        for k, v in value.items():
            p = path + (k,)
            if not isinstance(k, str):
                raise self.err(path, f"parameter name {k!r} is not a string")
            param = method.param(k)
            kind = param.kind if param is not None else IGNORABLE_PARAMS.get(k)
            if param is None and k not in IGNORABLE_PARAMS:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(names) or "none"
                raise self.err(p, f"unknown parameter {k!r} for merge method {method.name!r}{hint} (known: {known})", key=True)
            if per_model_scope and (param is None or not param.per_model):
                self.warn(p, f"{k!r} is a global parameter of {method.name!r}; set per model it has no effect (as in mergekit)")
            out[k] = self.setting(v, p, kind)
        return out

    def scalar(self, v: Any, path: tuple, kind: Optional[type]) -> Any:
        if not is_scalar(v):
            raise self.err(path, f"expected a scalar value, got {_type_name(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise self.err(path, f"{v!r} is not a finite number")
        try:
            coerce(v, kind)
        except ValueError as e:
            raise self.err(path, str(e)) from None
        return v

    def gradient(self, v: Sequence[Any], path: tuple, kind: Optional[type]) -> tuple:
        return tuple(self.scalar(e, path + (i,), kind) for i, e in enumerate(v))

    def setting(self, v: Any, path: tuple, kind: Optional[type]) -> Setting:
        if v is None:
            raise self.err(path, "a parameter value must not be null")
        if isinstance(v, (Mapping, Conditional)):
            return (self.conditional(v, path, kind),)
        if _is_seq(v):
            if all(is_scalar(e) for e in v):
                return self.gradient(v, path, kind)
            if all(isinstance(e, (Mapping, Conditional)) for e in v):
                return tuple(self.conditional(e, path + (i,), kind) for i, e in enumerate(v))
            raise self.err(path, "a list value must be all scalars (a gradient) or all {filter, value} mappings")
        return self.scalar(v, path, kind)

    def conditional(self, v: Any, path: tuple, kind: Optional[type]) -> Conditional:
        if isinstance(v, Conditional):
            v = v.to_data()
        c = self.mapping(v, path, ("filter", "value"), "a {filter, value} entry")
        if "value" not in c or c["value"] is None:
            raise self.err(path, "missing required key 'value'")
        f = self.string(c.get("filter"), path + ("filter",))
        val = c["value"]
        if _is_seq(val):
            value: Any = self.gradient(val, path + ("value",), kind)
        else:
            value = self.scalar(val, path + ("value",), kind)
        return Conditional(value=value, filter=f)

    # -- method-level structure --
    def check_method(self, r: Recipe) -> None:
        m = self.method
        if r.slices is not None:
            groups = [(i, ("slices", i)) for i in range(len(r.slices))]
        else:
            groups = [(None, ("models",))]
        for idx, gpath in groups:
            sl = r.slice(idx)
            base = r.base_for(idx)
            base_path: tuple = gpath + ("base_model",) if sl is not None and sl.base_model is not None else ("base_model",)
            inputs = [s.model for s in r.sources(idx)]
            uses_base = m.base != "ignored"
            if uses_base and base is not None and base not in inputs:
                raise self.err(base_path, f"base model {base!r} must be one of the slice's sources for merge method {m.name!r}")
            if m.base == "required" and base is None:
                raise self.err(("merge_method",), f"merge method {m.name!r} requires a 'base_model'")
            n = len(inputs)
            what = "slice" if sl is not None else "recipe"
            if n < m.min_models:
                raise self.err(gpath, f"merge method {m.name!r} needs at least {m.min_models} input models, this {what} has {n}")
            if m.max_models is not None and n > m.max_models:
                raise self.err(gpath, f"merge method {m.name!r} takes at most {m.max_models} input models, this {what} has {n}")
            slice_params = sl.parameters if sl is not None else {}
            for p in m.global_params:
                if p.required and p.name not in slice_params and p.name not in r.parameters:
                    raise self.err(gpath if sl is not None else ("merge_method",), f"missing required parameter {p.name!r} of {m.name!r}")
            entries = sl.sources if sl is not None else (r.models or ())
            for src in r.sources(idx):
                if uses_base and src.model == base:
                    continue
                own = [e.parameters for e in entries if e.model == src.model]
                for p in m.model_params:
                    if p.required and not any(p.name in s for s in (*own, slice_params, r.parameters)):
                        path = ("base_model",) if not own else _entry_path(r, idx, src.model)
                        raise self.err(path, f"missing required parameter {p.name!r} for model {src.model!r}")


def _entry_path(r: Recipe, idx: Optional[int], model: str) -> tuple:
    p = r.entry_path(idx, model)
    out: list[Union[str, int]] = []
    for part in p.replace("]", "").replace("[", ".").split("."):
        out.append(int(part) if part.isdigit() else part)
    return tuple(out)
