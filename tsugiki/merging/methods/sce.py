"""SCE, select–calculate–erase (Wan et al. 2024, "FuseChat: Knowledge Fusion of Chat Models",
arXiv:2408.07990, §3.3; mergekit 0.1.5's ``sce``): a task-vector merge whose per-model weights come from
the task vectors themselves.

With base b and task vectors d_i = x_i - b of the n other models:

1. select: if ``select_topk`` < 1, keep only the elements where the task vectors vary most across models:
   the k = int(nonzero(var) x select_topk) largest of var_i(d_i) (population variance), in every d_i;
2. calculate: w_i = mean(d_i^2) / sum_j mean(d_j^2) (uniform 1/n when that sum is below 1e-6);
3. erase: keep d_i's element only where its sign is the majority sign (sign of sum_i d_i, ties +), as TIES;

    out = b + sum_i w_i m_i d_i / max(sum_i w_i m_i, 1e-6)

with m_i the erase mask. ``int8_mask`` only sets the masks' storage type in mergekit; it is accepted and
changes nothing. Without other models the result is the base.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.methods._common import fill_globals, require_base
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

FLOOR = 1e-6
PARAMS = (
    Param("select_topk", 1.0, doc="fraction of elements kept by cross-model variance (1: all)"),
    Param("int8_mask", False, kind=bool, doc="accepted for mergekit recipes; no effect on the result"),
)


def variance_mask(deltas: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 where the elements' variance across models is among the k largest, k = int(nonzero x fraction)
    (the product taken as torch takes it: a count tensor times a float, in float32), else 0."""
    if fraction <= 0:
        return torch.zeros_like(deltas[0])
    if fraction >= 1:
        return torch.ones_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    if k:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def sce(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("sce", PARAMS, given, inputs.name)
    base = require_base("sce", inputs)
    fraction = float(g["select_topk"])
    if not math.isfinite(fraction):
        raise MergeError(f"{inputs.name}: sce select_topk must be finite, got {fraction}")
    others = [t for i, t in enumerate(inputs.tensors) if i != inputs.base_index]
    if not others:
        return base.clone()
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(work)
    deltas = torch.stack([t.to(work) - b for t in others])
    if fraction < 1:
        deltas = deltas * variance_mask(deltas, fraction).unsqueeze(0)
    majority = (deltas.sum(dim=0) >= 0).to(work) * 2 - 1
    keep = deltas.sign() == majority
    energy = deltas.square().reshape(len(others), -1).mean(dim=1)
    total = torch.sum(energy).item()
    weights = energy / total if abs(total) >= FLOOR else torch.ones_like(energy) / len(others)
    weights = weights.reshape(-1, *([1] * (deltas.dim() - 1))) * keep
    merged = (deltas * weights).sum(dim=0) / torch.sum(weights, dim=0).clamp(min=FLOOR)
    return (b + merged).to(base.dtype)


SCE = MergeMethod(
    name="sce",
    kernel=sce,
    params=PARAMS,
    base="required",
    min_models=1,
    reference="Wan et al. 2024, FuseChat (arXiv:2408.07990), SCE; mergekit 0.1.5 sce",
)
