"""Run a merge plan tensor by tensor: read the inputs of one output tensor, merge, check, hand it on.

Peak memory is the inputs of one tensor, their float32 copies and the result; nothing accumulates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from tsugiki.errors import MergeError
from tsugiki.merging.checkpoint import TensorSource
from tsugiki.merging.methods.base import Memo, MergeInputs
from tsugiki.merging.plan import MergePlan, TensorJob

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


def merge_job(job: TensorJob, plan: MergePlan, sources: Mapping[str, TensorSource], device: torch.device | str = "cpu",
              check_inputs: bool = True, memo: Memo | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Compute one output tensor (in compute dtype, on `device`). Inputs are views: call
    `release_inputs(job, sources)` once the result has been consumed. check_inputs=False skips the
    NaN/Inf warning for inputs (for callers that checked their sources once up front). ``memo``: the
    caller's store for this job's inputs and seed (see `Memo`); ``out``: where the kernel may write
    the result (see `MergeInputs.out`; a NaN/Inf result is reported after it was written there)."""
    work = compute_dtype_for(job.in_dtype)
    tensors = []
    for ref, name in job.inputs:
        t = sources[ref].view(name).to(device=device, dtype=work)
        if check_inputs:
            warn_if_not_finite(t, sources[ref], name)
        tensors.append(t)
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


def release_inputs(job: TensorJob, sources: Mapping[str, TensorSource]) -> None:
    for ref, name in job.inputs:
        sources[ref].release(name)


def iter_merged(plan: MergePlan, sources: Mapping[str, TensorSource], *, device: str = "cpu",
                progress: bool = False, desc: str = "merging", check_inputs: bool = True
                ) -> Iterator[tuple[TensorJob, torch.Tensor]]:
    """Yield each job with its merged tensor; the tensor may share memory with mapped inputs, so it
    is only valid until the next iteration (consume it — write or copy — before asking for more)."""
    jobs: Callable = tqdm if progress else (lambda x, **_: x)
    for job in jobs(plan.jobs, desc=desc, unit="tensor", leave=False):
        try:
            yield job, merge_job(job, plan, sources, device, check_inputs)
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
