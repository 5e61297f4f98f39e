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
from tsugiki.merging.methods._common import fill_globals, require_base, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

EPSILON = Param("epsilon", 1e-5, doc="a task-vector element counts as changed above this magnitude")
RAM_PARAMS = (EPSILON,)
PLUS_PARAMS = (
    Param("r", 0.1, doc="how much a model's unique changes are boosted per unit of overlap ratio"),
    Param("alpha", 0.2, doc="cap on the overlap ratio"),
    EPSILON,
)


def _changes(xs: list[torch.Tensor], b: torch.Tensor, blk: slice, eps: float):
    """The block's task vectors, which of their entries changed (> eps), and how many models changed each."""
    d = [x[blk] - b[blk] for x in xs]
    active = [t.abs() > eps for t in d]
    count = torch.zeros(d[0].shape, dtype=torch.int32, device=b.device)
    for a in active:
        count += a
    return d, active, count


def _ram(method: str, inputs: MergeInputs, g: dict[str, Any], plus: bool) -> torch.Tensor:
    """Block by block (`spans`), so that the temporaries are a few blocks per model; ramplus_tl
    counts each model's shared and own changes over the whole tensor in a first pass."""
    base = require_base(method, inputs)
    for key, value in g.items():
        if not math.isfinite(float(value)):
            raise MergeError(f"{inputs.name}: {method} {key} must be finite, got {value}")
    others = [t for i, t in enumerate(inputs.tensors) if i != inputs.base_index]
    if not others:
        return base.clone()
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    eps = float(g["epsilon"])
    b = base.to(work).reshape(-1)
    xs = [t.to(work).reshape(-1) for t in others]
    n = b.numel()
    blocks = spans(n)
    lam = None
    if plus:
        n_shared, n_unique = [0] * len(xs), [0] * len(xs)
        for blk in blocks:
            _, active, count = _changes(xs, b, blk, eps)
            for i, a in enumerate(active):
                n_shared[i] += int((a & (count > 1)).sum())
                n_unique[i] += int((a & (count == 1)).sum())
        rho = torch.tensor(n_shared) / torch.tensor(n_unique).clamp(min=eps)  # float32, as mergekit's counts divide
        lam = 1 + float(g["r"]) * rho.clamp(min=0, max=float(g["alpha"]))
    out = torch.empty(n, dtype=work, device=b.device)
    for blk in blocks:
        d, active, count = _changes(xs, b, blk, eps)
        unique, shared, per = count == 1, count > 1, count.clamp(min=1)
        acc = torch.zeros_like(d[0])
        for i, (t, a) in enumerate(zip(d, active)):
            z = t * a
            own = z * unique if lam is None else z * unique * lam[i].to(work)
            acc += own + z * shared / per
        torch.add(b[blk], acc, out=out[blk])
    return out.reshape(base.shape).to(base.dtype)


def ram(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    return _ram("ram", inputs, fill_globals("ram", RAM_PARAMS, given, inputs.name), plus=False)


def ramplus_tl(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    return _ram("ramplus_tl", inputs, fill_globals("ramplus_tl", PLUS_PARAMS, given, inputs.name), plus=True)


REFERENCE = "Reinforced Agent Merging, arXiv:2601.13572; mergekit 0.1.5 "
RAM = MergeMethod(name="ram", kernel=ram, params=RAM_PARAMS, base="required", min_models=1,
                  reference=REFERENCE + "ram")
RAMPLUS_TL = MergeMethod(name="ramplus_tl", kernel=ramplus_tl, params=PLUS_PARAMS, base="required", min_models=1,
                         reference=REFERENCE + "ramplus_tl")
