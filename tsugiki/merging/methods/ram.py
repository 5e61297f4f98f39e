"""RAM, Reinforced Agent Merging, and RAM+ in its tensor-local form (arXiv:2601.13572; mergekit
0.1.5's ``ram`` and ``ramplus_tl``): a task-vector merge that keeps what only one model changed and
averages what several changed, instead of diluting unique changes by the number of models.

With base b and the task vectors d_i = x_i - b of the n other models, element by element:

    active_i = |d_i| > epsilon,   c = sum_i active_i              how many models changed it
    ram:        out = b + sum_i active_i d_i · (1 if c == 1 else 1 / c)
    ramplus_tl: the unique part of model i is scaled by λ_i = 1 + r · clamp(ρ_i, 0, alpha), where
                ρ_i = (#elements model i shares with another) / max(#elements only model i changed, epsilon),
                counted over this tensor (hence "tensor-local").

Elements no model changed by more than epsilon keep the base's value. Without other models: the base.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.methods._common import fill_globals, require_base
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

EPSILON = Param("epsilon", 1e-5, doc="a task-vector element counts as changed above this magnitude")
RAM_PARAMS = (EPSILON,)
PLUS_PARAMS = (
    Param("r", 0.1, doc="how much a model's unique changes are boosted per unit of overlap ratio"),
    Param("alpha", 0.2, doc="cap on the overlap ratio"),
    EPSILON,
)


def _ram(method: str, inputs: MergeInputs, g: dict[str, Any], plus: bool) -> torch.Tensor:
    base = require_base(method, inputs)
    for key, value in g.items():
        if not math.isfinite(float(value)):
            raise MergeError(f"{inputs.name}: {method} {key} must be finite, got {value}")
    others = [t for i, t in enumerate(inputs.tensors) if i != inputs.base_index]
    if not others:
        return base.clone()
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(work)
    d = torch.stack([t.to(work) - b for t in others]).reshape(len(others), -1)
    active = d.abs() > float(g["epsilon"])
    count = active.sum(dim=0, keepdim=True)
    unique, shared = count == 1, count > 1
    d = d * active
    unique_part = d * unique
    if plus:
        n_shared = (active & shared).sum(dim=1)
        n_unique = (active & unique).sum(dim=1)
        rho = n_shared / n_unique.clamp(min=float(g["epsilon"]))
        lam = 1 + float(g["r"]) * rho.clamp(min=0, max=float(g["alpha"]))
        unique_part = unique_part * lam.to(work).unsqueeze(-1)
    merged = (unique_part + d * shared / count.clamp(min=1)).sum(dim=0)
    return (b + merged.reshape(b.shape)).to(base.dtype)


def ram(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    return _ram("ram", inputs, fill_globals("ram", RAM_PARAMS, given, inputs.name), plus=False)


def ramplus_tl(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    return _ram("ramplus_tl", inputs, fill_globals("ramplus_tl", PLUS_PARAMS, given, inputs.name), plus=True)


REFERENCE = "Reinforced Agent Merging, arXiv:2601.13572; mergekit 0.1.5 "
RAM = MergeMethod(name="ram", kernel=ram, params=RAM_PARAMS, base="required", min_models=1,
                  reference=REFERENCE + "ram")
RAMPLUS_TL = MergeMethod(name="ramplus_tl", kernel=ramplus_tl, params=PLUS_PARAMS, base="required", min_models=1,
                         reference=REFERENCE + "ramplus_tl")
