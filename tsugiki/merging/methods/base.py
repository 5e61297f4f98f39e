"""The interface every merge method implements.

A method is a pure function over the tensors of one weight (one per source model) plus a small frozen
spec of its parameters. No I/O, no global state: the engine resolves parameters (gradients, filters,
defaults) and hands the kernel plain floats/bools, one dict per source model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


@dataclass(frozen=True)
class Param:
    """One parameter. per_model=True: resolved for each non-base source (weight, density, ...);
    per_model=False: resolved once per tensor (normalize, t, lambda, ...)."""

    name: str
    default: Any = REQUIRED
    per_model: bool = False
    kind: type = float
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class MergeInputs:
    """What a kernel sees for one output tensor.

    tensors: one per source model, in recipe order (the base model included where it is a source).
    base_index: index of the base model in `tensors`, or None.
    params: per-model parameter dicts aligned with `tensors` (the base's dict is empty).
    generator: seeded RNG for randomized methods (DARE, DELLA), None otherwise.
    name: the output tensor's name, for error messages.
    """

    tensors: Sequence[torch.Tensor]
    base_index: int | None
    params: Sequence[dict[str, Any]]
    generator: torch.Generator | None = None
    name: str = ""

    @property
    def base(self) -> torch.Tensor:
        assert self.base_index is not None
        return self.tensors[self.base_index]

    def non_base(self) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        return [(t, p) for i, (t, p) in enumerate(zip(self.tensors, self.params)) if i != self.base_index]


Kernel = Callable[..., torch.Tensor]  # kernel(inputs: MergeInputs, **global_params) -> Tensor


@dataclass(frozen=True)
class MergeMethod:
    name: str
    kernel: Kernel
    params: tuple[Param, ...] = ()
    base: str = "ignored"  # "required" | "optional" | "ignored"
    min_models: int = 1  # counting the base where it is a source
    max_models: int | None = None
    randomized: bool = False
    reference: str = ""  # paper the definition follows
    aliases: tuple[str, ...] = field(default=())

    @property
    def global_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.per_model)

    @property
    def model_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.per_model)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def __call__(self, inputs: MergeInputs, **global_params: Any) -> torch.Tensor:
        return self.kernel(inputs, **global_params)
