"""Merge candidate recipes straight into a loaded module's parameters: no disk, no new model.

Evolution evaluates thousands of candidates. The sources are read into memory once; each `apply`
plans the recipe (metadata only), merges tensor by tensor with the same kernels and plan as
`tsugiki merge`, and copies each result into the module's existing parameter storage.

Candidates differ in their parameters only, so the kernels may remember, per output tensor, what
depends on the input tensors and the seed alone (see `tsugiki.merging.methods.base.Memo`): the task
vectors, their magnitude ranks (TIES, breadcrumbs) or DELLA ranks and L1 norms, the random uniforms
of DARE/DELLA. Each is one 4-byte-per-entry tensor per non-base model: a task-arithmetic method
keeps (models - 1) copies of the model's float32 size, a sparsified one twice that (three times
when TIES and DARE share the memos), within the merger's ``cache_bytes``; tensors past the budget
merge as without a cache (a 7B model caches its first tensors only). Results are bit-for-bit those
of a merge without memo. Kernels also write straight into the module's tensors where dtypes allow.

A tensor that every source holds bit for bit (a LoRA fine-tune's embeddings) is copied from the base
instead of merged, as on disk (`tsugiki.merging.execute.unchanged_result`); whether a job's inputs
are all the same is found once per job and input tensors, not per candidate.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Hashable, Mapping

import torch
from torch import nn

from tsugiki.errors import MergeError
from tsugiki.merging.checkpoint import Checkpoint, StateDictSource
from tsugiki.merging.execute import compute_dtype_for, inputs_unchanged, merge_job, release_inputs, warn_if_not_finite
from tsugiki.merging.plan import MergePlan, TensorJob, plan_merge
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.sources import open_checkpoint
from tsugiki.merging.tensors import TensorSource

SourceLike = TensorSource | Mapping[str, torch.Tensor] | str | os.PathLike

# fully caches a sparsified merge of two variants of a ~130M-parameter model (4 float32 copies)
DEFAULT_CACHE_BYTES = 2 << 30
SORT_SHARE = 8  # see `InMemoryMerger.apply`


def load_into_memory(ref: str, source: SourceLike, *, allow_pickle: bool = False) -> TensorSource:
    """Any source → an in-memory TensorSource (files are read once, tensor by tensor)."""
    if isinstance(source, StateDictSource):
        return source
    if isinstance(source, Mapping):
        return StateDictSource(source, label=ref)
    if isinstance(source, (str, os.PathLike)):
        source = open_checkpoint(str(source), allow_pickle=allow_pickle, label=ref)  # MODEL+ADAPTER: merged in
    with source if isinstance(source, Checkpoint) else _nullcontext():
        tensors = {n: source.read(n) for n in source.names()}
        config = source.config() if hasattr(source, "config") else None
    return StateDictSource(tensors, label=ref, config=config)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _version(t: torch.Tensor) -> int | None:
    """torch's count of in-place edits of ``t`` (None for inference tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return None


class _Budget:
    """The bytes all memos may keep, and one scratch buffer they share (the kernels' temporaries
    for one tensor: a few times the largest tensor, not counted in the budget)."""

    def __init__(self, limit: int, device: torch.device):
        self.limit, self.used, self.device = limit, 0, device
        self.sorts_left = 0  # entries this apply may still sort (see `InMemoryMerger.apply`)
        self.buffer = torch.empty(0, dtype=torch.uint8, device=device)

    def scratch(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        if self.buffer.numel() < nbytes:
            self.buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self.buffer[:nbytes].view(dtype).view(shape)


class _JobMemo:
    """The `Memo` of one output tensor: what it holds is valid for one signature (input tensors,
    their versions, base, seed); the merger clears it when the signature changes."""

    def __init__(self, budget: _Budget, signature: Hashable):
        self.budget, self.signature = budget, signature
        self.store: dict[Hashable, torch.Tensor] = {}
        self.repeated = False  # set by the merger from the second call with this signature on

    def get(self, key: Hashable) -> torch.Tensor | None:
        return self.store.get(key)

    def may_sort(self, n: int) -> bool:
        if not self.repeated or self.budget.sorts_left <= 0:
            return False
        self.budget.sorts_left -= n
        return True

    def room(self, nbytes: int) -> bool:
        return self.budget.used + nbytes <= self.budget.limit

    def put(self, key: Hashable, value: torch.Tensor) -> bool:
        nbytes = value.numel() * value.element_size()
        if key in self.store or not self.room(nbytes):
            return False
        self.store[key] = value
        self.budget.used += nbytes
        return True

    def scratch(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.budget.scratch(shape, dtype)

    def clear(self) -> None:
        self.budget.used -= sum(v.numel() * v.element_size() for v in self.store.values())
        self.store.clear()


class InMemoryMerger:
    """Writes merges of `sources` into `module` in place.

    name_map translates a merged tensor's name (standalone-LM layout, e.g. `model.layers.0...`) to the
    module's parameter name (e.g. a VLM's `model.language_model.layers.0...`); identity by default.
    cache_bytes bounds what is remembered between candidates (see the module doc; 0: nothing), on
    the merge device. copy_unchanged=False merges tensors that all sources hold bit for bit too
    (the results are the same; see the module doc).
    """

    def __init__(self, module: nn.Module, sources: Mapping[str, SourceLike], *,
                 name_map: Callable[[str], str] | None = None, device: str | torch.device | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, copy_unchanged: bool = True, vocab: Any = None):
        self.module, self.vocab = module, vocab  # vocab: the output vocabulary (tsugiki.merging.vocab), if any
        self.copy_unchanged = copy_unchanged
        self._unchanged: dict[str, tuple[Hashable, bool]] = {}  # by output tensor name: (signature, answer)
        self._holds: dict[str, tuple[int, int | None, int | None]] = {}  # by module tensor name: see _still_holds
        self.sources = {ref: load_into_memory(ref, s) for ref, s in sources.items()}
        # sources never change between candidates: check them for NaN/Inf once, not per apply
        for source in self.sources.values():
            for name in source.names():
                warn_if_not_finite(source.read(name), source, name)
        self.name_map = name_map or (lambda n: n)
        self.targets = dict(module.state_dict(keep_vars=True))
        first = next(iter(self.targets.values()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        self._budget = _Budget(cache_bytes, self.device)
        self._memos: dict[str, _JobMemo] = {}  # by output tensor name

    @property
    def cache_used(self) -> int:
        """Bytes remembered between candidates now (at most cache_bytes)."""
        return self._budget.used

    def _signature(self, job: TensorJob) -> Hashable:
        tensors = [self.sources[ref].view(name) for ref, name in job.inputs]
        # the tensors' identity and version: a source edited in place invalidates what was derived from it
        return (job.inputs, job.base_index, job.seed, tuple((t.data_ptr(), _version(t)) for t in tensors))

    def _is_unchanged(self, job: TensorJob, plan: MergePlan) -> bool:
        """`inputs_unchanged`, remembered while the job's input tensors stay the same."""
        if not self.copy_unchanged:
            return False
        signature = (plan.method.name, self._signature(job))
        known = self._unchanged.get(job.out_name)
        if known is None or known[0] != signature:
            known = self._unchanged[job.out_name] = (signature, inputs_unchanged(job, plan, self.sources))
        return known[1]

    def _memo(self, job: TensorJob) -> _JobMemo | None:
        if self._budget.limit <= 0:
            return None
        signature = self._signature(job)
        memo = self._memos.get(job.out_name)
        if memo is not None and memo.signature == signature:
            memo.repeated = True
            return memo
        if memo is not None:
            memo.clear()
        memo = self._memos[job.out_name] = _JobMemo(self._budget, signature)
        return memo

    def plan(self, recipe: Recipe, *, seed: int | None = None) -> MergePlan:
        plan = plan_merge(recipe, self.sources, seed=seed, vocab=self.vocab)
        for job in plan.jobs:
            target = self.targets.get(self.name_map(job.out_name))
            if target is None:
                raise MergeError(f"module has no parameter {self.name_map(job.out_name)!r} for merged tensor {job.out_name!r}")
            if tuple(target.shape) != job.shape:
                raise MergeError(f"{job.out_name}: merged shape {list(job.shape)} != module's {list(target.shape)}")
        return plan

    @torch.no_grad()
    def apply(self, recipe: Recipe, *, seed: int | None = None) -> MergePlan:
        """Merge `recipe` into the module's parameters (in place); returns the plan used."""
        plan = self.plan(recipe, seed=seed)
        # statistics built by sorting (TIES's magnitude ranks: one costs about four selections, and
        # saves one per later candidate) are spread over candidates: each apply sorts about as many
        # entries as 1/SORT_SHARE of the merged model, so no candidate stalls the search
        self._budget.sorts_left = sum(math.prod(job.shape) for job in plan.jobs) // SORT_SHARE
        for job in plan.jobs:
            name = self.name_map(job.out_name)
            target = self.targets[name]
            try:
                held = None
                if self._is_unchanged(job, plan):  # no kernel: nothing to remember or write in place
                    tensor = merge_job(job, plan, self.sources, self.device, check_inputs=False, unchanged=True)
                    held = self._base_held(job, tensor)
                    if held is not None and self._holds.get(name) == (*held, _version(target)):
                        continue  # target holds it from an earlier apply; see _base_held
                else:
                    tensor = merge_job(job, plan, self.sources, self.device, check_inputs=False, memo=self._memo(job),
                                       out=self._writable(job, target), unchanged=False)
                if tensor.data_ptr() != target.data_ptr():  # else the kernel computed in place
                    target.copy_(tensor)
                self._holds.pop(name, None)
                if held is not None and None not in (*held, _version(target)):
                    self._holds[name] = (*held, _version(target))
            finally:
                release_inputs(job, self.sources)
        return plan

    def _base_held(self, job: TensorJob, tensor: torch.Tensor) -> tuple[int, int | None] | None:
        """An unchanged result that is the base source's own tensor (not a fresh copy) is remembered with torch's
        version counters of it and its target once copied; while neither is written again, later applies
        skip the copy, so the target's version stays and an engine that swaps only edited tensors leaves it
        be (a LoRA fine-tune's embedding: 63 % of Gemma 3 270M, the same in every candidate)."""
        ref, source_name = job.inputs[job.base_index]
        if tensor.data_ptr() != self.sources[ref].view(source_name).data_ptr():
            return None
        return tensor.data_ptr(), _version(tensor)

    def _writable(self, job: TensorJob, target: torch.Tensor) -> torch.Tensor | None:
        """``target`` where a kernel may compute straight into it (no result copy, no temporary):
        same dtype as the kernels compute in, on the merge device, contiguous, sharing no memory
        with an input (a source may be the module's own tensors)."""
        if target.dtype != compute_dtype_for(job.in_dtype) or target.device != self.device or not target.is_contiguous():
            return None
        storage = target.untyped_storage().data_ptr()
        if any(self.sources[ref].view(name).untyped_storage().data_ptr() == storage for ref, name in job.inputs):
            return None
        return target.detach()
