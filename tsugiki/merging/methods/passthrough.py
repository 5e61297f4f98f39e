"""Passthrough: copy the single source's tensor, optionally multiplied by a per-model ``scale``
(mergekit's passthrough; used for layer stacking, "frankenmerges"). No scale returns the input
tensor itself (no copy).

``offset`` (tsugiki's, not mergekit's) is added after the scale: ``t * scale + offset``. It exists
for norm weights applied as ``1 + w`` (Gemma's RMSNorm), whose gain ``1 + w`` is multiplied by s
with ``scale: s, offset: s - 1``; DFS export folds its scales that way (tsugiki.evolution.kinds.dfs.space)."""

from __future__ import annotations

from typing import Any

import torch

from tsugiki.merging.methods._common import check_count, fill_globals
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

PARAMS = (Param("scale", None, per_model=True, doc="optional factor applied to the tensor"),
          Param("offset", None, per_model=True, doc="optional constant added after the scale"))


def passthrough(inputs: MergeInputs, **given: Any) -> torch.Tensor:
    fill_globals("passthrough", PARAMS, given, inputs.name)
    check_count("passthrough", inputs, 1, 1)
    params = inputs.params[0] if inputs.params else {}
    scale, offset = params.get("scale"), params.get("offset")
    t = inputs.tensors[0]
    if scale is not None:
        t = t * scale
    return t if offset is None else t + offset


PASSTHROUGH = MergeMethod(
    name="passthrough",
    kernel=passthrough,
    params=PARAMS,
    base="ignored",
    min_models=1,
    max_models=1,
    reference="mergekit passthrough (Goddard et al. 2024, arXiv:2403.13257)",
)
