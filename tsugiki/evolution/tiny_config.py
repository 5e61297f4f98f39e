"""The ``tiny_models``, ``tiny_vlm`` and ``tiny_sdxl`` sections of an evolve config: factory models a run
builds offline into its run dir (:mod:`tsugiki.evolution.sources`). Split from :mod:`tsugiki.evolution.config`."""

from __future__ import annotations

from typing import Annotated, Optional

from tsugiki.evolution.schema import Count, NonNegative, NonNegativeNumber, Section, one_of
from tsugiki.factory.archs import SIBLING_KINDS, VLM_KINDS, tiny_arch_names


class TinyModels(Section):
    """Tiny factory LM siblings (tsugiki.factory.lm), sources ``base``, ``variant_0``, ..."""

    arch: Annotated[str, one_of(*tiny_arch_names())] = "llama"
    n: NonNegative = 2
    kind: Annotated[str, one_of(*SIBLING_KINDS)] = "finetuned"
    seed: NonNegative = 0
    steps: NonNegative = 20
    hidden_size: Optional[NonNegative] = None
    num_layers: Optional[NonNegative] = None


class TinyVlm(Section):
    """A tiny graft set (tsugiki.factory.vlm.build_graft_set): sources ``llava`` (the VLM), ``base``,
    ``variant_0``, ... (mistral LLMs)."""

    kind: Annotated[str, one_of(*VLM_KINDS)] = "llava"
    n: Count = 2
    seed: NonNegative = 0
    hidden_size: Optional[NonNegative] = None
    num_layers: Optional[NonNegative] = None
    lm_delta: NonNegativeNumber = 0.02


class TinySdxl(Section):
    """Tiny SDXL pipelines ``base``, ``variant_0``, ... (same text encoders and VAE, different UNets)."""

    n: Count = 2
    seed: NonNegative = 0
