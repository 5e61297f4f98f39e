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

import math
from typing import Any, Callable

import torch

from tsugiki.errors import MergeError
from tsugiki.merging import selection as sel
from tsugiki.merging import sparsify as sp
from tsugiki.merging.methods._common import fill_globals, model_param, require_base, require_generator
from tsugiki.merging.methods.base import Memo, MergeInputs, MergeMethod, Param, remember

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
    generator: torch.Generator | sp.UniformStream | None,
    memo: Memo | None,
    k: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """Prune ``delta`` (the task vector of non-base source ``k``) into ``out`` (``delta`` itself
    where it is a fresh task vector owned by the kernel, or a kernel-owned buffer where ``delta``
    is a remembered one) and return it. What depends only on the delta (magnitude ranks, DELLA's
    ranks, the L1 norm) is taken from / kept in ``memo`` where one is given."""
    if kind is None:
        return delta if out is delta else out.copy_(delta)
    density = float(p["density"])
    if not 0 < density < 1:  # no selection, or all zeros: nothing worth remembering
        memo = None
    l1 = remember(memo, ("l1", k), delta.element_size(), lambda: sp.l1_norm(delta)) if rescale else None
    if kind in ("magnitude", "magnitude_outliers"):
        largest = kind == "magnitude"  # TIES keeps the largest magnitudes, breadcrumbs a band from the smallest
        # ranks take a sort, several selections' time: made on a re-merge only (a one-off merge
        # selects), as far as the memo allows them this call
        key = ("magnitude_ranks", largest, k)
        ranks = memo.get(key) if memo is not None else None
        if ranks is None and memo is not None and memo.room(4 * delta.numel()) and memo.may_sort(delta.numel()):
            ranks = sel.magnitude_ranks(delta, descending=largest)
            if ranks is not None:
                memo.put(key, ranks)
        if largest:
            return sp.magnitude(delta, density, rescale=rescale, out=out, ranks=ranks, l1=l1)
        return sp.magnitude_outliers(delta, density, float(p["gamma"]), rescale=rescale, out=out, ranks=ranks, l1=l1)
    if kind == "random":
        return sp.bernoulli(delta, density, generator, rescale=rescale, out=out, l1=l1)
    if kind == "della_magprune":
        ranks = remember(memo, ("della_ranks", k), 4 * delta.numel(), lambda: sp.della_ranks(delta))
        return sp.della_magprune(delta, density, float(p["epsilon"]), generator, rescale=rescale, out=out,
                                 ranks=ranks, l1=l1)
    raise AssertionError(kind)


def _consensus_sum(deltas: torch.Tensor, weights: torch.Tensor, normalize: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """TIES sign consensus over the stacked weighted task vectors ``deltas`` (which it overwrites):
    the sum of the entries that agree with the elected sign, divided by the summed weights of
    those entries (1 where none) when ``normalize``. Computed in ``out`` where given.

    Elementwise steps go block by block through one-block scratch buffers, so that the only
    full-size temporaries are the elected signs and the result (the peak is the deltas plus one
    tensor, as the final sum needs anyway).
    """
    n_models = deltas.shape[0]
    flat = deltas.view(n_models, -1)
    n = flat.shape[1]
    # elected sign: +1 where the sum is >= 0, else -1 (the sum's own storage, in place)
    elected = torch.sum(deltas, dim=0, out=out).view(-1).ge_(0).mul_(2).sub_(1)
    # kept: entries whose sign agrees with the elected sign (zeros never agree): d * elected > 0
    kept = sel.scratch(n, deltas.dtype, deltas.device)
    for k in range(n_models):
        for b in sel.blocks(n):
            d = flat[k, b]
            d.mul_(torch.mul(d, elected[b], out=sel.part(kept, b)).gt_(0))  # as 1.0 / 0.0
    del elected
    mixed = torch.sum(deltas, dim=0, out=out)
    if normalize:
        # After the masking an entry was kept iff it is nonzero, except where it is NaN (a dropped
        # inf, or a NaN), and there the sum is NaN whatever the divisor: so the divisor can be
        # built block by block here instead of as a full-size tensor during the masking.
        divisor = sel.scratch(n, deltas.dtype, deltas.device)
        out = mixed.view(-1)
        for b in sel.blocks(n):
            div = sel.part(divisor, b).zero_()
            for k in range(n_models):
                nonzero = torch.ne(flat[k, b], 0, out=sel.part(kept, b))  # as 1.0 / 0.0
                div.add_(nonzero, alpha=float(weights[k]))  # + kept * w: exact, kept is 0 or 1
            # 0 -> 1 as `div + (div == 0)`: adding +0.0 elsewhere changes nothing, as div is never
            # -0.0 (+0.0 plus any sum of ±0 is +0.0); a float mask, as bool kernels are slow
            div.add_(torch.eq(div, 0, out=sel.part(kept, b)))
            out[b].div_(div)
    return mixed


def _make_kernel(method: str, params: tuple[Param, ...], sparsification: str | None, consensus: bool, randomized: bool) -> Callable[..., torch.Tensor]:
    model_specs = tuple(p for p in params if p.per_model)

    # Memory: the engine's peak is one tensor's inputs plus the kernel's full-size temporaries, so
    # every step after `t - base` works in place on kernel-owned tensors (never on the inputs,
    # which are views of the source files), and masks are made and applied block by block.
    def kernel(inputs: MergeInputs, **given: Any) -> torch.Tensor:
        g = fill_globals(method, params, given, inputs.name)
        base = require_base(method, inputs)
        generator = require_generator(method, inputs) if randomized else None
        if generator is not None and inputs.memo is not None:  # uniforms read back on a re-merge
            generator = sp.UniformStream(generator, inputs.memo, base.device)
        sources = [(i, t, p) for i, (t, p) in enumerate(zip(inputs.tensors, inputs.params)) if i != inputs.base_index]
        result = inputs.out_like(base)  # where the result goes, if the caller gave a place
        if not sources:
            return base.clone() if result is None else result.copy_(base)
        per_model = [{s.name: model_param(method, p, s, inputs.name, i) for s in model_specs} for i, _, p in sources]
        weights = torch.tensor([float(p["weight"]) for p in per_model], dtype=base.dtype, device=base.device)
        rescale = bool(g["rescale"])

        def task_vector(k: int) -> torch.Tensor | None:
            """The remembered t_k - base, if any (made now where the memo has room for it and, for
            sparsified methods, for a statistic of its size too: those save much more)."""
            memo, t = inputs.memo, sources[k][1]
            if memo is None:
                return None
            known = memo.get(("delta", k))
            if known is None and memo.room(t.numel() * t.element_size() * (1 if sparsification is None else 2)):
                known = t - base
                memo.put(("delta", k), known)
            return known

        def weighted_delta(k: int, out: torch.Tensor | None = None) -> torch.Tensor:
            """weight_k * sparsify(t_k - base), computed in ``out`` where given."""
            i, t, _ = sources[k]
            known = task_vector(k) if t.dtype == base.dtype else None
            if known is not None and sparsification is None:  # (t - base) * w in one pass
                return torch.mul(known, weights[k], out=out)
            if known is not None:  # pruned straight into the kernel's buffer: the memo keeps `known`
                d, dst = known, torch.empty_like(known) if out is None else out
            elif out is not None and t.dtype == out.dtype:
                d = dst = torch.sub(t, base, out=out)
            else:
                d = dst = t - base
            try:
                d = _sparsify(sparsification, d, per_model[k], rescale, generator, inputs.memo, k, dst)
            except ValueError as e:
                raise MergeError(f"{inputs.name}: {method}, source #{i}: {e}") from None
            d.mul_(weights[k])
            if out is not None and d is not out:
                out.copy_(d)  # only where t's dtype differs from the base's
                return out
            return d

        if consensus and len(sources) == 1 and (not g["normalize"] or 0 < float(weights[0]) < math.inf):
            # One task vector always agrees with its own sign, so the consensus keeps every nonzero
            # entry and the divisor is its weight there (1 elsewhere, where the entry is ±0 or NaN
            # and dividing by a positive weight changes nothing). `+ 0.0` turns -0.0 into +0.0, as
            # the one-term sum of the general path does: the result is bit-for-bit the same.
            mixed = weighted_delta(0, out=result).add_(0.0)
            if g["normalize"]:
                mixed /= weights[0]
        elif consensus:
            shape = (len(sources), *base.shape)
            deltas = (torch.empty(shape, dtype=base.dtype, device=base.device) if inputs.memo is None
                      else inputs.memo.scratch(shape, base.dtype))
            for k in range(len(sources)):
                weighted_delta(k, out=deltas[k])
            mixed = _consensus_sum(deltas, weights, bool(g["normalize"]), out=result)
            del deltas
        else:
            mixed = weighted_delta(0, out=result)
            for k in range(1, len(sources)):
                mixed += weighted_delta(k)
            if g["normalize"]:
                divisor = weights.sum()
                if divisor.abs() >= 1e-8:
                    mixed /= divisor
        lam = float(g["lambda"])
        if lam != 1:
            mixed *= lam
        if mixed.dtype == base.dtype and mixed.shape == base.shape:
            return mixed.add_(base)  # mixed + base is base + mixed exactly (IEEE addition commutes)
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
