"""The interface every merge method implements.

A method is a pure function over the tensors of one weight (one per source model) plus a small frozen
spec of its parameters. No I/O, no global state: the engine resolves parameters (gradients, filters,
defaults) and hands the kernel plain floats/bools, one dict per source model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol, Sequence

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


class Memo(Protocol):
    """A store kept per output tensor between calls with the same input tensors and seed (the
    in-memory merger keeps one; see `tsugiki.merging.inmemory`). Kernels may put there what depends
    only on those inputs and the seed (task vectors, magnitude ranks, random uniforms), never on
    the per-call parameters, so a result never depends on what was remembered. A memo may decline
    to store (a memory budget): `room` tells beforehand, `put` says whether it kept the tensor.
    `scratch` lends a buffer for temporaries, reused by the next call (no fresh pages per call).
    `may_sort(n)` says whether to build now a statistic of n entries that costs more than the work
    it saves once (a sort): not on the first call for these inputs, and from then on as far as the
    caller's allowance for this call goes, so that no single call pays for all of them."""

    def may_sort(self, n: int) -> bool: ...

    def get(self, key: Hashable) -> torch.Tensor | None: ...

    def room(self, nbytes: int) -> bool: ...

    def put(self, key: Hashable, value: torch.Tensor) -> bool: ...

    def scratch(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...


def remember(memo: Memo | None, key: Hashable, nbytes: int, make: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
    """memo[key]; else make(), stored, when the memo has room for its ``nbytes``; else None (the
    caller then takes its ordinary path: nothing is computed that would not be kept). make() may
    return None (nothing to remember for these inputs)."""
    if memo is None:
        return None
    value = memo.get(key)
    if value is None and memo.room(nbytes):
        value = make()
        if value is not None:
            memo.put(key, value)
    return value


@dataclass(frozen=True)
class MergeInputs:
    """What a kernel sees for one output tensor.

    tensors: one per source model, in recipe order (the base model included where it is a source).
    base_index: index of the base model in `tensors`, or None.
    params: per-model parameter dicts aligned with `tensors` (the base's dict is empty).
    generator: seeded RNG for randomized methods (DARE, DELLA), None otherwise.
    name: the output tensor's name, for error messages.
    memo: what the caller remembers for these inputs between calls (see `Memo`), or None.
    out: where the kernel may write its result, or None: a contiguous tensor of the base's (or the
        first input's) shape and dtype that aliases no input. Kernels that can compute in place
        return it; the others ignore it, and the caller copies what they return.
    """

    tensors: Sequence[torch.Tensor]
    base_index: int | None
    params: Sequence[dict[str, Any]]
    generator: torch.Generator | None = None
    name: str = ""
    memo: Memo | None = None
    out: torch.Tensor | None = None

    def out_like(self, t: torch.Tensor) -> torch.Tensor | None:
        """`out` where it fits the shape and dtype of ``t``, else None."""
        o = self.out
        return o if o is not None and o.shape == t.shape and o.dtype == t.dtype and o.device == t.device else None

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
    non_base: tuple[int, int | None] = (0, None)  # models besides the base, where the base is a source
    randomized: bool = False
    reference: str = ""  # paper the definition follows
    aliases: tuple[str, ...] = field(default=())

    @property
    def global_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.per_model)

    @property
    def model_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.per_model)

    def non_base_error(self, n: int) -> str | None:
        """Why ``n`` models besides the base are too few or too many for this method, or None."""
        lo, hi = self.non_base
        if lo <= n and (hi is None or n <= hi):
            return None
        want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        return f"merge method {self.name!r} takes {want} models besides the base, got {n}"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def __call__(self, inputs: MergeInputs, **global_params: Any) -> torch.Tensor:
        return self.kernel(inputs, **global_params)
