"""Multi-SLERP: weighted barycentric interpolation of any number of models on the hypersphere
(C. Goddard, "Multi-SLERP", goddard.blog/posts/multislerp-wow-what-a-cool-idea; mergekit 0.1.5's
``multislerp``).

Each (non-base) model's tensor x_i, or its task vector x_i - base where a base is given, is taken as
one flat vector with norm n_i and direction e_i = x_i / (n_i + eps). With weights w_i (divided by
their sum when ``normalize_weights``):

    m = sum_i w_i e_i / |sum_i w_i e_i|                       the weighted mean direction
    τ = sum_i w_i (e_i - <e_i, m> m)                          the mean in m's tangent space
    out = (m cos|τ|' + τ sin|τ|' / |τ|') · sum_i w_i n_i      |τ|' = |τ| + eps (exponential map)

plus the base where there is one. One model alone is returned as it is. Where the mean direction
vanishes (|sum w_i e_i| < eps: opposite models with balancing weights), two models fall back to
sum_i w_i x_i; more are an error.
"""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging import reduce
from tsugiki.merging.methods._common import fill_globals, model_param
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (
    Param("weight", per_model=True, doc="weight of this model"),
    Param("normalize_weights", True, kind=bool, doc="divide the weights by their sum"),
    Param("eps", 1e-8, doc="floor added to norms"),
)


def multislerp(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("multislerp", PARAMS, given, inputs.name)
    eps = float(g["eps"])
    index = [i for i in range(len(inputs.tensors)) if i != inputs.base_index]
    if not index:
        raise MergeError(f"{inputs.name}: multislerp needs at least one model besides the base")
    first = inputs.tensors[index[0]]
    if len(index) == 1:
        return first.clone()
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    xs = torch.stack([inputs.tensors[i].to(work) for i in index])
    base = inputs.base.to(work) if inputs.base_index is not None else None
    if base is not None:
        xs -= base
    flat = xs.reshape(len(index), -1)
    w = torch.tensor([float(model_param("multislerp", inputs.params[i], PARAMS[0], inputs.name, i)) for i in index],
                     dtype=work)
    if g["normalize_weights"]:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = reduce.norm(mean)
    if mean_norm < eps:
        if len(index) != 2:
            raise MergeError(f"{inputs.name}: multislerp: the weighted mean of the models' directions is zero "
                             "(opposite models with balancing weights); change the weights")
        out = xs[0] * w[0] + xs[1] * w[1]
    else:
        mean = mean / mean_norm
        tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * w.view(-1, 1)).sum(0)
        tn = reduce.norm(tangent) + eps
        out = (mean * torch.cos(tn) + tangent * (torch.sin(tn) / tn)) * (norms.squeeze(-1) * w).sum()
        out = out.view(xs.shape[1:])
    if base is not None:
        out = out + base
    return out.to(first.dtype)


MULTISLERP = MergeMethod(
    name="multislerp",
    kernel=multislerp,
    params=PARAMS,
    base="optional",
    non_base=(1, None),
    min_models=1,
    reference="C. Goddard, Multi-SLERP (goddard.blog); mergekit 0.1.5 multislerp",
)
