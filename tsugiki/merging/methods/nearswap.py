"""NearSwap: move the base towards one other model where the two are already close (alchemonaut,
QuartetAnemoi-70B-t0.0001's model card, which introduced it; mergekit 0.1.5's ``nearswap``).

With a = base, b = the other model, element by element:

    w = clamp(t / max(|a - b|, 1e-6), 0, 1)
    out = w * b + (1 - w) * a

so an element is swapped for b's where they differ by at most t, and moved by t towards b (in
relative terms, t / |a - b|) where they differ more. t = 0 gives the base; the 1e-6 floor keeps equal
elements finite (they take b's value, which is a's). ``t`` has no default, as in mergekit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.methods._common import check_count, fill_globals, require_base, spans
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

FLOOR = 1e-6
PARAMS = (Param("t", doc="closeness threshold: elements within t of the base take the other model's value"),)


def nearswap_tensors(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NearSwap of base ``a`` and other ``b`` in float32 (float64 for float64 inputs), returned in a's dtype.

    Block by block (`spans`): the weight is a block-sized temporary that becomes (1 - w) * a in place,
    the result the only full-size buffer. ``t / x`` is computed as PyTorch computes a scalar divided by a
    tensor (``x.reciprocal() * t``), so the result is bit for bit the formula as written above in PyTorch.
    """
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, y = a.to(work).reshape(-1), b.to(work).reshape(-1)
    out = torch.empty(x.shape, dtype=work, device=x.device)
    for blk in spans(x.numel()):
        w = torch.sub(x[blk], y[blk]).abs_().clamp_(min=FLOOR).reciprocal_().mul_(t).clamp_(0, 1)
        torch.mul(w, y[blk], out=out[blk]).add_(w.neg_().add_(1).mul_(x[blk]))
    return out.reshape(a.shape).to(a.dtype)


def nearswap(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    g = fill_globals("nearswap", PARAMS, given, inputs.name)
    check_count("nearswap", inputs, 2, 2)
    base = require_base("nearswap", inputs)
    t = float(g["t"])
    if not math.isfinite(t):
        raise MergeError(f"{inputs.name}: nearswap t must be finite, got {t}")
    return nearswap_tensors(t, base, inputs.tensors[1 - inputs.base_index])


NEARSWAP = MergeMethod(
    name="nearswap",
    kernel=nearswap,
    params=PARAMS,
    base="required",
    min_models=2,
    max_models=2,
    reference="alchemonaut, QuartetAnemoi-70B-t0.0001 model card (NearSwap); mergekit 0.1.5 nearswap",
)
