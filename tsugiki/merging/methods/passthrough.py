"""Passthrough: copy the single source's tensor, optionally multiplied by a per-model ``scale``
(mergekit's passthrough; used for layer stacking, "frankenmerges"). No scale returns the input
tensor itself (no copy)."""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.merging.methods._common import check_count, fill_globals
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (Param("scale", None, per_model=True, doc="optional factor applied to the tensor"),)


def passthrough(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    fill_globals("passthrough", PARAMS, given, inputs.name)
    check_count("passthrough", inputs, 1, 1)
    scale = inputs.params[0].get("scale") if inputs.params else None
    t = inputs.tensors[0]
    return t if scale is None else t * scale


PASSTHROUGH = MergeMethod(
    name="passthrough",
    kernel=passthrough,
    params=PARAMS,
    base="ignored",
    min_models=1,
    max_models=1,
    reference="mergekit passthrough (Goddard et al. 2024, arXiv:2403.13257)",
)
