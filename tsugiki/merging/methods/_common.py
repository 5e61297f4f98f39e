"""Small helpers shared by the kernels (argument checking and parameter defaults)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.methods.base import REQUIRED, MergeInputs, Param


BLOCK = 1 << 18  # entries per block of the kernels that go block by block (a few 1 MB temporaries per model)


def spans(n: int) -> list[slice]:
    """Slices of BLOCK entries covering range(n)."""
    return [slice(i, min(i + BLOCK, n)) for i in range(0, n, BLOCK)]


def fill_globals(method: str, specs: tuple[Param, ...], given: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The global parameters with defaults filled in; unknown or missing ones are MergeErrors."""
    known = {p.name: p for p in specs if not p.per_model}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise MergeError(f"{name}: unknown parameter(s) for {method}: {', '.join(unknown)}")
    out = {}
    for key, spec in known.items():
        value = given.get(key, spec.default)
        if value is REQUIRED:
            raise MergeError(f"{name}: {method} needs parameter {key!r}")
        out[key] = value
    return out


def model_param(method: str, params: Mapping[str, Any], spec: Param, name: str, source: int) -> Any:
    """One per-model parameter of source ``source``, with its default filled in."""
    value = params.get(spec.name, spec.default)
    if value is REQUIRED:
        raise MergeError(f"{name}: {method} needs {spec.name!r} for source #{source}")
    return value


def require_base(method: str, inputs: MergeInputs) -> torch.Tensor:
    if inputs.base_index is None:
        raise MergeError(f"{inputs.name}: {method} needs a base model")
    return inputs.base


def require_generator(method: str, inputs: MergeInputs) -> torch.Generator:
    if inputs.generator is None:
        raise MergeError(f"{inputs.name}: {method} is randomized and needs a seeded generator")
    return inputs.generator


def check_count(method: str, inputs: MergeInputs, lo: int, hi: int | None) -> None:
    n = len(inputs.tensors)
    if n < lo or (hi is not None and n > hi):
        want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        raise MergeError(f"{inputs.name}: {method} needs {want} models (base included), got {n}")
