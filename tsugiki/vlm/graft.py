"""What the disk and in-memory grafts share: pick the vision donor, turn every source into a standalone
causal LM, check shapes against the VLM's language model, and settle vocabulary differences.

Vocabulary modes (`vocab=`):

- ``error`` (default): sources whose embedding rows differ from the VLM's language model are refused,
  naming both sizes.
- ``embed_slice``: the first ``min(vocab sizes)`` rows of the embedding and lm_head are merged; rows
  beyond come unchanged from the vision donor's language model (the output keeps its vocabulary and
  tokenizer, so the image token survives). This is right only when the smaller vocabulary is a prefix
  of the larger one, as with LLaVA-1.6-Mistral (32064 tokens) and Mistral-7B fine-tunes (32000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from tsugiki.errors import MergeError
from tsugiki.merging.architecture import architecture_for
from tsugiki.merging.checkpoint import Checkpoint
from tsugiki.merging.recipe import Recipe
from tsugiki.merging.tensors import TensorSource
from tsugiki.vlm.sources import RowSlice, VlmCheckpoint, is_multimodal_config

VOCAB_MODES = ("error", "embed_slice")


@dataclass(frozen=True)
class LMShape:
    hidden: int
    layers: int
    vocab: int
    vocab_tensors: tuple[str, ...]  # embedding / lm_head names (standalone layout)

    def describe(self) -> str:
        return f"hidden_size {self.hidden}, {self.layers} layers"


def lm_shape(source: TensorSource) -> LMShape:
    """Hidden size, layer count and vocabulary of a standalone causal LM source (from metadata only)."""
    get = getattr(source, "config", None)
    config = get() if callable(get) else None
    names = source.names()
    arch = architecture_for(config, names, source.label)
    specs = arch.pre_weights + arch.post_weights
    vocab_tensors = tuple(w.name for w in specs if w.role in ("embedding", "lm_head") and w.name in names)
    embed = next((w.name for w in arch.pre_weights if w.role == "embedding" and w.name in names), None)
    if embed is None:
        raise MergeError(f"{source.label}: no token embedding tensor found")
    vocab, hidden = source.info(embed).shape[:2]
    return LMShape(hidden, arch.num_layers(config, names), vocab, vocab_tensors)


def split_sources(checkpoints: Mapping[str, Checkpoint], vision_ref: str | None = None
                  ) -> tuple[dict[str, VlmCheckpoint], dict[str, TensorSource]]:
    """(the VLM checkpoints, every source as a standalone causal LM). A composite (vision-language)
    config marks a VLM; so does being `vision_ref`, which must then be a LLaVA-family model."""
    vlms: dict[str, VlmCheckpoint] = {}
    lms: dict[str, TensorSource] = {}
    for ref, ckpt in checkpoints.items():
        if ref == vision_ref or is_multimodal_config(ckpt.config()):
            vlms[ref] = VlmCheckpoint(ckpt)
            lms[ref] = vlms[ref].language_model()
        else:
            lms[ref] = ckpt
    return vlms, lms


def vision_donor_ref(recipe: Recipe, vlm_refs: list[str], vision_ref: str | None = None) -> str:
    """`vision_ref` if given, else the base model if it is a VLM, else the first VLM in recipe order."""
    if vision_ref is not None:
        return vision_ref
    if recipe.base_model in vlm_refs:
        return recipe.base_model
    donor = next((r for r in recipe.model_refs() if r in vlm_refs), None)
    if donor is None:
        raise MergeError("no LLaVA-family model among the sources (nothing to take the vision tower from)")
    return donor


def check_shapes(lms: Mapping[str, TensorSource], donor: str, target: LMShape, *, vocab: str,
                 same_layers: bool, target_label: str | None = None) -> int | None:
    """Refuse sources whose language model differs from `target` (the vision donor's); returns the
    number of vocabulary rows to merge when `vocab="embed_slice"` has to cut, else None."""
    if vocab not in VOCAB_MODES:
        raise MergeError(f"unknown vocab mode {vocab!r} (use one of {', '.join(VOCAB_MODES)})")
    target_label = target_label or f"{donor}'s language model"
    shapes = {ref: lm_shape(src) for ref, src in lms.items()}
    for ref, s in shapes.items():
        if s.hidden != target.hidden or (same_layers and s.layers != target.layers):
            raise MergeError(f"{ref}: language model shape ({s.describe()}) differs from {target_label} ({target.describe()})")
    sizes = {ref: s.vocab for ref, s in shapes.items()}
    if all(v == target.vocab for v in sizes.values()):
        return None
    ref, size = next((r, v) for r, v in sizes.items() if v != target.vocab)
    if vocab == "error":
        raise MergeError(f"{ref}: vocabulary size {size} differs from {target_label}'s {target.vocab}; "
                         f"vocab mode 'embed_slice' (CLI --vocab embed-slice) merges the first {min(size, target.vocab)} rows "
                         f"and keeps the remaining rows of {donor}")
    return min([target.vocab, *sizes.values()])


def slice_rows(lms: Mapping[str, TensorSource], rows: int) -> dict[str, TensorSource]:
    return {ref: RowSlice(src, {n: rows for n in lm_shape(src).vocab_tensors}) for ref, src in lms.items()}
