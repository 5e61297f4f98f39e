"""Karcher mean: the Riemannian (Fréchet) mean of the models' directions on the unit hypersphere, scaled
by their mean norm (Karcher 1977, "Riemannian center of mass and mollifier smoothing"; the fixed-point
iteration of Buss & Fillmore 2001, "Spherical averages and applications to spherical splines and
interpolation"; mergekit 0.1.5's ``karcher``, whose behaviour at the edges this follows).

Every source counts equally (weight 1/N; a base model is an ordinary input). With u_i = x_i / |x_i| (a
zero tensor has u = 0) and only the directions whose norm exceeds ``tol`` averaged (weights renormalised
over them):

    m = normalise(sum a_i u_i)          (the first direction instead if that sum is shorter than tol)
    repeat max_iter times:
        T = sum a_i theta_i / sin(theta_i) (u_i - cos(theta_i) m),   theta_i = acos(<m, u_i>)
            (directions within tol of m contribute nothing)
        stop if |T| < tol;  m = cos|T| m + sin|T| T/|T|,  renormalised
    out = (sum_i |x_i| / N) m

One source returns it unchanged; no direction longer than tol returns zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging import reduce
from tsugiki.merging.methods._common import check_count, fill_globals, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (
    Param("max_iter", 10, kind=int, doc="fixed-point iterations at most"),
    Param("tol", 1e-5, doc="stop when the tangent step is shorter; also the smallest norm and angle that count"),
)


def karcher_mean(tensors: list[torch.Tensor], max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """The equal-weight Karcher mean of ``tensors`` (same shape), in the first tensor's dtype.

    Norms and angles are computed in float32 (float64 for float64 inputs); directions stay in the input
    dtype between steps, as mergekit keeps them.
    """
    if len(tensors) == 1:
        return tensors[0].clone()
    first = tensors[0]
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    weight = 1.0 / len(tensors)
    norms = [reduce.norm(t.to(work)) for t in tensors]
    kept = [(t.reshape(-1), n) for t, n in zip(tensors, norms) if n.item() > tol]
    if not kept:
        return torch.zeros_like(first)
    total = sum([weight] * len(kept))  # summed one by one, as mergekit does: the same last bits
    alphas = [weight / total] * len(kept)  # equal weights, renormalised over the kept directions
    blocks = spans(first.numel())

    def unit(k: int, blk: slice) -> torch.Tensor:  # u_k on a block, made when needed (never stored whole)
        t, n = kept[k]
        return (t[blk] / n).to(t.dtype)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return reduce.combine_norms([reduce.norm(x[blk].to(work)) for blk in blocks])

    mean = torch.zeros(first.numel(), dtype=kept[0][0].dtype, device=first.device)
    for blk in blocks:
        for k, a in enumerate(alphas):
            mean[blk] += a * unit(k, blk)
    length = norm(mean)
    for blk in blocks:
        mean[blk] = unit(0, blk) if length.item() < tol else (mean[blk] / length).to(mean.dtype)

    for _ in range(max_iter):
        terms = []  # (a_i theta_i / sin theta_i, cos theta_i, i) of the directions that count
        for k, a in enumerate(alphas):
            cos = torch.clamp(reduce.combine_sums([reduce.dot(mean[blk], unit(k, blk)) for blk in blocks]), -1.0, 1.0)
            theta = torch.arccos(cos)
            if theta.item() >= tol:
                terms.append((a * (theta / torch.sin(theta)), cos, k))

        def step(blk: slice) -> torch.Tensor:
            out = torch.zeros_like(mean[blk])
            for c, cos, k in terms:
                out += c * (unit(k, blk) - cos * mean[blk])
            return out

        # the step is made twice per block (for its norm, then for the update) rather than kept whole;
        # each entry of the new mean depends on the same entry of the old one only, so it is updated in place
        size = reduce.combine_norms([reduce.norm(step(blk).to(work)) for blk in blocks])
        if size.item() < tol:
            break
        for blk in blocks:
            mean[blk] = (torch.cos(size) * mean[blk] + torch.sin(size) * (step(blk) / size)).to(mean.dtype)
        length = norm(mean)
        if length.item() > tol:
            for blk in blocks:
                mean[blk] = (mean[blk] / length).to(mean.dtype)

    scale = sum(weight * n for n in norms)
    return mean.mul_(scale).reshape(first.shape).to(first.dtype)


def karcher(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("karcher", PARAMS, given, inputs.name)
    check_count("karcher", inputs, 1, None)
    max_iter, tol = g["max_iter"], float(g["tol"])
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise MergeError(f"{inputs.name}: karcher max_iter must be a whole number >= 0, got {max_iter!r}")
    if not (math.isfinite(tol) and tol >= 0):
        raise MergeError(f"{inputs.name}: karcher tol must be finite and >= 0, got {tol}")
    return karcher_mean(list(inputs.tensors), max_iter, tol)


KARCHER = MergeMethod(
    name="karcher",
    kernel=karcher,
    params=PARAMS,
    base="ignored",
    min_models=1,
    reference="Karcher 1977 (Riemannian center of mass); Buss & Fillmore 2001 (spherical averages); mergekit 0.1.5 karcher",
)
