"""The pieces the typed evolve config is made of (:mod:`tsugiki.evolution.config` and the space kinds in
:mod:`tsugiki.evolution.kinds`): a strict section base class, value types with the messages users see,
bounds, and the translation of a pydantic error into one ``FILE:LINE: dotted.path: message`` line.

A section refuses unknown keys with a did-you-mean; paths in it are resolved against the config file's
folder (pydantic's validation context carries it). Numbers are as YAML wrote them: ``true`` is not a
number, ``"1"`` is not an integer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from tsugiki.errors import EvolutionError
from tsugiki.registry import did_you_mean
from tsugiki.yaml_lines import dotted_path, nearest_line


class Section(BaseModel):
    """A config mapping: unknown keys refused (with a did-you-mean), values typed, immutable.
    :meth:`to_data` gives the keys the user wrote (normalised), which is what the run dir keeps."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, v: Any, info: ValidationInfo) -> Any:
        v = cls._coerce(v)
        if isinstance(v, cls):
            return v
        if not isinstance(v, Mapping):
            raise PydanticCustomError("mapping", "{msg}", {"msg": f"expected a mapping, got {type(v).__name__}"})
        allowed = list(cls.model_fields)
        for k in v:
            if k not in allowed:
                raise at(k, f"unknown key {k!r}{did_you_mean(k, allowed)} (allowed: {', '.join(allowed)})")
        return cls._check(dict(v), info)

    @classmethod
    def _coerce(cls, v: Any) -> Any:
        """Another form of the section, before it is checked as a mapping (``[low, high]`` bounds)."""
        return v

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        """Rules across keys, and derived keys, once the keys are known (before the values are typed)."""
        return d

    def to_data(self) -> dict[str, Any]:
        """The keys written, normalised (paths absolute, bounds as mappings), as plain data."""
        return {k: _data(getattr(self, k)) for k in type(self).model_fields if k in self.model_fields_set}


def _data(v: Any) -> Any:
    if isinstance(v, Section):
        return v.to_data()
    if isinstance(v, Mapping):
        return {k: _data(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_data(x) for x in v]
    return v


# ---- value types: each a plain validator with the message the user sees ---------------------------
def integer(minimum: Optional[int] = None):
    """An integer (not a bool) of at least ``minimum``; wrap in ``Optional[...]`` to allow null."""
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"must be >= {minimum}, got {v!r}")
        return v

    return PlainValidator(check)


def number_value(v: Any, minimum: Optional[float] = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"must be >= {minimum}, got {v!r}")
    return float(v)


def _mapping(v: Any) -> dict:
    if not isinstance(v, Mapping):
        raise ValueError(f"expected a mapping, got {type(v).__name__}")
    return dict(v)


def resolve_path(v: Any, info: ValidationInfo) -> str:
    """A path relative to the config file's folder made absolute; a hub id (``org/name``, not a local
    path) stays as written."""
    if not isinstance(v, str) or not v:
        raise ValueError("expected a path")
    base = Path((info.context or {}).get("base", "."))
    p = Path(v).expanduser()
    if not p.is_absolute() and not (base / p).exists() and v.count("/") == 1 and not v.startswith("."):
        return v
    return str(p if p.is_absolute() else (base / p).resolve())


def _names(v: Any) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a non-empty list of model names")
    return list(v)


def one_of(*choices: str):
    def check(v: Any) -> str:
        if v not in choices:
            listed = " or ".join(repr(c) for c in choices) if len(choices) == 2 else "one of " + ", ".join(choices)
            raise ValueError(f"expected {listed}, got {v!r}{did_you_mean(v, choices)}")
        return v

    return PlainValidator(check)


Count = Annotated[int, integer(1)]  # at least one
NonNegative = Annotated[int, integer(0)]
Number = Annotated[float, PlainValidator(number_value)]
NonNegativeNumber = Annotated[float, PlainValidator(lambda v: number_value(v, 0))]
Mapping_ = Annotated[dict, PlainValidator(_mapping)]
PathStr = Annotated[str, PlainValidator(resolve_path)]
Names = Annotated[list, PlainValidator(_names)]
Transform = Annotated[Literal["sigmoid", "clip"], one_of("sigmoid", "clip")]


class Bounds(Section):
    """``[low, high]`` or ``{bounds: [low, high], init, transform}`` of one searched number."""

    bounds: tuple[float, float]
    init: Optional[float] = None
    transform: Optional[Transform] = None

    @classmethod
    def _coerce(cls, v: Any) -> Any:
        return {"bounds": v} if isinstance(v, list) else v

    @classmethod
    def _check(cls, d: dict, info: ValidationInfo) -> dict:
        b = d.get("bounds")
        if not isinstance(b, (list, tuple)) or len(b) != 2:
            raise at("bounds", "expected [low, high]")
        lo, hi = (_number_at(("bounds", i), x) for i, x in enumerate(b))
        if not lo < hi:
            raise at("bounds", f"low {lo} must be below high {hi}")
        d["bounds"] = (lo, hi)
        if d.get("init") is not None:
            init = _number_at(("init",), d["init"])
            if not lo <= init <= hi:
                raise at("init", f"{init} is outside [{lo}, {hi}]")
            d["init"] = init
        else:
            d.pop("init", None)
        return d

    def to_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bounds": list(self.bounds)}
        if self.init is not None:
            out["init"] = self.init
        if "transform" in self.model_fields_set:
            out["transform"] = self.transform
        return out


def _number_at(loc: tuple, v: Any) -> float:
    try:
        return number_value(v)
    except ValueError as e:
        raise at(loc, str(e)) from None


def at(loc: Any, msg: str) -> PydanticCustomError:
    """An error about a key below the value being validated (``loc``: a key or a tuple of keys)."""
    return PydanticCustomError("nested", "{msg}", {"msg": msg, "loc": loc if isinstance(loc, tuple) else (loc,)})


# ---- errors ------------------------------------------------------------------------------------------
_MESSAGES = {  # pydantic's own checks, in this module's words
    "dict_type": lambda v: f"expected a mapping, got {type(v).__name__}",
    "list_type": lambda v: f"expected a list, got {type(v).__name__}",
    "string_type": lambda v: f"expected a string, got {v!r}",
    "bool_type": lambda v: f"expected true or false, got {v!r}",
    "bool_parsing": lambda v: f"expected true or false, got {v!r}",
    "float_type": lambda v: f"expected a number, got {v!r}",
    "float_parsing": lambda v: f"expected a number, got {v!r}",
    "int_type": lambda v: f"expected an integer, got {v!r}",
    "int_parsing": lambda v: f"expected an integer, got {v!r}",
    "tuple_type": lambda v: f"expected a list, got {type(v).__name__}",
}


def where(name: str, lines: Mapping[str, int], path: str) -> str:
    """``"FILE:LINE: path: "`` for a dotted path, the line of its nearest written ancestor."""
    line = nearest_line(lines, path)
    return f"{name}{'' if line is None else f':{line}'}: {path + ': ' if path else ''}"


def config_error(e: ValidationError, name: str, lines: Mapping[str, int]) -> EvolutionError:
    """The first error of a validation as one line, ``FILE:LINE: dotted.path: message``."""
    err = e.errors(include_url=False)[0]
    loc = [x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x.startswith("function-")))]
    ctx = err.get("ctx") or {}
    if err["type"] == "nested":
        loc.extend(ctx["loc"])
    msg = ctx.get("msg") or _MESSAGES.get(err["type"], lambda v: err["msg"])(err.get("input"))
    if err["type"] == "missing":
        msg, loc = f"missing required key {loc[-1]!r}", loc[:-1]
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return EvolutionError(where(name, lines, dotted_path(loc)) + msg)
