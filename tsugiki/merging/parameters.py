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

How the planner calls :func:`tsugiki.merging.recipe.resolve_params`, per output tensor::

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
    from tsugiki.merging.methods.base import Param

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
