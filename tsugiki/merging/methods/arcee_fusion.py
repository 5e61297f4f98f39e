"""Arcee Fusion: take the other model's value only where it matters most (Arcee AI, "Arcee Fusion",
arcee.ai blog, 2025; mergekit 0.1.5's ``arcee_fusion``). Base + exactly one other model, no parameters.

With base a and the other model b (softmax and the sums along the last dimension, a row at a time):

    kl  = sum_j p_j log(p_j / q_j),   p = softmax(b) + 1e-8, q = softmax(a) + 1e-8   one value per row
    imp = |b - a| · kl                                                          element importance
    τ   = Q2 + 1.5 (Q3 - Q1)       quartiles of imp: the sorted values at index floor(q (n - 1))
    out = a + (b - a) · [imp >= τ]

so only elements whose importance is an upper outlier move to b. mergekit estimates the quartiles
from 1,000,000 unseeded random draws when a tensor has more elements than that (so its output varies
between runs there); tsugiki always takes the exact quartiles, which the two agree on below that size.
"""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.merging import selection as sel
from tsugiki.merging.methods._common import BLOCK, check_count, fill_globals, require_base, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod

SOFTMAX_FLOOR = 1e-8


def importance(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """|b - a| times the row's KL divergence of softmax(b) from softmax(a), into ``out``; rows (along
    the last dimension) a block of them at a time, so the softmax temporaries are block-sized."""
    last = a.shape[-1] if a.dim() else 1
    a2, b2, o2 = a.reshape(-1, last), b.reshape(-1, last), out.view(-1, last)
    step = max(1, BLOCK // last)
    for r in range(0, a2.shape[0], step):
        x, y = a2[r:r + step], b2[r:r + step]
        p = torch.softmax(y, dim=-1) + SOFTMAX_FLOOR
        q = torch.softmax(x, dim=-1) + SOFTMAX_FLOOR
        kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
        torch.mul(torch.sub(y, x).abs_(), kl, out=o2[r:r + step])
    return out


def outlier_threshold(x: torch.Tensor) -> torch.Tensor:
    """Q2 + 1.5 (Q3 - Q1), each quartile the sorted value at index floor(q (n - 1)) (no interpolation)."""
    flat = x.reshape(-1)
    last = flat.numel() - 1
    radix = flat.dtype == torch.float32 and not bool((flat < 0).any())  # a radix select of |x| is x's order
    pick = (lambda m: sel.kth_smallest(flat, m)) if radix else (lambda m: torch.kthvalue(flat, m).values)
    q1, q2, q3 = (pick(k + 1) for k in (last // 4, last // 2, 3 * last // 4))
    return q2 + 1.5 * (q3 - q1)


def arcee_fusion(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    """The importances are computed into the result's buffer, which then becomes the result block by
    block: full-size memory is that one tensor."""
    fill_globals("arcee_fusion", (), given, inputs.name)
    check_count("arcee_fusion", inputs, 2, 2)
    base = require_base("arcee_fusion", inputs)
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    a, b = base.to(work), inputs.tensors[1 - inputs.base_index].to(work)
    out = importance(a, b, torch.empty(a.shape, dtype=work, device=a.device))
    threshold = outlier_threshold(out)
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.view(-1)
    for blk in spans(fo.numel()):
        keep = (fo[blk] >= threshold).to(work)
        torch.add(fa[blk], torch.sub(fb[blk], fa[blk]).mul_(keep), out=fo[blk])
    return out.to(base.dtype)


ARCEE_FUSION = MergeMethod(
    name="arcee_fusion",
    kernel=arcee_fusion,
    base="required",
    min_models=2,
    max_models=2,
    reference="Arcee AI, Arcee Fusion (arcee.ai, 2025); mergekit 0.1.5 arcee_fusion",
)
