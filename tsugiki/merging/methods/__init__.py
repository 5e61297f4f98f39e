"""Merge-method kernels, registered explicitly in one registry.

    METHODS: Registry[MergeMethod]   get_method(name) -> MergeMethod

Definitions, parameter names and defaults follow mergekit 0.1.5 (checked against its own
implementations by tests/merging/test_methods.py with fixtures from scripts/make_mergekit_reference.py).
"""

from __future__ import annotations

from tsugiki.merging.methods.base import REQUIRED, MergeInputs, MergeMethod, Param
from tsugiki.merging.methods.arcee_fusion import ARCEE_FUSION
from tsugiki.merging.methods.breadcrumbs import BREADCRUMBS, BREADCRUMBS_TIES
from tsugiki.merging.methods.dare import DARE_LINEAR, DARE_TIES
from tsugiki.merging.methods.della import DELLA, DELLA_LINEAR
from tsugiki.merging.methods.karcher import KARCHER
from tsugiki.merging.methods.linear import LINEAR
from tsugiki.merging.methods.model_stock import MODEL_STOCK
from tsugiki.merging.methods.multislerp import MULTISLERP
from tsugiki.merging.methods.nearswap import NEARSWAP
from tsugiki.merging.methods.nuslerp import NUSLERP
from tsugiki.merging.methods.passthrough import PASSTHROUGH
from tsugiki.merging.methods.ram import RAM, RAMPLUS_TL
from tsugiki.merging.methods.sce import SCE
from tsugiki.merging.methods.slerp import SLERP
from tsugiki.merging.methods.task_arithmetic import TASK_ARITHMETIC
from tsugiki.merging.methods.ties import TIES
from tsugiki.registry import Registry

METHODS: Registry[MergeMethod] = Registry("merge method")
for _m in (
    LINEAR,
    TASK_ARITHMETIC,
    TIES,
    DARE_TIES,
    DARE_LINEAR,
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DELLA,
    DELLA_LINEAR,
    SLERP,
    MODEL_STOCK,
    PASSTHROUGH,
    NEARSWAP,
    KARCHER,
    SCE,
    NUSLERP,
    MULTISLERP,
    ARCEE_FUSION,
    RAM,
    RAMPLUS_TL,
):
    METHODS.register(_m.name, _m)
del _m


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name`` (UnknownNameError with a suggestion otherwise)."""
    return METHODS.get(name)


__all__ = ["METHODS", "get_method", "MergeInputs", "MergeMethod", "Param", "REQUIRED"]
