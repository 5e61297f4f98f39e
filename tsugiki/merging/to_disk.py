"""`tsugiki merge`: a recipe → a model directory that `from_pretrained` loads, written atomically.

:func:`write_plan` is the to-disk skeleton every family shares (causal LMs here, LLaVA grafts in
:mod:`tsugiki.vlm.merge`, SDXL UNets in :mod:`tsugiki.diffusion.merge`): the output dtype, the planned
output tensors, the merge loop (cast, rounding, aliasing) and the write of the dir
(:func:`~tsugiki.merging.output.write_merged_dir`). A family opens its sources, plans, checks, and hands
over only what differs: names, extra tensors, side files and the card. :func:`merge_to_disk` is the
causal-LM family.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch

from tsugiki.merging.sources import open_sources
from tsugiki.merging.execute import MergeOptions, aliases_input, iter_merged, parse_dtype
from tsugiki.merging.output import MergeResult, WeightsLayout, write_merged_dir
from tsugiki.merging.output_files import copy_side_files, merged_config, model_card
from tsugiki.merging.plan import MergePlan, TensorJob, plan_merge
from tsugiki.merging.provenance import Description, Named
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.tensors import TensorSource
from tsugiki.merging.vocab import recipe_vocabulary
from tsugiki.merging.writer import OutputTensor

log = logging.getLogger("tsugiki.merge")


@dataclass(frozen=True)
class Tail:
    """Rows appended to a merged tensor after its cast (a LLaVA keeps its own embedding rows beyond the
    merged vocabulary): ``rows`` of them, read when the tensor is written."""

    rows: int
    read: Callable[[], torch.Tensor]


def write_plan(out: str | Path, options: MergeOptions, recipe: Recipe, plan: MergePlan, sources: Mapping[str, TensorSource], *,
               side_files: Callable[[Path, torch.dtype | None], list[str]], card: Callable[[Description], str],
               opened: Mapping[str, object] | None = None, metadata: Mapping[str, str] | None = None,
               copied: tuple[TensorSource, Sequence[str]] | None = None, rename: Callable[[str], str] | None = None,
               tails: Mapping[str, Tail] | None = None, weights_dir: str = "", prefix: str = "model", desc: str = "merging",
               first_files: Callable[[Path], list[str]] | None = None, base_dir: Path | None = None,
               named: Mapping[str, Named] | None = None, extra_refs: Sequence[str] = (),
               start: float | None = None) -> MergeResult:
    """Run ``plan`` over ``sources`` and write the merged dir ``out``.

    Floats take the output dtype (``options.out_dtype``, else the recipe's ``out_dtype`` or ``dtype``, else
    their own); integer and bool tensors keep theirs and are rounded. What a family adds: ``copied``
    (a source and names: tensors written first, bit for bit, under their own names), ``rename`` (a job's
    output name → its name in the dir), ``tails`` (by job output name), ``side_files(tmp, out_dtype)``,
    ``card``, the header ``metadata`` beside ``tsugiki_method``, ``opened`` (what the tensors are read
    from when ``sources`` are views of it: hashed and checked unchanged; default ``sources``); the rest
    goes to :func:`~tsugiki.merging.output.write_merged_dir` as it is. UNet plans duck-type ``plan``."""
    out_dtype = options.out_dtype or parse_dtype(recipe.out_dtype or recipe.dtype)
    tails = tails or {}
    name_of = rename or (lambda name: name)

    def dtype_of(job: TensorJob) -> torch.dtype:
        # integer/bool tensors are never cast; floats take the requested dtype or keep their own
        return job.in_dtype if out_dtype is None or not job.in_dtype.is_floating_point else out_dtype

    def shape_of(job: TensorJob) -> tuple[int, ...]:
        tail = tails.get(job.out_name)
        return job.shape if tail is None else (job.shape[0] + tail.rows, *job.shape[1:])

    copy_from, copy_names = copied if copied is not None else (None, ())
    verbatim = [copy_from.info(n) for n in copy_names] if copy_from is not None else []
    entries = [OutputTensor(i.name, i.dtype, i.shape) for i in verbatim]
    entries += [OutputTensor(name_of(j.out_name), dtype_of(j), shape_of(j)) for j in plan.jobs]

    def tensors() -> Iterator[tuple[str, torch.Tensor, bool]]:
        for info in verbatim:  # same bytes, same dtype, same name
            yield info.name, copy_from.read(info.name), False  # type: ignore[union-attr]
        for job, tensor in iter_merged(plan, sources, device=options.device, progress=options.progress, desc=desc):
            target = dtype_of(job)
            if not target.is_floating_point:
                tensor = tensor.round()
            tensor = tensor.to(dtype=target, device="cpu")
            tail = tails.get(job.out_name)
            if tail is not None:
                tensor = torch.cat([tensor, tail.read().to(target)])
            yield name_of(job.out_name), tensor, aliases_input(job, tensor, sources)

    layout = WeightsLayout(entries, {"tsugiki_method": plan.method.name, **(metadata or {})}, weights_dir=weights_dir, prefix=prefix)
    return write_merged_dir(out, options, recipe, sources if opened is None else opened, layout, tensors(),
                            side_files=lambda tmp: side_files(tmp, out_dtype), card=card, first_files=first_files,
                            base_dir=base_dir, named=named, extra_refs=extra_refs, start=start)


def merge_to_disk(recipe: Recipe, out: str | Path, options: MergeOptions = MergeOptions(), *,
                  base_dir: Path | None = None, named: Mapping[str, Named] | None = None) -> MergeResult:
    """Merge ``recipe`` into the model dir ``out``; ``named``: how the user named sources whose refs in
    ``recipe`` are not the user's own words (see :mod:`tsugiki.merging.provenance`)."""
    start = time.perf_counter()
    sources = open_sources(recipe.model_refs(), base_dir=base_dir, allow_pickle=options.allow_pickle, where=recipe.ref_where)
    try:
        plan = plan_merge(recipe, sources, seed=options.seed, vocab=recipe_vocabulary(recipe, sources, base_dir))
        if plan.arch.inferred:
            log.warning("%s: architecture not known to tsugiki; per-layer tensors inferred from key patterns (%s…)",
                        plan.donor, plan.arch.layer_prefix)
        configs = {r: s.config() for r, s in sources.items()}

        def side_files(tmp: Path, out_dtype: torch.dtype | None) -> list[str]:
            (tmp / "config.json").write_text(json.dumps(merged_config(plan, configs, out_dtype), indent=2) + "\n")
            return ["config.json"] + copy_side_files({r: s.model_dir for r, s in sources.items()}, recipe, plan, tmp)

        return write_plan(out, options, recipe, plan, sources, side_files=side_files,
                          card=lambda d: model_card(d.recipe, plan, d.card), base_dir=base_dir, named=named, start=start)
    finally:
        for s in sources.values():
            s.close()


__all__ = ["MergeOptions", "MergeResult", "Tail", "merge_to_disk", "write_plan"]
