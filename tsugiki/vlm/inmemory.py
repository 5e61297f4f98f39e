"""The in-memory graft for evolution: one LLaVA-family model stays loaded; each candidate recipe is
merged into its language model's parameters in place. The vision tower, projector and image_newline
are never read, written or reloaded.

    model = LlavaNextForConditionalGeneration.from_pretrained(vlm_dir)
    merger = VlmLanguageModelMerger(model, {"llava": vlm_dir, "shisa": llm_dir})
    for recipe in candidates:
        merger.apply(recipe)   # then evaluate `model`

Sources are read into memory once (a VLM source contributes only its language model). The same
planner and kernels as `tsugiki merge` run, so each candidate equals the disk merge of its recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from tsugiki.errors import MergeError
from tsugiki.merging.sources import open_checkpoint
from tsugiki.merging.inmemory import InMemoryMerger
from tsugiki.merging.plan import MergePlan
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.tensors import TensorSource
from tsugiki.vlm.graft import LMShape, check_shapes, slice_rows, split_sources
from tsugiki.vlm.sources import LLAVA


def module_lm_shape(module: nn.Module, layout_names: dict[str, str]) -> LMShape:
    """Shape of the language model inside a loaded VLM (standalone name -> parameter name map)."""
    params = dict(module.state_dict(keep_vars=True))
    if "model.embed_tokens.weight" not in layout_names:
        raise MergeError(f"{type(module).__name__}: language model has no embed_tokens parameter")
    embed = params[layout_names["model.embed_tokens.weight"]]
    cfg = module.config.get_text_config()
    vocab_tensors = tuple(n for n in ("model.embed_tokens.weight", "lm_head.weight") if n in layout_names)
    return LMShape(embed.shape[1], cfg.num_hidden_layers, embed.shape[0], vocab_tensors)


class VlmLanguageModelMerger:
    """Merges recipes into the language model of a loaded LLaVA-family `model`, in place.

    `sources` maps each recipe model reference to a path (VLM or standalone LLM) or a TensorSource
    in standalone-LLM names. `vocab` as in `tsugiki.vlm.graft`: with ``embed_slice`` only the first
    rows of the embedding and lm_head are rewritten; the rest keep the loaded model's values."""

    def __init__(self, model: nn.Module, sources: Mapping[str, str | os.PathLike | TensorSource], *,
                 vocab: str = "error", base_dir: Path | None = None, allow_pickle: bool = False):
        names = list(model.state_dict().keys())
        self.layout = LLAVA.detect(names, type(model).__name__)
        lm_names = {llm: n for n in names if (llm := self.layout.to_llm(n)) is not None}
        checkpoints, given = {}, {}
        for ref, src in sources.items():
            if isinstance(src, (str, os.PathLike)):
                checkpoints[ref] = open_checkpoint(str(src), base_dir=base_dir, allow_pickle=allow_pickle, label=ref)
            else:
                given[ref] = src
        _, lms = split_sources(checkpoints)
        lms.update(given)
        target = module_lm_shape(model, lm_names)
        rows = check_shapes(lms, type(model).__name__, target, vocab=vocab, same_layers=False,
                            target_label="the loaded model's language model")
        self.rows = rows
        self.merger = InMemoryMerger(model, slice_rows(lms, rows) if rows else lms, name_map=self.layout.to_vlm)
        for c in checkpoints.values():
            c.close()  # everything needed was read into memory
        if rows:
            for name in target.vocab_tensors:  # write only the merged rows of the vocabulary tensors
                key = self.layout.to_vlm(name)
                self.merger.targets[key] = self.merger.targets[key].detach()[:rows]

    @property
    def module(self) -> nn.Module:
        return self.merger.module

    def plan(self, recipe: Recipe, *, seed: int | None = None) -> MergePlan:
        return self.merger.plan(recipe, seed=seed)

    @torch.no_grad()
    def apply(self, recipe: Recipe, *, seed: int | None = None) -> MergePlan:
        """Merge `recipe` into the language model (in place); returns the plan used."""
        return self.merger.apply(recipe, seed=seed)
