"""Linear merge (weighted average): Wortsman et al. 2022, "Model soups: averaging weights of
multiple fine-tuned models improves accuracy without increasing inference time", arXiv:2203.05482.

    out = sum_i w_i m_i            (normalize=False)
    out = sum_i w_i m_i / sum_i w_i (normalize=True, the default)

Every source, the base included when one is given, is an ordinary weighted input (mergekit's base
policy for linear is "ignored"). Accumulates in float32 (float64 for float64 inputs) and returns
the input dtype. A zero weight sum with normalize=True is a MergeError (mergekit returns inf/NaN).
"""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.methods._common import fill_globals, model_param
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (
    Param("weight", per_model=True, doc="weight of this model"),
    Param("normalize", True, kind=bool, doc="divide by the sum of the weights"),
)


def linear(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("linear", PARAMS, given, inputs.name)
    if not inputs.tensors:
        raise MergeError(f"{inputs.name}: linear needs at least one model")
    weights = [float(model_param("linear", p, PARAMS[0], inputs.name, i)) for i, p in enumerate(inputs.params)]
    total = sum(weights)
    if g["normalize"] and total == 0:
        raise MergeError(f"{inputs.name}: linear with normalize=true needs weights that do not sum to 0")
    first = inputs.tensors[0]
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    first_work = first.to(work)
    out = torch.mul(first_work, weights[0], out=inputs.out_like(first_work))
    for t, w in zip(inputs.tensors[1:], weights[1:]):
        out.add_(t.to(work), alpha=w)
    if g["normalize"]:
        out /= total
    return out.to(first.dtype)


LINEAR = MergeMethod(
    name="linear",
    kernel=linear,
    params=PARAMS,
    base="ignored",
    min_models=1,
    reference="Wortsman et al. 2022, Model soups, arXiv:2203.05482",
)
