"""Spherical linear interpolation between the base and one other model: Shoemake 1985,
"Animating rotation with quaternion curves" (SIGGRAPH), applied to whole weight tensors.

With a = base, b = other (each flattened, in float32 or float64), |.| the L2 norm of the whole
tensor (a norm <= 1e-8 counts as 1) and d = clamp(<a/|a|, b/|b|>, -1, 1):

    |d| > 0.9995 (near-parallel or antiparallel):  out = (1 - t) a + t b
    otherwise, theta = acos(d):  out = sin((1 - t) theta)/sin(theta) a + sin(t theta)/sin(theta) b

t = 0 gives the base. Note the coefficients multiply the *unnormalized* tensors, and that a zero
tensor (norm 1 substituted, d = 0) takes the spherical branch with theta = pi/2.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging import reduce
from tsugiki.merging.methods._common import check_count, fill_globals, require_base, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

DOT_THRESHOLD = 0.9995
EPS = 1e-8
PARAMS = (Param("t", doc="interpolation factor: 0 = base, 1 = the other model"),)


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """SLERP from ``v0`` (t=0) to ``v1`` (t=1), computed in float32/float64, returned in v0's dtype.

    The result is the one full-size buffer: the dot product takes a/|a| a block at a time, and b * cb is
    added block by block (element-wise, so bit-for-bit the whole-tensor sum).
    """
    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1).to(work)
    b = v1.reshape(-1).to(work)
    tt = torch.tensor(float(t), dtype=work, device=a.device)
    if a.numel() == 0:
        return v0.clone()
    na = reduce.norm(a)
    nb = reduce.norm(b)
    na = torch.where(na > EPS, na, 1)
    nb = torch.where(nb > EPS, nb, 1)
    # <a/|a|, b> a block at a time: the normalised copy of a is block-sized
    dot = (reduce.combine_sums([reduce.dot(a[blk] / na, b[blk]) for blk in spans(a.numel())]) / nb).clamp(-1, 1)
    if float(dot.abs()) > DOT_THRESHOLD:
        ca, cb = 1 - tt, tt
    else:
        theta = torch.acos(dot)
        s = torch.sin(theta)
        ca, cb = torch.sin((1 - tt) * theta) / s, torch.sin(tt * theta) / s
    out = torch.mul(a, ca)
    for blk in spans(out.numel()):
        out[blk].add_(b[blk] * cb)
    return out.reshape(v0.shape).to(v0.dtype)


def slerp(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("slerp", PARAMS, given, inputs.name)
    check_count("slerp", inputs, 2, 2)
    base = require_base("slerp", inputs)
    other = inputs.tensors[1 - inputs.base_index]
    t = float(g["t"])
    if not math.isfinite(t):
        raise MergeError(f"{inputs.name}: slerp t must be finite, got {t}")
    return slerp_tensors(t, base, other)


SLERP = MergeMethod(
    name="slerp",
    kernel=slerp,
    params=PARAMS,
    base="required",
    min_models=2,
    max_models=2,
    reference="Shoemake 1985, Animating rotation with quaternion curves (SLERP)",
)
