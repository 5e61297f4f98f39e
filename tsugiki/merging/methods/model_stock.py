"""Model Stock: Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models",
arXiv:2403.19522.

With base w0 and N >= 2 fine-tuned models w_i, offsets d_i = w_i - w0 and cos = the mean over
pairs i < j of clamp(<d_i, d_j> / max(|d_i| |d_j|, 1e-6), -1, 1):

    t   = N cos / (1 + (N - 1) cos)      (t = 0, i.e. keep the base, where |1 + (N-1) cos| < 1e-6)
    out = t * mean_i(w_i) + (1 - t) * w0

filter_wise=False (default): one cos over the whole flattened tensor. filter_wise=True: one cos per
vector along the last dimension (a row of a 2-D weight; a 1-D tensor is a single vector).
Computed in the input dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.merging import reduce
from tsugiki.merging.methods._common import BLOCK, check_count, fill_globals, require_base, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (Param("filter_wise", False, kind=bool, doc="one interpolation factor per row instead of per tensor"),)


def _factor(cos_sum: torch.Tensor, pairs: int, n: int) -> torch.Tensor:
    """t = N cos / (1 + (N - 1) cos) from the summed pairwise cosines (0 where the denominator vanishes)."""
    cos = (cos_sum / pairs).unsqueeze(-1)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    return torch.where(singular, 0, n * cos / torch.where(singular, 1, denom))


def _interpolate(t: torch.Tensor, ws: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    avg = ws[0].clone()
    for w in ws[1:]:
        avg += w
    avg /= len(ws)
    return t * avg + (1 - t) * base


def model_stock(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    """Block by block (rows, for filter_wise; else whole-tensor statistics first): the offsets are made
    per block, so full-size memory is the result alone."""
    g = fill_globals("model_stock", PARAMS, given, inputs.name)
    check_count("model_stock", inputs, 3, None)
    w0 = require_base("model_stock", inputs)
    ws = [t for i, t in enumerate(inputs.tensors) if i != inputs.base_index]
    n = len(ws)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if g["filter_wise"]:  # one cos per vector along the last dimension (a 1-D tensor is one vector)
        rows = (lambda x: x.reshape(1, -1)) if w0.dim() <= 1 else (lambda x: x.reshape(-1, w0.shape[-1]))
        base, others = rows(w0), [rows(w) for w in ws]
        out = torch.empty(base.shape, dtype=w0.dtype, device=w0.device)
        step = max(1, BLOCK // base.shape[1])
        for r in range(0, base.shape[0], step):
            b = base[r:r + step]
            offsets = [w[r:r + step] - b for w in others]
            norms = [torch.linalg.vector_norm(d, dim=-1) for d in offsets]
            cos_sum = sum(((offsets[i] * offsets[j]).sum(dim=-1) / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
                          for i, j in pairs)
            out[r:r + step] = _interpolate(_factor(cos_sum, len(pairs), n), [w[r:r + step] for w in others], b)
        return out.reshape(w0.shape)
    # one cos over the whole tensor: norms and dot products summed block by block (thread-count independent)
    base, others = w0.reshape(-1), [w.reshape(-1) for w in ws]
    blocks = spans(base.numel())
    norms = [reduce.combine_norms([reduce.norm(w[blk] - base[blk]) for blk in blocks]) for w in others]
    cos_sum = sum((reduce.combine_sums([reduce.dot(others[i][blk] - base[blk], others[j][blk] - base[blk]) for blk in blocks])
                   / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1) for i, j in pairs)
    t = _factor(cos_sum, len(pairs), n)
    out = torch.empty(base.shape, dtype=w0.dtype, device=w0.device)
    for blk in blocks:
        out[blk] = _interpolate(t, [w[blk] for w in others], base[blk])
    return out.reshape(w0.shape)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    kernel=model_stock,
    params=PARAMS,
    base="required",
    min_models=3,
    reference="Jang et al. 2024, Model Stock, arXiv:2403.19522",
)
