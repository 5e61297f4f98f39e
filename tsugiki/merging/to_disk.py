"""`tsugiki merge`: a recipe → a model directory that `from_pretrained` loads, written atomically."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping

from tsugiki.merging.sources import open_sources
from tsugiki.merging.execute import MergeOptions, aliases_input, iter_merged, parse_dtype
from tsugiki.merging.output import MergeResult, WeightsLayout, write_merged_dir
from tsugiki.merging.output_files import copy_side_files, merged_config, model_card
from tsugiki.merging.plan import plan_merge
from tsugiki.merging.provenance import Named
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.vocab import recipe_vocabulary
from tsugiki.merging.writer import OutputTensor

log = logging.getLogger("tsugiki.merge")


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
        out_dtype = options.out_dtype or parse_dtype(recipe.out_dtype or recipe.dtype)

        def dtype_of(job):
            # integer/bool tensors are never cast; floats take the requested dtype or keep their own
            return job.in_dtype if out_dtype is None or not job.in_dtype.is_floating_point else out_dtype

        entries = [OutputTensor(j.out_name, dtype_of(j), j.shape) for j in plan.jobs]
        configs = {r: s.config() for r, s in sources.items()}

        def tensors():
            for job, tensor in iter_merged(plan, sources, device=options.device, progress=options.progress):
                target = dtype_of(job)
                if not target.is_floating_point:
                    tensor = tensor.round()
                tensor = tensor.to(dtype=target, device="cpu")
                yield job.out_name, tensor, aliases_input(job, tensor, sources)

        def side_files(tmp: Path) -> list[str]:
            (tmp / "config.json").write_text(json.dumps(merged_config(plan, configs, out_dtype), indent=2) + "\n")
            return ["config.json"] + copy_side_files({r: s.model_dir for r, s in sources.items()}, recipe, plan, tmp)

        return write_merged_dir(out, options, recipe, sources, WeightsLayout(entries, {"tsugiki_method": plan.method.name}),
                                tensors(), side_files=side_files, card=lambda d: model_card(d.recipe, plan, d.card),
                                base_dir=base_dir, named=named, start=start)
    finally:
        for s in sources.values():
            s.close()


__all__ = ["MergeOptions", "MergeResult", "merge_to_disk", "write_merged_dir"]
