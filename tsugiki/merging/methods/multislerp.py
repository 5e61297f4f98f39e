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
from tsugiki.merging.methods._common import fill_globals, model_param, spans
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
    models = [inputs.tensors[i].to(work).reshape(-1) for i in index]
    base = inputs.base.to(work).reshape(-1) if inputs.base_index is not None else None
    w = torch.tensor([float(model_param("multislerp", inputs.params[i], PARAMS[0], inputs.name, i)) for i in index],
                     dtype=work)
    if g["normalize_weights"]:
        w = w / w.sum()
    # Block by block: the task vectors, directions and tangents are made per block when needed, and the
    # result is built in the buffer of the mean direction (each entry from the same entry alone).
    blocks = spans(first.numel())

    def x(k: int, blk: slice) -> torch.Tensor:
        return models[k][blk] if base is None else models[k][blk] - base[blk]

    norms = [reduce.combine_norms([reduce.norm(x(k, blk)) for blk in blocks]) for k in range(len(models))]

    def unit(k: int, blk: slice) -> torch.Tensor:
        return x(k, blk) / (norms[k] + eps)

    out = torch.empty(first.numel(), dtype=work, device=first.device)
    for blk in blocks:
        torch.mul(unit(0, blk), w[0], out=out[blk])
        for k in range(1, len(models)):
            out[blk] += unit(k, blk) * w[k]
    mean_norm = reduce.combine_norms([reduce.norm(out[blk]) for blk in blocks])
    if mean_norm < eps:
        if len(index) != 2:
            raise MergeError(f"{inputs.name}: multislerp: the weighted mean of the models' directions is zero "
                             "(opposite models with balancing weights); change the weights")
        for blk in blocks:
            torch.add(x(0, blk) * w[0], x(1, blk) * w[1], out=out[blk])
    else:
        mean = out  # the mean direction, then the result, in one buffer
        for blk in blocks:
            mean[blk] /= mean_norm
        dots = [reduce.combine_sums([reduce.dot(unit(k, blk), mean[blk]) for blk in blocks]) for k in range(len(models))]

        def tangent(blk: slice) -> torch.Tensor:
            t = torch.zeros_like(mean[blk])
            for k in range(len(models)):
                t += (unit(k, blk) - dots[k] * mean[blk]) * w[k]
            return t

        tn = reduce.combine_norms([reduce.norm(tangent(blk)) for blk in blocks]) + eps
        scale = sum(n * wk for n, wk in zip(norms, w))
        for blk in blocks:
            out[blk] = (mean[blk] * torch.cos(tn) + tangent(blk) * (torch.sin(tn) / tn)) * scale
    if base is not None:
        out += base
    return out.reshape(first.shape).to(first.dtype)


MULTISLERP = MergeMethod(
    name="multislerp",
    kernel=multislerp,
    params=PARAMS,
    base="optional",
    non_base=(1, None),
    min_models=1,
    reference="C. Goddard, Multi-SLERP (goddard.blog); mergekit 0.1.5 multislerp",
)
