"""`tsugiki merge` for recipes with a LLaVA-family source: merge (or swap) the language model, copy the
vision side bit for bit.

Every source is turned into a standalone causal LM (a VLM through its `LanguageModelView`), so the
ordinary planner and kernels run the recipe; the output is the vision donor's checkpoint (its key
layout, vision tower, projector, image_newline, processor and generation files) with the merged
language model written in place of its own.

Which VLM is the vision donor: `vision_source` if given (this is how an LLM is swapped in outright:
a one-model passthrough recipe plus `vision_source`), else the recipe's base model if it is a VLM,
else the first VLM in recipe order. The tokenizer comes from `tokenizer_source` if set, else the
vision donor (it has the image token).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Mapping

import torch

from tsugiki.errors import CheckpointError, MergeError, RecipeError
from tsugiki.merging.checkpoint import Checkpoint, resolve_model_ref
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.output import MergeResult
from tsugiki.merging.output_files import DTYPE_NAMES, TOKENIZER_FILES, merged_config, model_card
from tsugiki.merging.plan import MergePlan, plan_merge
from tsugiki.merging.provenance import Description, Named
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.refs import split_lora_ref
from tsugiki.merging.sources import open_sources
from tsugiki.merging.to_disk import Tail, write_plan
from tsugiki.vlm.graft import check_shapes, lm_shape, slice_rows, split_sources, vision_donor_ref
from tsugiki.vlm.sources import LLAVA, VlmCheckpoint, is_multimodal_config, read_config

log = logging.getLogger("tsugiki.merge")

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja",
                   "generation_config.json")


def is_vlm_source(path: Path) -> bool:
    """A composite (vision-language) config, or, without a config, LLaVA-style tensor names."""
    model_dir = path if path.is_dir() else path.parent
    config = read_config(model_dir)
    if config is not None:
        return is_multimodal_config(config)
    try:
        with Checkpoint(path) as ckpt:
            names = ckpt.names()
    except CheckpointError:
        return False  # the ordinary merge path reports it
    markers = tuple(p for lay in LLAVA.layouts.values() for p in lay.marker_prefixes() + lay.vision)
    return any(n.startswith(markers) for n in names)


def is_vlm_recipe(recipe: Recipe, base_dir: Path | None = None) -> bool:
    """Whether `tsugiki merge` should take the VLM path for this recipe (reads configs only)."""
    for ref in recipe.model_refs():
        try:
            path = resolve_model_ref(split_lora_ref(ref)[0], base_dir=base_dir)  # a LoRA source: its model's files
        except CheckpointError:
            continue  # the ordinary path reports it
        if is_vlm_source(path):
            return True
    return False


def swap_language_model(vlm: str | Path, llm: str | Path, out: str | Path, options: MergeOptions = MergeOptions(), *,
                        vocab: str = "error", named: Mapping[str, Named] | None = None) -> MergeResult:
    """`tsugiki vlm swap`: `vlm`'s vision tower and projector bit for bit, `llm` as its language model
    (a one-model passthrough recipe with `vlm` as the vision source)."""
    recipe = Recipe.from_dict({"merge_method": "passthrough", "models": [{"model": str(llm)}]}, source_name="vlm swap")
    return merge_vlm_to_disk(recipe, out, options, vocab=vocab, vision_source=str(vlm), named=named)


def merge_vlm_to_disk(recipe: Recipe, out: str | Path, options: MergeOptions = MergeOptions(), *,
                      base_dir: Path | None = None, vocab: str = "error", vision_source: str | None = None,
                      named: Mapping[str, Named] | None = None) -> MergeResult:
    """Like `merge_to_disk`, for recipes with a LLaVA-family source (see the module docstring);
    `vocab` is ``error`` or ``embed_slice`` (see `tsugiki.vlm.graft`)."""
    start = time.perf_counter()
    refs = recipe.model_refs()
    extra = [vision_source] if vision_source is not None and vision_source not in refs else []
    checkpoints = open_sources(refs + extra, base_dir=base_dir, allow_pickle=options.allow_pickle, where=recipe.ref_where)
    try:
        vlms, lms = split_sources(checkpoints, vision_source)
        donor_ref = vision_donor_ref(recipe, list(vlms), vision_source)
        donor = vlms[donor_ref]
        target = lm_shape(lms[donor_ref])
        rows = check_shapes({r: lms[r] for r in refs}, donor_ref, target, vocab=vocab, same_layers=not recipe.slices)
        sources = slice_rows(lms, rows) if rows else lms
        plan = plan_merge(recipe, sources, seed=options.seed)
        check_processor_files(donor)
        tok_dir = tokenizer_dir(recipe, donor, base_dir)
        check_image_token(tok_dir, donor)
        if len(vlms) > 1:
            log.info("vision tower and projector taken from %s", donor_ref)
        donor_lm = lms[donor_ref]
        # embed_slice: the merged first rows, then the donor's own rows beyond them
        tails = ({n: Tail(target.vocab - rows, lambda n=n: donor_lm.read(n)[rows:]) for n in target.vocab_tensors}
                 if rows and rows < target.vocab else {})

        def side_files(tmp: Path, out_dtype: torch.dtype | None) -> list[str]:
            config = vlm_config(donor, plan, {r: s.config() for r, s in sources.items()}, out_dtype)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            return ["config.json"] + copy_vlm_side_files(donor.model_dir, tok_dir, recipe, tmp)

        return write_plan(out, options, recipe, plan, sources, opened=checkpoints, metadata={"tsugiki_vision_source": donor_ref},
                          copied=(donor.checkpoint, donor.vision_names), rename=donor.layout.to_vlm, tails=tails,
                          side_files=side_files, card=lambda d: vlm_model_card(d, plan, d.written[donor_ref], rows),
                          base_dir=base_dir, named=named, start=start)
    finally:
        for c in checkpoints.values():
            c.close()


def check_processor_files(donor: VlmCheckpoint) -> None:
    d = donor.model_dir
    if (d / "preprocessor_config.json").exists():
        return
    proc = d / "processor_config.json"
    if proc.exists():
        try:
            if "image_processor" in json.loads(proc.read_text()):
                return
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{proc}: invalid JSON: {e}") from None
    raise CheckpointError(
        f"{d}: no image processor config (preprocessor_config.json, or processor_config.json with an image_processor): "
        f"copy the processor files of {donor.label}'s original repository into that folder, or save them there with "
        f"AutoProcessor.from_pretrained(<original>).save_pretrained({str(d)!r})")


def tokenizer_dir(recipe: Recipe, donor: VlmCheckpoint, base_dir: Path | None) -> Path:
    src = recipe.tokenizer_source
    if recipe.builds_tokenizer:
        raise RecipeError("a LLaVA merge takes one model's tokenizer (its image token sits at a fixed id): "
                          "tokenizer_source union and token rules are for causal-LM merges")
    if src == "base":
        if not recipe.base_model:
            raise RecipeError("tokenizer_source: base needs a base_model")
        src = recipe.base_model
    if src is None:
        return donor.model_dir
    path = resolve_model_ref(split_lora_ref(src)[0], base_dir=base_dir)  # an adapter changes no tokenizer
    return path if path.is_dir() else path.parent


def check_image_token(tok_dir: Path, donor: VlmCheckpoint) -> None:
    """A tokenizer taken from another source must still have the VLM's image token at its id."""
    if tok_dir.resolve() == donor.model_dir.resolve():
        return
    index = donor.config.get("image_token_index", donor.config.get("image_token_id"))
    token = "<image>"
    proc = donor.model_dir / "processor_config.json"
    if proc.exists():
        token = json.loads(proc.read_text()).get("image_token", token)
    tok_file = tok_dir / "tokenizer.json"
    if not tok_file.exists():
        log.warning("%s: no tokenizer.json; cannot check that it has the image token %r", tok_dir, token)
        return
    added = json.loads(tok_file.read_text()).get("added_tokens", [])
    if not any(t.get("content") == token and t.get("id") == index for t in added):
        raise MergeError(f"{tok_dir}: tokenizer has no {token!r} token at id {index} (the VLM's image token); "
                         f"leave tokenizer_source unset to use {donor.label}'s tokenizer")


def vlm_config(donor: VlmCheckpoint, plan: MergePlan, configs: dict, out_dtype: torch.dtype | None) -> dict:
    """The donor's config.json; text_config follows the merged layer count (and per-layer lists)."""
    config = json.loads(json.dumps(donor.config))
    text = config["text_config"]
    merged = merged_config(plan, configs, None)
    key = plan.arch.num_layers_key
    changed = plan.num_layers != donor.text_config.get(key)
    if changed or key in text:
        text[key] = plan.num_layers
    for k in plan.arch.per_layer_config_keys:
        if isinstance(merged.get(k), list) and (changed or k in text):
            text[k] = merged[k]
    if out_dtype is not None and out_dtype in DTYPE_NAMES:
        for cfg in (config, text):
            for k in [k for k in ("dtype", "torch_dtype") if k in cfg] or (["dtype"] if cfg is config else []):
                cfg[k] = DTYPE_NAMES[out_dtype]
    return config


def copy_vlm_side_files(vlm_dir: Path, tok_dir: Path, recipe: Recipe, out: Path) -> list[str]:
    """Processor and generation files from the vision donor, then the tokenizer (and its chat
    template) from the tokenizer donor, then the recipe's chat_template if it has one."""
    copied: dict[str, None] = {}
    for directory, names in ((vlm_dir, PROCESSOR_FILES), (tok_dir, TOKENIZER_FILES)):
        for name in names:
            if (directory / name).exists():
                shutil.copy2(directory / name, out / name)
                copied[name] = None
    if recipe.chat_template:
        if "{{" not in recipe.chat_template and "{%" not in recipe.chat_template:
            raise RecipeError(f"chat_template: named templates ({recipe.chat_template!r}) are not supported; give a Jinja template")
        (out / "chat_template.jinja").write_text(recipe.chat_template)
        copied["chat_template.jinja"] = None
    return list(copied)


def vlm_model_card(described: Description, plan: MergePlan, vision_ref: str, rows: int | None) -> str:
    vocab = f"\nVocabulary: the first {rows} embedding/lm_head rows merged (embed_slice), the rest from `{vision_ref}`.\n" if rows else ""
    note = (f"\n## Vision\nVision tower, multi-modal projector and image_newline are copied bit for bit from `{vision_ref}`; "
            f"only the language model is merged.\n{vocab}")
    card = model_card(described.recipe, plan, described.card)
    head, sep, tail = card.partition("\n## Recipe")
    return head + note + sep + tail


__all__ = ["is_vlm_recipe", "is_vlm_source", "merge_vlm_to_disk", "MergeResult"]
