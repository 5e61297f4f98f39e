"""NuSLERP: spherical interpolation of two models, or of their task vectors against a base, with the
interpolation factor given as a weight per model (mergekit 0.1.5's ``nuslerp``; SLERP after Shoemake
1985, "Animating rotation with quaternion curves").

With weights w_a, w_b of the two (non-base) models, t = w_b / (w_a + w_b) (0.5 when the sum is below
1e-6). Without a base, u = a and v = b; with one, u = a - base and v = b - base and the base is added
back. Then, over vectors taken as

    nuslerp_flatten=true (default): the whole tensor as one vector;
    else nuslerp_row_wise=true:      the tensor's columns (vectors along dimension 0);
    else:                            its rows (vectors along the last dimension),

    cos θ = <u/|u|, v/|v|> (norms floored at 1e-7, cos clamped to [-1, 1])
    slerp = (sin((1-t)θ) u + sin(tθ) v) / sin θ,   or (1-t) u + t v where 1 - cos²θ <= 1e-16.

Note the vectors themselves, not their unit directions, are interpolated, so norms mix too.
"""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging import reduce
from tsugiki.merging.methods._common import fill_globals, model_param, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

NORM_FLOOR = 1e-7
COLINEAR = 1e-16  # (1e-8)^2: 1 - cos^2 at or below this is treated as parallel
PARAMS = (
    Param("weight", per_model=True, doc="weight of this model; t = w_second / (w_first + w_second)"),
    Param("nuslerp_row_wise", False, kind=bool, doc="interpolate the columns (vectors along dim 0) separately"),
    Param("nuslerp_flatten", True, kind=bool, doc="interpolate the whole tensor as one vector"),
)


def slerp_vectors(t: float, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SLERP of the vectors along the last dimension of u and v (same shape), linear where parallel."""
    if u.dim() == 1:  # one whole vector: thread-count-independent reductions (rows are reduced in order anyway)
        nu, nv = reduce.norm(u).clamp(min=NORM_FLOOR).reshape(1), reduce.norm(v).clamp(min=NORM_FLOOR).reshape(1)
        cos = reduce.total((u / nu) * (v / nv)).clamp(-1, 1).reshape(1)  # as mergekit sums it, not torch.dot
    else:
        nu = torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
        nv = torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=NORM_FLOOR)
        cos = ((u / nu) * (v / nv)).sum(dim=-1, keepdim=True).clamp(-1, 1)
    parallel = (1 - cos.square()) <= COLINEAR
    theta = torch.acos(torch.where(parallel, torch.zeros_like(cos), cos))
    out = (torch.sin((1 - t) * theta) * u + torch.sin(t * theta) * v) / torch.sin(theta)
    return torch.where(parallel, (1 - t) * u + t * v, out)


def slerp_flat(t: float, a: torch.Tensor, b: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    """`slerp_vectors` of the whole flat vectors u = a - base, v = b - base (u = a, v = b without a base),
    plus the base, block by block: the task vectors are made per block, never whole, and only the branch
    that applies (SLERP or, for parallel vectors, linear) is computed, which is what the elementwise
    choice gives."""
    blocks = spans(a.numel())

    def uv(blk: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return (a[blk], b[blk]) if base is None else (a[blk] - base[blk], b[blk] - base[blk])

    nu = reduce.combine_norms([reduce.norm(uv(blk)[0]) for blk in blocks]).clamp(min=NORM_FLOOR)
    nv = reduce.combine_norms([reduce.norm(uv(blk)[1]) for blk in blocks]).clamp(min=NORM_FLOOR)
    cos = reduce.combine_sums([reduce.total((x / nu) * (y / nv)) for x, y in map(uv, blocks)]).clamp(-1, 1)
    parallel = bool((1 - cos.square()) <= COLINEAR)
    if not parallel:
        theta = torch.acos(cos)
        ca, cb, s = torch.sin((1 - t) * theta), torch.sin(t * theta), torch.sin(theta)
    out = torch.empty_like(a)
    for blk in blocks:
        x, y = uv(blk)
        r = (1 - t) * x + t * y if parallel else (ca * x + cb * y) / s
        if base is None:
            out[blk] = r
        else:
            torch.add(r, base[blk], out=out[blk])
    return out


def nuslerp(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("nuslerp", PARAMS, given, inputs.name)
    pairs = inputs.non_base()
    if len(pairs) != 2:
        raise MergeError(f"{inputs.name}: nuslerp needs exactly 2 models besides the base, got {len(pairs)}")
    (a, pa), (b, pb) = pairs
    index = [i for i in range(len(inputs.tensors)) if i != inputs.base_index]
    wa, wb = (float(model_param("nuslerp", p, PARAMS[0], inputs.name, i)) for p, i in zip((pa, pb), index))
    total = wa + wb
    t = 0.5 if abs(total) < 1e-6 else wb / total
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    u, v = a.to(work), b.to(work)
    base = inputs.base.to(work) if inputs.base_index is not None else None
    if g["nuslerp_flatten"]:
        return slerp_flat(t, u.reshape(-1), v.reshape(-1), None if base is None else base.reshape(-1)).reshape(a.shape).to(a.dtype)
    if base is not None:
        u, v = u - base, v - base
    if g["nuslerp_row_wise"] and u.dim() > 1:
        out = slerp_vectors(t, u.transpose(0, -1), v.transpose(0, -1)).transpose(0, -1).contiguous()
    else:
        out = slerp_vectors(t, u, v)
    if base is not None:
        out = out + base
    return out.to(a.dtype)


NUSLERP = MergeMethod(
    name="nuslerp",
    kernel=nuslerp,
    params=PARAMS,
    base="optional",
    non_base=(2, 2),
    min_models=2,
    max_models=3,
    reference="Shoemake 1985 (SLERP); mergekit 0.1.5 nuslerp (weights as t, task-vector and row-wise forms)",
)
