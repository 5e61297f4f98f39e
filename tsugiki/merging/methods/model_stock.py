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
from tsugiki.merging.methods._common import check_count, fill_globals, require_base
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (Param("filter_wise", False, kind=bool, doc="one interpolation factor per row instead of per tensor"),)


def model_stock(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("model_stock", PARAMS, given, inputs.name)
    check_count("model_stock", inputs, 3, None)
    w0 = require_base("model_stock", inputs)
    ws = [t for i, t in enumerate(inputs.tensors) if i != inputs.base_index]
    shape = w0.shape
    if g["filter_wise"]:
        view = (lambda x: x.reshape(1, -1)) if w0.dim() <= 1 else (lambda x: x)
    else:
        view = lambda x: x.reshape(-1)  # noqa: E731
    base = view(w0)
    offsets = [view(w) - base for w in ws]
    whole = base.dim() == 1  # one vector: thread-count-independent reductions (rows are reduced in order anyway)
    norms = [reduce.norm(d) if whole else torch.linalg.vector_norm(d, dim=-1) for d in offsets]
    cos_sum = None
    pairs = 0
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            dot = reduce.dot(offsets[i], offsets[j]) if whole else (offsets[i] * offsets[j]).sum(dim=-1)
            c = (dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
            cos_sum = c if cos_sum is None else cos_sum + c
            pairs += 1
    del offsets
    cos = (cos_sum / pairs).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, 0, n * cos / torch.where(singular, 1, denom))
    avg = view(ws[0]).clone()
    for w in ws[1:]:
        avg += view(w)
    avg /= n
    return (t * avg + (1 - t) * base).reshape(shape)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    kernel=model_stock,
    params=PARAMS,
    base="required",
    min_models=3,
    reference="Jang et al. 2024, Model Stock, arXiv:2403.19522",
)
