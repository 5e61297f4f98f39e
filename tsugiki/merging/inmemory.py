"""Merge candidate recipes straight into a loaded module's parameters: no disk, no new model.

Evolution evaluates thousands of candidates. The sources are read into memory once; each `apply`
plans the recipe (metadata only), merges tensor by tensor with the same kernels and plan as
`tsugiki merge`, and copies each result into the module's existing parameter storage.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import torch
from torch import nn

from tsugiki.errors import MergeError
from tsugiki.merging.checkpoint import Checkpoint, StateDictSource, TensorSource, resolve_model_ref
from tsugiki.merging.execute import iter_merged, warn_if_not_finite
from tsugiki.merging.plan import MergePlan, plan_merge
from tsugiki.merging.recipe import Recipe

SourceLike = TensorSource | Mapping[str, torch.Tensor] | str | os.PathLike


def load_into_memory(ref: str, source: SourceLike, *, allow_pickle: bool = False) -> TensorSource:
    """Any source → an in-memory TensorSource (files are read once, tensor by tensor)."""
    if isinstance(source, StateDictSource):
        return source
    if isinstance(source, Mapping):
        return StateDictSource(source, label=ref)
    if isinstance(source, (str, os.PathLike)):
        source = Checkpoint(resolve_model_ref(str(source)), allow_pickle=allow_pickle, label=ref)
    with source if isinstance(source, Checkpoint) else _nullcontext():
        tensors = {n: source.read(n) for n in source.names()}
        config = source.config() if hasattr(source, "config") else None
    return StateDictSource(tensors, label=ref, config=config)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class InMemoryMerger:
    """Writes merges of `sources` into `module` in place.

    name_map translates a merged tensor's name (standalone-LM layout, e.g. `model.layers.0...`) to the
    module's parameter name (e.g. a VLM's `model.language_model.layers.0...`); identity by default.
    """

    def __init__(self, module: nn.Module, sources: Mapping[str, SourceLike], *,
                 name_map: Callable[[str], str] | None = None, device: str | torch.device | None = None):
        self.module = module
        self.sources = {ref: load_into_memory(ref, s) for ref, s in sources.items()}
        # sources never change between candidates: check them for NaN/Inf once, not per apply
        for source in self.sources.values():
            for name in source.names():
                warn_if_not_finite(source.read(name), source, name)
        self.name_map = name_map or (lambda n: n)
        self.targets = dict(module.state_dict(keep_vars=True))
        first = next(iter(self.targets.values()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))

    def plan(self, recipe: Recipe, *, seed: int | None = None) -> MergePlan:
        plan = plan_merge(recipe, self.sources, seed=seed)
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
        for job, tensor in iter_merged(plan, self.sources, device=self.device, check_inputs=False):
            self.targets[self.name_map(job.out_name)].copy_(tensor)
        return plan
