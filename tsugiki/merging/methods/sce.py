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
from tsugiki.merging import selection as sel
from tsugiki.merging.methods._common import fill_globals, require_base, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

FLOOR = 1e-6
PARAMS = (
    Param("select_topk", 1.0, doc="fraction of elements kept by cross-model variance (1: all)"),
    Param("int8_mask", False, kind=bool, doc="accepted for mergekit recipes; no effect on the result"),
)


def sce(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    """In passes over blocks (`spans`), so that the full-size memory is the result (which holds the
    variances until the selection is made) and a bool mask; task vectors are made per block."""
    g = fill_globals("sce", PARAMS, given, inputs.name)
    base = require_base("sce", inputs)
    fraction = float(g["select_topk"])
    if not math.isfinite(fraction):
        raise MergeError(f"{inputs.name}: sce select_topk must be finite, got {fraction}")
    others = [t for i, t in enumerate(inputs.tensors) if i != inputs.base_index]
    if not others:
        return base.clone()
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(work).reshape(-1)
    xs = [t.to(work).reshape(-1) for t in others]
    n = b.numel()
    blocks = spans(n)
    out = torch.empty(n, dtype=work, device=b.device)

    def deltas(blk: slice, keep: torch.Tensor | None) -> torch.Tensor:
        d = torch.stack([x[blk] - b[blk] for x in xs])
        return d if keep is None else d * keep[blk]

    # select: the k = int(nonzero(var) x select_topk) largest variances across the models (ties: lowest index)
    keep = None
    if fraction <= 0:
        keep = torch.zeros(n, dtype=torch.bool, device=b.device)
    elif fraction < 1:
        for blk in blocks:  # population variance as the mean squared deviation (torch.var: ~20x slower here)
            d = deltas(blk, None)
            d -= d.mean(dim=0)
            torch.mean(d.square_(), dim=0, out=out[blk])
        k = int(torch.count_nonzero(out) * fraction)  # as torch computes it: a count tensor times a float
        keep = sel.largest_mask(out, k) if k else torch.zeros(n, dtype=torch.bool, device=b.device)
    # calculate: each model's weight, the mean square of its (selected) task vector over all entries
    energy = torch.zeros(len(xs), dtype=work, device=b.device)
    for blk in blocks:
        energy += deltas(blk, keep).square().sum(dim=1)  # rows: one thread each, so thread-count independent
    energy /= n
    total = float(energy.sum())
    weights = energy / total if abs(total) >= FLOOR else torch.ones_like(energy) / len(xs)
    w = weights.reshape(-1, 1)
    # erase: keep the entries whose sign is the majority's (sign of the sum, ties +), then the weighted mean
    for blk in blocks:
        d = deltas(blk, keep)
        majority = (d.sum(dim=0) >= 0).to(work) * 2 - 1
        kept = w * (d.sign() == majority)
        merged = (d * kept).sum(dim=0) / kept.sum(dim=0).clamp(min=FLOOR)
        torch.add(b[blk], merged, out=out[blk])
    return out.reshape(base.shape).to(base.dtype)


SCE = MergeMethod(
    name="sce",
    kernel=sce,
    params=PARAMS,
    base="required",
    min_models=1,
    reference="Wan et al. 2024, FuseChat (arXiv:2408.07990), SCE; mergekit 0.1.5 sce",
)
