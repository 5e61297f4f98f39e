"""Task arithmetic and its sparsified / sign-consensus relatives (mergekit's "generalized task
arithmetic").

Task arithmetic: Ilharco et al. 2023, "Editing Models with Task Arithmetic", arXiv:2212.04089.
For base b and models m_i with weights w_i, task vectors d_i = m_i - b are optionally sparsified
(see ``tsugiki.merging.sparsify``), weighted, optionally restricted by a TIES-style sign consensus,
summed, optionally normalized, scaled by ``lambda`` and added back to the base:

    d_i'   = w_i * sparsify(d_i; density_i, ...)
    sign   = +1 where sum_i d_i' >= 0 else -1                (consensus "sum", TIES-family only)
    keep_i = sign(d_i') == sign                              (zero entries never count)
    out    = b + lambda * sum_i keep_i d_i' / D,
    D      = sum_i keep_i w_i   (elementwise; 0 -> 1)       with consensus
    D      = sum_i w_i          (|D| < 1e-8 -> 1)            without consensus
    (divide by D only when ``normalize``)

The per-method defaults (normalize, rescale, sparsification, consensus) follow mergekit 0.1.5.
``int8_mask`` is accepted for recipe compatibility; mergekit uses it only to store the sign mask
as int8 instead of the tensor dtype, which never changes the result. tsugiki's mask is always bool.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from tsugiki.errors import MergeError
from tsugiki.merging import sparsify as sp
from tsugiki.merging.methods._common import fill_globals, model_param, require_base, require_generator
from tsugiki.merging.methods.base import MergeInputs, MergeMethod, Param

WEIGHT = Param("weight", per_model=True, doc="scale of this model's task vector")
DENSITY = Param("density", 1.0, per_model=True, doc="fraction of task-vector entries kept")
GAMMA = Param("gamma", 0.01, per_model=True, doc="fraction of largest-magnitude entries removed (breadcrumbs)")
EPSILON = Param("epsilon", 0.15, per_model=True, doc="half-width of DELLA's keep-probability range")

SPARSIFIERS = ("magnitude", "random", "magnitude_outliers", "della_magprune")


def _sparsify(
    kind: str | None,
    delta: torch.Tensor,
    p: dict[str, Any],
    rescale: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    if kind is None:
        return delta
    density = float(p["density"])
    if kind == "magnitude":
        return sp.magnitude(delta, density, rescale=rescale)
    if kind == "magnitude_outliers":
        return sp.magnitude_outliers(delta, density, float(p["gamma"]), rescale=rescale)
    if kind == "random":
        return sp.bernoulli(delta, density, generator, rescale=rescale)
    if kind == "della_magprune":
        return sp.della_magprune(delta, density, float(p["epsilon"]), generator, rescale=rescale)
    raise AssertionError(kind)


def _make_kernel(method: str, params: tuple[Param, ...], sparsification: str | None, consensus: bool, randomized: bool) -> Callable[..., torch.Tensor]:
    model_specs = tuple(p for p in params if p.per_model)

    def kernel(inputs: MergeInputs, **given: Any) -> torch.Tensor:
        g = fill_globals(method, params, given, inputs.name)
        base = require_base(method, inputs)
        generator = require_generator(method, inputs) if randomized else None
        sources = [(i, t, p) for i, (t, p) in enumerate(zip(inputs.tensors, inputs.params)) if i != inputs.base_index]
        if not sources:
            return base.clone()
        per_model = [{s.name: model_param(method, p, s, inputs.name, i) for s in model_specs} for i, _, p in sources]
        weights = torch.tensor([float(p["weight"]) for p in per_model], dtype=base.dtype, device=base.device)
        rescale = bool(g["rescale"])

        def weighted_delta(k: int) -> torch.Tensor:
            i, t, _ = sources[k]
            try:
                d = _sparsify(sparsification, t - base, per_model[k], rescale, generator)
            except ValueError as e:
                raise MergeError(f"{inputs.name}: {method}, source #{i}: {e}") from None
            return d.mul_(weights[k])  # d is always a fresh tensor (t - base or its pruned copy)

        if consensus:
            deltas = torch.empty((len(sources), *base.shape), dtype=base.dtype, device=base.device)
            for k in range(len(sources)):
                deltas[k] = weighted_delta(k)
            elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(base.dtype)
            # kept: entries whose sign agrees with the elected sign (zeros never agree)
            kept = torch.mul(deltas, elected) > 0
            del elected
            mixed = deltas.mul_(kept).sum(dim=0)
            del deltas
            if g["normalize"]:
                divisor = torch.zeros_like(base)
                for k in range(len(sources)):
                    divisor += kept[k] * weights[k]
                divisor.masked_fill_(divisor == 0, 1)
                mixed /= divisor
            del kept
        else:
            mixed = weighted_delta(0)
            for k in range(1, len(sources)):
                mixed += weighted_delta(k)
            if g["normalize"]:
                divisor = weights.sum()
                if divisor.abs() >= 1e-8:
                    mixed /= divisor
        lam = float(g["lambda"])
        if lam != 1:
            mixed *= lam
        return (base + mixed).to(base.dtype)

    return kernel


def make_task_arithmetic_method(
    name: str,
    *,
    sparsification: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    reference: str,
) -> MergeMethod:
    """A task-vector method with mergekit 0.1.5's parameter set and per-method defaults."""
    assert sparsification is None or sparsification in SPARSIFIERS
    params: tuple[Param, ...] = (
        Param("int8_mask", False, kind=bool, doc="accepted for compatibility; no effect on the result"),
        Param("normalize", normalize, kind=bool, doc="divide the summed task vectors by the summed weights"),
        Param("rescale", rescale, kind=bool, doc="after pruning, rescale each task vector to its original L1 norm"),
        Param("lambda", 1.0, doc="scale of the merged task vector"),
        WEIGHT,
        DENSITY,
    )
    if sparsification == "magnitude_outliers":
        params += (GAMMA,)
    if sparsification == "della_magprune":
        params += (EPSILON,)
    randomized = sparsification in ("random", "della_magprune")
    return MergeMethod(
        name=name,
        kernel=_make_kernel(name, params, sparsification, consensus, randomized),
        params=params,
        base="required",
        min_models=1,
        randomized=randomized,
        reference=reference,
    )


TASK_ARITHMETIC = make_task_arithmetic_method(
    "task_arithmetic",
    sparsification=None,
    consensus=False,
    normalize=False,
    rescale=False,
    reference="Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv:2212.04089",
)
