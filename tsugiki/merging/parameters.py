"""Parameter settings and their resolution, with mergekit 0.1.5 semantics.

A *setting* is what a recipe writes for one parameter name in one scope:

- a scalar (bool, int, float or str): the value everywhere;
- a gradient, a tuple of scalars: numeric endpoints are interpolated over ``t`` (the position of the
  layer in its slice, 0..1); bools and strings select the entry at index ``int(t * (n - 1))``;
- a tuple of :class:`Conditional` (``{filter, value}`` in YAML): the first one whose filter matches
  the tensor name wins (substring match; a missing/None/"*" filter matches every tensor); its value is
  a scalar or a gradient.

A setting can resolve to ``None`` (an empty gradient, or no conditional matching); resolution then
falls through to the next scope, exactly as mergekit does.

Scopes, highest precedence first, when resolving a parameter for one (model, tensor):

1. the parameters of that model's entry (``models:`` entry, or the slice source(s) naming the model);
2. the ``parameters`` of the output slice (slices form only);
3. the top-level ``parameters``;
4. the method's default (``Param.default``); a required parameter without a value is a RecipeError.

Global (per-tensor, ``per_model=False``) parameters use scopes 2-4 only. Per-model parameters are not
resolved for the base model when the method uses a base (``method.base != "ignored"``): its dict is
empty. For methods that ignore the base, the base model is an ordinary input.

How the planner calls this, per output tensor::

    t = layer_t(offset_in_slice, slice_num_layers)   # layers; use t=0 for embeddings/lm_head etc.
    global_params, per_model = resolve_params(method, recipe, slice_index, tensor_name, t)
    # per_model[i] belongs to recipe.sources(slice_index)[i] (or to models[i] when given)

mergekit resolves non-layer tensors with t=0: those before the layers with slice 0, those after the
layers with the last slice (``slice_index=-1``). In the ``models:`` form use ``slice_index=None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from tsugiki.errors import RecipeError

if TYPE_CHECKING:  # pragma: no cover
    from tsugiki.merging.methods.base import MergeMethod, Param
    from tsugiki.merging.recipe import Recipe

Scalar = Union[bool, int, float, str]
Gradient = tuple  # tuple[Scalar, ...]


@dataclass(frozen=True)
class Conditional:
    """One ``{filter: ..., value: ...}`` entry. ``value`` is a scalar or a gradient (tuple)."""

    value: Any
    filter: Optional[str] = None

    def matches(self, tensor_name: str) -> bool:
        f = self.filter
        return f is None or f == "*" or (bool(tensor_name) and f in tensor_name)

    def to_data(self) -> dict:
        d: dict[str, Any] = {}
        if self.filter is not None:
            d["filter"] = self.filter
        d["value"] = list(self.value) if isinstance(self.value, tuple) else self.value
        return d


Setting = Union[Scalar, tuple]  # scalar | tuple of scalars (gradient) | tuple of Conditional


def is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@lru_cache(maxsize=None)
def _adapter(kind: type):
    from pydantic import TypeAdapter

    return TypeAdapter(kind)


def coerce(value: Any, kind: Optional[type]) -> Any:
    """Validate one scalar to a Param kind (pydantic lax rules, as mergekit: "1e-3" -> 0.001 for a
    float, "yes"/1 -> True for a bool, 2.0 -> 2 for an int). Raises ValueError with a short message.
    Non-finite floats are refused."""
    if kind is None:
        return value
    from pydantic import ValidationError

    try:
        out = _adapter(kind).validate_python(value)
    except ValidationError:
        raise ValueError(f"{value!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def layer_t(index: int, num_layers: int) -> float:
    """mergekit's t for the layer at ``index`` (0-based) within a slice of ``num_layers`` layers."""
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def _gradient(values: Sequence[Any], t: float, kind: Optional[type]) -> Any:
    if not values:
        return None
    vals = [coerce(v, kind) for v in values]
    n = len(vals)
    if not all(_is_number(v) for v in vals):
        return vals[int(t * (n - 1))]
    scaled = t * (n - 1)
    i0 = int(scaled)
    i1 = min(n - 1, i0 + 1)
    frac = scaled - i0
    return coerce((1 - frac) * vals[i0] + frac * vals[i1], kind)


def resolve_value(setting: Any, tensor_name: str, t: float, *, kind: Optional[type] = None) -> Any:
    """Evaluate one setting for one tensor at position ``t`` in [0, 1]; ``None`` if it yields nothing.

    ``kind`` (a Param's kind) validates the scalars before interpolation and the result after it, as
    mergekit does; without it values are used as they are. Raises ValueError for a value not valid
    for ``kind`` (resolve_params turns that into a RecipeError naming parameter, model and tensor).
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be within [0, 1], got {t!r}")
    if isinstance(setting, Conditional):
        setting = (setting,)
    if is_scalar(setting):
        return coerce(setting, kind)
    if isinstance(setting, (tuple, list)):
        if all(is_scalar(e) for e in setting):
            return _gradient(setting, t, kind)
        for cond in setting:
            if isinstance(cond, Mapping):
                cond = Conditional(value=cond.get("value"), filter=cond.get("filter"))
            if not isinstance(cond, Conditional):
                raise ValueError(f"unexpected parameter setting {setting!r}")
            if cond.matches(tensor_name):
                value = cond.value
                if isinstance(value, (tuple, list)):
                    return _gradient(value, t, kind)
                return coerce(value, kind)
        return None
    raise ValueError(f"unexpected parameter setting {setting!r}")


def resolve_param(
    param: "Param",
    scopes: Sequence[Optional[Mapping[str, Any]]],
    tensor_name: str,
    t: float,
    *,
    model: Optional[str] = None,
    where: str = "",
) -> Any:
    """Resolve one Param through ``scopes`` (highest precedence first), then its default."""
    for scope in scopes:
        if scope and param.name in scope:
            try:
                value = resolve_value(scope[param.name], tensor_name, t, kind=param.kind)
            except ValueError as e:
                at = f"model {model!r}, " if model is not None else ""
                raise RecipeError(f"{where}parameter {param.name!r} ({at}tensor {tensor_name!r}): {e}") from None
            if value is not None:
                return value
    if param.required:
        at = f"model {model!r}, " if model is not None else ""
        raise RecipeError(f"{where}missing required parameter {param.name!r} for {at}tensor {tensor_name!r}")
    return param.default


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
