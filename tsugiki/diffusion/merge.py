"""`tsugiki merge` for SDXL: merge UNets with the engine's kernels, write a complete pipeline folder.

Recipe semantics (mergekit's `models:` form; `slices:` is refused for UNets):
- the UNet inputs are the recipe's models (plus an unlisted `base_model`, as mergekit does); every
  merge method works, `passthrough` with one model is a whole-UNet swap;
- parameters resolve per tensor against its *match name* `BLOCK/group/diffusers.name` (see
  `tsugiki.diffusion.blocks`): filters select blocks and groups, a 20-value gradient gives one value
  per block (BASE, IN00..IN08, M00, OUT00..OUT08);
- the VAE, scheduler and model_index come from the *pipeline donor* (`components_from`, else
  `base_model`, else the first model), a diffusers SDXL pipeline folder; the text encoders and
  tokenizers come from `tokenizer_source` when given (e.g. a Japanese text encoder), else from the
  pipeline donor. They are copied bit for bit; only `unet/` is new.

Output: `OUT/unet/diffusion_pytorch_model.safetensors` (+ `config.json`, the donor's UNet config), the
copied components, `tsugiki_recipe.yaml`, `README.md`; with `single_file=True` also
`OUT/sdxl_unet.safetensors`, the merged UNet in the original layout (`model.diffusion_model.*`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from tsugiki.version import __version__
from tsugiki.diffusion.blocks import block_t, locate, match_name
from tsugiki.diffusion.layout import ORIGINAL_PREFIX, sdxl_unet_table
from tsugiki.diffusion.pipeline_files import check_compatible, component_config, copy_components
from tsugiki.diffusion.sources import UNetSource, diffusion_kind
from tsugiki.errors import CheckpointError, MergeError, RecipeError
from tsugiki.merging.checkpoint import resolve_model_ref
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.output import MergeResult
from tsugiki.merging.methods import get_method
from tsugiki.merging.methods.base import MergeMethod
from tsugiki.merging.plan import TensorJob, tensor_seed
from tsugiki.merging.provenance import Description, Named
from tsugiki.merging.recipe import Recipe, resolve_params
from tsugiki.merging.to_disk import write_plan
from tsugiki.merging.writer import OutputTensor, ShardedSafetensorsWriter

log = logging.getLogger("tsugiki.diffusion")
SINGLE_FILE_NAME = "sdxl_unet.safetensors"


def _local_path(ref: str, base_dir: Path | None) -> Path | None:
    p = Path(ref).expanduser()
    for c in ([p] if p.is_absolute() or base_dir is None else [base_dir / p, p]):
        if c.exists():
            return c
    return None


def is_sdxl_recipe(recipe: Recipe, base_dir: Path | None = None) -> bool:
    """True when any model of the recipe is a local diffusion model (pipeline folder, UNet folder or
    original-layout single file). Looks at local paths only (never the hub) and reads headers only."""
    for ref in recipe.model_refs():
        p = _local_path(ref, base_dir)
        if p is not None and diffusion_kind(p) is not None:
            return True
    return False


@dataclass(frozen=True)
class UNetPlan:
    """What `tsugiki.merging.execute.iter_merged` needs: the method and one job per UNet tensor."""

    method: MergeMethod
    jobs: tuple[TensorJob, ...]
    inputs: tuple[str, ...]  # UNet input refs, kernel order


def plan_unet_merge(recipe: Recipe, sources: Mapping[str, UNetSource], *, seed: int | None = None) -> UNetPlan:
    """One job per SDXL UNet tensor (table order); parameters resolved on match names."""
    if recipe.slices is not None:
        raise RecipeError(f"{recipe.where('slices')}slices: not supported for SDXL UNets; use models: with block filters")
    method = get_method(recipe.merge_method)
    inputs = [s.model for s in recipe.sources(None)]
    base = recipe.base_model
    base_index = inputs.index(base) if base in inputs else None
    if method.base == "required" and base_index is None:
        raise MergeError(f"merge method {method.name!r} needs base_model among the UNet inputs")
    seed = recipe.seed if seed is None else seed
    jobs = []
    for name in sdxl_unet_table().diffusers_names():
        infos = [sources[r].info(name) for r in inputs]
        for r, info in zip(inputs[1:], infos[1:]):
            if info.shape != infos[0].shape:
                raise MergeError(f"{name}: shape {list(info.shape)} in {r} differs from {list(infos[0].shape)} in {inputs[0]}")
        key = match_name(name)
        block, _ = locate(name)
        global_params, model_params = resolve_params(method, recipe, None, key, block_t(block), inputs,
                                                     input_names=[key] * len(inputs))
        jobs.append(TensorJob(
            out_name=name, inputs=tuple((r, name) for r in inputs), base_index=base_index,
            global_params=global_params, model_params=tuple(model_params), shape=infos[0].shape,
            in_dtype=infos[0].dtype, seed=tensor_seed(seed or 0, name) if method.randomized else None,
        ))
    return UNetPlan(method, tuple(jobs), tuple(inputs))


def _pipeline_dir(ref: str, paths: Mapping[str, Path], role: str) -> Path:
    p = paths[ref]
    if diffusion_kind(p) != "pipeline":
        raise CheckpointError(
            f"{ref}: the {role} must be a diffusers SDXL pipeline folder (model_index.json, unet/, vae/, "
            f"text_encoder/, ...); a UNet-only folder or single file has no {role.split()[0]} components"
        )
    return p


def merge_sdxl_to_disk(recipe: Recipe, out: str | Path, options: MergeOptions = MergeOptions(), *,
                       base_dir: Path | None = None, components_from: str | None = None,
                       single_file: bool = False, named: Mapping[str, Named] | None = None) -> MergeResult:
    """Merge the recipe's SDXL UNets and write a diffusers pipeline folder at `out` (atomically);
    ``named`` as for :func:`tsugiki.merging.to_disk.merge_to_disk`."""
    start = time.perf_counter()
    refs = recipe.model_refs()
    if recipe.builds_tokenizer:
        raise RecipeError("an SDXL merge takes its text encoders and tokenizers from one pipeline "
                          "(tokenizer_source: base or a pipeline); union and token rules are for causal-LM merges")
    text_ref = recipe.base_model if recipe.tokenizer_source == "base" else recipe.tokenizer_source
    donor_ref = components_from or recipe.base_model or refs[0]
    extra = [r for r in (donor_ref, text_ref) if r is not None and r not in refs]
    paths = {r: resolve_model_ref(r, base_dir=base_dir) for r in refs + extra}
    pipeline_dir = _pipeline_dir(donor_ref, paths, "pipeline donor (VAE, scheduler)")
    text_dir = _pipeline_dir(text_ref, paths, "text encoder source") if text_ref else pipeline_dir
    sources: dict[str, UNetSource] = {}
    try:
        for r in refs:
            sources[r] = UNetSource(paths[r], label=r, allow_pickle=options.allow_pickle)
        plan = plan_unet_merge(recipe, sources, seed=options.seed)
        unet_config = component_config(pipeline_dir, "unet")
        _check_donor_shapes(plan, pipeline_dir, donor_ref, sources.get(donor_ref), options.allow_pickle)
        check_compatible(unet_config, pipeline_dir, text_dir)

        def side_files(tmp: Path, out_dtype: torch.dtype | None) -> list[str]:
            (tmp / "unet" / "config.json").write_bytes((pipeline_dir / "unet" / "config.json").read_bytes())
            files = ["unet/config.json"]
            if single_file:
                files.append(write_original_layout(tmp / "unet", tmp / SINGLE_FILE_NAME))
            return files

        return write_plan(out, options, recipe, plan, sources, weights_dir="unet", prefix="diffusion_pytorch_model",
                          desc="merging UNet", side_files=side_files,
                          card=lambda d: _model_card(d, plan, d.written[donor_ref], d.written[text_ref or donor_ref]),
                          first_files=lambda tmp: copy_components(pipeline_dir, text_dir, tmp), base_dir=base_dir,
                          named=named, extra_refs=[r for r in (donor_ref, text_ref) if r], start=start)
    finally:
        for s in sources.values():
            s.close()


def _check_donor_shapes(plan: UNetPlan, pipeline_dir: Path, donor_ref: str, donor: UNetSource | None,
                        allow_pickle: bool) -> None:
    """The merged UNet must have the donor pipeline's UNet shapes (its config is the output's)."""
    own = donor if donor is not None else UNetSource(pipeline_dir, label=donor_ref, allow_pickle=allow_pickle)
    try:
        for job in plan.jobs:
            shape = own.info(job.out_name).shape
            if shape != job.shape:
                raise MergeError(f"{job.out_name}: merged shape {list(job.shape)} differs from the pipeline donor "
                                 f"{donor_ref}'s UNet {list(shape)}")
    finally:
        if donor is None:
            own.close()


def write_original_layout(unet_dir: Path, target: Path) -> str:
    """Stream a written diffusers UNet into one original-layout file (`model.diffusion_model.*`), in table
    order (the order it was written in), each tensor with the dtype and shape it was written with."""
    table = sdxl_unet_table()
    src = UNetSource(unet_dir, label=str(unet_dir))
    try:
        names = table.diffusers_names()
        infos = [src.info(n) for n in names]
        renamed = [OutputTensor(ORIGINAL_PREFIX + table.by_diffusers(n).original, i.dtype, i.shape)  # type: ignore[union-attr]
                   for n, i in zip(names, infos)]
        writer = ShardedSafetensorsWriter(target.parent, renamed, max_shard_bytes=2**62,  # one file, never sharded
                                          prefix=target.name.removesuffix(".safetensors"))
        try:
            for n, r in zip(names, renamed):
                writer.write(r.name, src.read(n))
            writer.close()
        except BaseException:
            writer.abort()
            raise
    finally:
        src.close()
    return target.name


def _model_card(described: Description, plan: UNetPlan, donor: str, text: str) -> str:
    return f"""---
library_name: diffusers
tags: [merge, tsugiki, stable-diffusion-xl]
---
# Merged SDXL pipeline

UNet merged with [tsugiki](https://pypi.org/project/tsugiki/) {__version__} using **{plan.method.name}**
({plan.method.reference or 'see tsugiki docs'}) over {len(plan.jobs)} tensors.

## UNet inputs
{described.card.rstrip()}

VAE and scheduler copied from `{donor}`; text encoders and tokenizers copied from `{text}`.

## Recipe
The exact recipe is in `tsugiki_recipe.yaml`:

```yaml
{described.recipe.to_yaml().rstrip()}
```
"""


__all__ = ["UNetPlan", "is_sdxl_recipe", "merge_sdxl_to_disk", "plan_unet_merge", "write_original_layout"]
