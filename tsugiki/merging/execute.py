"""Run a merge plan tensor by tensor: read the inputs of one output tensor, merge, check, hand it on.

Peak memory is the inputs of one tensor, their float32 copies and the result; nothing accumulates.

Unchanged tensors are copied, not merged: where every source of a task-vector method holds the
base's tensor bit for bit (a LoRA fine-tune leaves the embeddings, often most of a small model's
weights, as they were), the result is the base (see `unchanged_result` for why that is exact).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from tsugiki.errors import MergeError
from tsugiki.merging.methods.base import Memo, MergeInputs
from tsugiki.merging.plan import MergePlan, TensorJob
from tsugiki.merging.tensors import TensorSource
from tsugiki.progress import progress_bar

log = logging.getLogger("tsugiki.merge")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "int64": torch.int64}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    try:
        return DTYPES[name]
    except KeyError:
        raise MergeError(f"unknown dtype {name!r} (use one of {', '.join(DTYPES)})") from None


def compute_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Kernels run in float32 (float64 stays float64): merging in bf16 would round every step."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def all_finite(t: torch.Tensor) -> bool:
    # NaN/Inf anywhere make the sum NaN/Inf, so one cheap reduction clears almost every tensor;
    # only a sum that overflowed from finite values needs the element-wise check
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def warn_if_not_finite(t: torch.Tensor, source: TensorSource, name: str) -> None:
    if not all_finite(t):
        log.warning("%s: tensor %r contains NaN/Inf", source.label, name)


# Methods whose result is base + f(task vectors), every task vector t_i - base entering f only through
# elementwise masks and per-tensor scalars (weights, consensus, normalization, lambda), so that zero
# task vectors give base + (one signed zero): all of tsugiki.merging.methods.task_arithmetic's
# family. Not linear or slerp (weighted sums of equal tensors round), nor model_stock (its angle
# between zero task vectors is 0/0).
BASE_PLUS_TASK_VECTORS = frozenset({
    "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear",
})
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size integer views
_PREFIX = 4096  # entries compared first: tensors that differ almost always differ there


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()])


def inputs_unchanged(job: TensorJob, plan: MergePlan, sources: Mapping[str, TensorSource]) -> bool:
    """Whether `job`'s method returns its base and every input is the base's tensor bit for bit
    (same dtype, same bytes; NaNs with the same payload compare equal, -0.0 and +0.0 do not)."""
    if plan.method.name not in BASE_PLUS_TASK_VECTORS or job.base_index is None or len(job.inputs) < 2:
        return False
    if job.vocabulary:  # rows are laid out in the output vocabulary first: the inputs are not the output's rows
        return False
    base = sources[job.inputs[job.base_index][0]].view(job.inputs[job.base_index][1])
    if base.dim() == 0 or not base.is_floating_point() or base.element_size() not in _BITS:
        return False
    b = _bits(base)
    for i, (ref, name) in enumerate(job.inputs):
        if i == job.base_index:
            continue
        t = sources[ref].view(name)
        if t.dtype != base.dtype or t.shape != base.shape:
            return False
        if t.data_ptr() == base.data_ptr() and t.stride() == base.stride():
            continue  # the same memory
        bt = _bits(t)
        if not (torch.equal(bt.reshape(-1)[:_PREFIX], b.reshape(-1)[:_PREFIX]) and torch.equal(bt, b)):
            return False
    return True


def unchanged_result(job: TensorJob, plan: MergePlan, sources: Mapping[str, TensorSource], device: torch.device | str,
                     check_inputs: bool = True) -> torch.Tensor | None:
    """The result of `job` when `inputs_unchanged` holds, without running the kernel on the tensor;
    None where the kernel must run (it fails, or makes NaN, on these parameters).

    Why this is exact: each task vector is x - x = +0.0 everywhere (finite x; a NaN/Inf base makes the
    kernel's result NaN, and so fails the same finiteness check as the copy does). The kernels zero
    entries by multiplying by a 0/1 mask and skip the L1 rescale at a zero norm, so the pruned task
    vectors stay +0.0; weights, sign consensus (nothing kept: divisor 1), normalization and lambda
    are scalars per tensor. The merged task vector is therefore one signed zero z (or NaN, where a
    scalar overflows the compute dtype) in every entry, and the result is base + z: the base bit for
    bit, except that -0.0 + +0.0 = +0.0. The kernel run on a 3-entry probe [-0.0, +0.0, 1.0] with
    the same parameters shows z (and any error), and the base's -0.0 entries are turned into +0.0
    where it is +0.0."""
    work = compute_dtype_for(job.in_dtype)
    ref, name = job.inputs[job.base_index]
    base = sources[ref].view(name)
    probe = torch.tensor([-0.0, 0.0, 1.0], dtype=work).view((1,) * (base.dim() - 1) + (3,))
    generator = torch.Generator().manual_seed(job.seed) if job.seed is not None else None
    try:
        got = plan.method(MergeInputs([probe] * len(job.inputs), job.base_index, job.model_params, generator, job.out_name),
                          **job.global_params).reshape(-1)
    except (MergeError, RuntimeError, ValueError):
        return None
    if got.dtype != work or not torch.equal(_bits(got[1:]), _bits(probe.reshape(-1)[1:])) or got[0] != 0:
        return None  # NaN (an overflowing scalar) or anything unforeseen: compute it
    if not all_finite(base):  # every input is this tensor: warn as for each input, fail as the kernel's NaN does
        if check_inputs:
            for r, n in job.inputs:
                log.warning("%s: tensor %r contains NaN/Inf", sources[r].label, n)
        raise MergeError(f"{job.out_name}: merged tensor contains NaN/Inf (method {plan.method.name})")
    result = base.to(device=device, dtype=work)
    bits = _bits(base)
    # -0.0 is the sign bit alone: the smallest integer of the view, so one reduction finds it
    if not torch.signbit(got[0]) and int(bits.min()) == torch.iinfo(bits.dtype).min:
        result = result + 0.0  # z = +0.0 turns the base's -0.0 into +0.0
    return result


def merge_job(job: TensorJob, plan: MergePlan, sources: Mapping[str, TensorSource], device: torch.device | str = "cpu",
              check_inputs: bool = True, memo: Memo | None = None, out: torch.Tensor | None = None,
              unchanged: bool | None = None) -> torch.Tensor:
    """Compute one output tensor (in compute dtype, on `device`). Inputs are views: call
    `release_inputs(job, sources)` once the result has been consumed. check_inputs=False skips the
    NaN/Inf warning for inputs (for callers that checked their sources once up front). ``memo``: the
    caller's store for this job's inputs and seed (see `Memo`); ``out``: where the kernel may write
    the result (see `MergeInputs.out`; a NaN/Inf result is reported after it was written there).
    ``unchanged``: `inputs_unchanged` for this job if the caller knows it (None: found out here;
    False: always run the kernel); where true, the base is copied (`unchanged_result`)."""
    if unchanged is None:
        unchanged = inputs_unchanged(job, plan, sources)
    if unchanged:
        copied = unchanged_result(job, plan, sources, device, check_inputs)
        if copied is not None:
            return copied
    work = compute_dtype_for(job.in_dtype)
    tensors = []
    for ref, name in job.inputs:
        t = sources[ref].view(name).to(device=device, dtype=work)
        if check_inputs:
            warn_if_not_finite(t, sources[ref], name)
        tensors.append(t)
    if job.vocabulary:
        refs = [ref for ref, _ in job.inputs]
        base = refs[job.base_index] if job.base_index is not None else None
        laid = plan.vocab.layout(dict(zip(refs, tensors)), base, job.out_name)
        tensors = [laid[ref] for ref in refs]
    # a CPU generator whatever the device: the same seed draws the same masks on CPU and GPU
    generator = torch.Generator().manual_seed(job.seed) if job.seed is not None else None
    inputs = MergeInputs(tensors, job.base_index, job.model_params, generator, job.out_name, memo, out)
    try:
        out = plan.method(inputs, **job.global_params)
    except MergeError:
        raise
    except (RuntimeError, ValueError) as e:
        raise MergeError(f"{job.out_name}: {plan.method.name} failed: {e}") from None
    if not all_finite(out):
        raise MergeError(f"{job.out_name}: merged tensor contains NaN/Inf (method {plan.method.name})")
    return out


def aliases_input(job: TensorJob, tensor: torch.Tensor, sources: Mapping[str, TensorSource]) -> bool:
    """Whether ``tensor`` is one of the job's (mapped) inputs itself (passthrough, a copied unchanged
    tensor): it is released with them, so a background writer must have written it by then."""
    ptr = tensor.data_ptr()
    return any(sources[ref].view(name).data_ptr() == ptr for ref, name in job.inputs)


def release_inputs(job: TensorJob, sources: Mapping[str, TensorSource]) -> None:
    for ref, name in job.inputs:
        sources[ref].release(name)


def iter_merged(plan: MergePlan, sources: Mapping[str, TensorSource], *, device: str = "cpu",
                progress: bool = False, desc: str = "merging", check_inputs: bool = True,
                copy_unchanged: bool = True) -> Iterator[tuple[TensorJob, torch.Tensor]]:
    """Yield each job with its merged tensor; the tensor may share memory with mapped inputs, so it
    is only valid until the next iteration (consume it — write or copy — before asking for more).
    copy_unchanged=False runs every kernel (see `unchanged_result`; the results are the same)."""
    for job in progress_bar(plan.jobs, desc=desc, unit="tensor", leave=False, disable=not progress):
        try:
            yield job, merge_job(job, plan, sources, device, check_inputs, unchanged=None if copy_unchanged else False)
        finally:
            release_inputs(job, sources)


@dataclass(frozen=True)
class MergeOptions:
    out_dtype: torch.dtype | None = None  # None: recipe's out_dtype/dtype, else each input's dtype
    device: str = "cpu"
    allow_pickle: bool = False
    force: bool = False
    max_shard_bytes: int | None = None
    seed: int | None = None
    progress: bool = True
