"""Recipe validation: plain data (as :mod:`tsugiki.yaml_lines` gives) -> a :class:`Recipe`.

Internals of :mod:`tsugiki.merging.recipe`, whose module docstring documents the schema enforced
here. :class:`RecipeChecker` looks the merge method up, checks every key, model reference, layer range,
dtype, tokenizer source and parameter setting, and then the method-level structure (base model,
input counts, required parameters). Every error is a RecipeError prefixed with ``FILE:LINE: `` and
the dotted path at fault; accepted-but-ineffective constructs warn with :class:`RecipeWarning`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union

from tsugiki.errors import RecipeError, UnknownNameError
from tsugiki.merging.parameters import Conditional, Setting, coerce, is_scalar
from tsugiki.merging.recipe_schema import (
    DTYPES,
    IGNORABLE_PARAMS,
    TOP_LEVEL_KEYS,
    MethodLookup,
    ModelEntry,
    RecipeWarning,
    Slice,
    SliceSource,
)
from tsugiki.merging.recipe_tokenizer import check_tokenizer
from tsugiki.merging.refs import check_model_ref, type_name
from tsugiki.registry import Registry, did_you_mean
from tsugiki.yaml_lines import dotted_path, nearest_line

# the Recipe class (tsugiki.merging.recipe) is handed to the checker, which does not import it
RecipeT = TypeVar("RecipeT")


def _lookup_method(methods: MethodLookup, name: str) -> Any:
    if methods is None:
        from tsugiki.merging.methods import get_method  # written elsewhere; imported lazily

        return get_method(name)
    if isinstance(methods, Registry):
        return methods.get(name)
    if isinstance(methods, Mapping):
        if name in methods:
            return methods[name]
        hint = did_you_mean(name, methods)
        raise UnknownNameError(f"unknown merge method {name!r}{hint} (known: {', '.join(sorted(map(str, methods)))})")
    return methods(name)


def _is_seq(v: Any) -> bool:
    return isinstance(v, (list, tuple))


class RecipeChecker:
    def __init__(self, name: str, lines: dict[str, int], key_lines: dict[str, int], methods: MethodLookup):
        self.name = name
        self.lines = lines
        self.key_lines = key_lines
        self.methods = methods
        self.method: Any = None

    # -- errors --
    def where(self, path: tuple, *, key: bool = False) -> str:
        p = dotted_path(path)
        if key and p in self.key_lines:
            return f"{self.name}:{self.key_lines[p]}"
        line = nearest_line(self.lines, p)
        return self.name if line is None else f"{self.name}:{line}"

    def err(self, path: tuple, msg: str, *, key: bool = False) -> RecipeError:
        at = dotted_path(path)
        return RecipeError(f"{self.where(path, key=key)}: {at + ': ' if at else ''}{msg}")

    def warn(self, path: tuple, msg: str) -> None:
        at = dotted_path(path)
        warnings.warn(f"{self.where(path, key=True)}: {at + ': ' if at else ''}{msg}", RecipeWarning, stacklevel=4)

    def mapping(self, value: Any, path: tuple, allowed: Sequence[str], what: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.err(path, f"{what} must be a mapping, got {type_name(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.err(path, f"key {k!r} is not a string")
            if k not in allowed:
                hint = did_you_mean(k, allowed)
                raise self.err(
                    path + (k,), f"unknown key {k!r} in {what}{hint} (allowed: {', '.join(allowed)})", key=True
                )
        return value

    def string(self, value: Any, path: tuple, *, optional: bool = True) -> Optional[str]:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.err(path, f"expected a string, got {type_name(value)}")
        return value

    # -- recipe --
    def recipe(self, data: Any, cls: type[RecipeT]) -> RecipeT:
        """Validate ``data`` into a ``cls`` (:class:`~tsugiki.merging.recipe.Recipe`, passed in so that the
        two modules do not import each other)."""
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
        refs = [base, *(m.model for m in models or ())]
        refs += [x for sl in slices or () for x in (sl.base_model, *(src.model for src in sl.sources))]
        tok, tok_spec = check_tokenizer(self, d, base, [r for r in refs if r is not None])
        chat_template = self.string(d.get("chat_template"), ("chat_template",))
        name = self.string(d.get("name"), ("name",))
        seed = d.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise self.err(("seed",), f"seed must be an integer, got {type_name(seed)}")
            if not 0 <= seed < 2**64:
                raise self.err(("seed",), "seed must be within [0, 2**64)")

        recipe = cls(
            merge_method=method_name,  # type: ignore[arg-type]
            models=models,
            slices=slices,
            base_model=base,
            parameters=params,
            dtype=dtype,
            out_dtype=out_dtype,
            tokenizer_source=tok,
            tokenizer=tok_spec,
            chat_template=chat_template,
            name=name,
            seed=seed,
            source_name=self.name,
            lines=dict(self.lines),
        )
        self.check_method(recipe)
        return recipe

    def model_ref(self, value: Any, path: tuple, *, optional: bool = False) -> Optional[str]:
        return check_model_ref(self, value, path, optional=optional)

    def models(self, value: Any, path: tuple) -> tuple[ModelEntry, ...]:
        if not _is_seq(value):
            raise self.err(path, f"'models' must be a list, got {type_name(value)}")
        out: list[ModelEntry] = []
        for i, item in enumerate(value):
            p = path + (i,)
            if not isinstance(item, Mapping):
                raise self.err(p, f"each model entry must be a mapping with a 'model' key, got {type_name(item)}")
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
            raise self.err(path, f"'slices' must be a list, got {type_name(value)}")
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
                raise self.err(p + ("sources",), f"'sources' must be a list, got {type_name(srcs)}")
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
                raise self.err(path + (k,), f"layer_range entries must be integers, got {type_name(v)}")
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
            hint = did_you_mean(name, DTYPES)
            raise self.err(path, f"unknown dtype {v!r}{hint} (known: {', '.join(DTYPES)})")
        return name

    # -- parameters --
    def params(self, value: Any, path: tuple, *, per_model_scope: bool) -> dict[str, Setting]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.err(path, f"'parameters' must be a mapping, got {type_name(value)}")
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
                hint = did_you_mean(k, names)
                known = ", ".join(names) or "none"
                raise self.err(p, f"unknown parameter {k!r} for merge method {method.name!r}{hint} (known: {known})", key=True)
            if per_model_scope and (param is None or not param.per_model):
                self.warn(p, f"{k!r} is a global parameter of {method.name!r}; set per model it has no effect (as in mergekit)")
            out[k] = self.setting(v, p, kind)
        return out

    def scalar(self, v: Any, path: tuple, kind: Optional[type]) -> Any:
        if not is_scalar(v):
            raise self.err(path, f"expected a scalar value, got {type_name(v)}")
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
    def check_method(self, r: Any) -> None:  # r: a Recipe
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
            problem = m.non_base_error(n - (uses_base and base in inputs))
            if problem:
                raise self.err(gpath, f"{problem} in this {what}")
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


def _entry_path(r: Any, idx: Optional[int], model: str) -> tuple:
    p = r.entry_path(idx, model)
    out: list[Union[str, int]] = []
    for part in p.replace("]", "").replace("[", ".").split("."):
        out.append(int(part) if part.isdigit() else part)
    return tuple(out)
