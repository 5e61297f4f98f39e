"""The parts of a recipe the validator and the :class:`~tsugiki.merging.recipe.Recipe` both use: the
accepted keys and dtypes, the entries of ``models:`` and ``slices:``, and the warning for accepted
constructs that have no effect. (Kept apart so that :mod:`tsugiki.merging.recipe_check` and
:mod:`tsugiki.merging.recipe` do not import each other.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from tsugiki.merging.parameters import Setting
from tsugiki.registry import Registry

DTYPES = ("bfloat16", "float16", "float32", "float64", "int64")
#: the floating dtypes a model is written or run in (the CLI's ``--dtype`` choices)
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
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
