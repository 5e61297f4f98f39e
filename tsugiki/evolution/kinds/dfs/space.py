"""Data-flow-space (DFS) search: which layers a token passes through, in which order, at which scale.

DFS evolution as in Akiba et al. 2024 (arXiv:2403.13187, Sec. 3.2), with these definitions:

- The layers of the M source models are concatenated (model 0's layers 0..L0-1, then model 1's, ...)
  and the sequence is repeated ``repeats`` times (r = 3 in the paper): T = (L0 + ... + L_{M-1}) * r
  *slots*. Slot t holds one indicator; the layer is on the inference path when its value is > 0.
  Searched without a transform (only the sign counts), named ``use.<t>.<model>.L<layer>``.
- A scaling matrix W (M x M, ``scale.<model_i>.<model_j>``, bounded, default [0.5, 1.5]) multiplies the
  hidden state entering a path layer of model j when the previous path layer is one of model i. The
  paper's W is indexed by layers; tsugiki's is indexed by models (M^2 values instead of (sum L)^2).
  ``scale_diagonal: false`` fixes W_ii = 1. The first path layer is never scaled (its input is the
  embedding).
- ``fixed_ends`` keeps the first ``first`` and last ``last`` layers of one model at the two ends of
  the path; those layers are then not in the slot sequence.
- Embeddings come from the model of the first path layer; final norm and LM head from the model of
  the last one (mergekit's passthrough rule, so the exported checkpoint equals the candidate).

Export (:meth:`DFSSpace.recipe`): a passthrough ``slices:`` recipe stacking the path layers, which the
merge engine writes as a plain Hugging Face checkpoint (``from_pretrained`` loads it, no remote code).
Each output layer keeps its source layer's kind: the merge engine writes the per-layer config lists
(``layer_types``: sliding or full attention) from the source of each output layer, and the settings
the config holds once for every layer (rotary parameters per layer type, sliding window, ...) must be
the same in all sources (:func:`tsugiki.evolution.kinds.dfs.assemble.check_compatible`).

The scales are *folded*: with P_k = s_1 * ... * s_k the product of the scales up to path layer k, the
residual stream of the scaled model is P_k times that of a model whose layer-k branch outputs
(attention and MLP) are multiplied by 1 / P_k, because every branch reads the stream through an
RMSNorm. Where that factor goes depends on the architecture (:class:`Fold`): into the residual
writers ``self_attn.o_proj`` / ``mlp.down_proj`` (weight and bias) in Llama-style layers; into the
gain of the post-branch norms in Gemma 3, whose branch outputs pass through ``post_attention_layernorm``
/ ``post_feedforward_layernorm`` before the residual add (a scaled o_proj would be normalized away).
Those norms multiply by ``1 + w``, so the folded weight is ``w' = (1 + w) / P - 1``, written in the
recipe as passthrough ``scale: 1/P`` and ``offset: 1/P - 1``. Architectures with post-branch norms
that are not in :data:`FOLDS` are refused rather than folded wrongly.
RMSNorm is scale invariant only up to its epsilon:
``norm(P h) = norm(h)`` exactly when eps = 0, and to a relative error of about eps*(1/P^2 - 1)/mean(h^2)
otherwise. So the export is **exact when every P_k is 1** (e.g. all scales 1 on the path) and equal up to
that epsilon term otherwise. (Folding into the next layer's input norm instead would not be exact
either: the scale also multiplies the residual itself, which no norm weight touches.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tsugiki.errors import EvolutionError
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.merging.recipe import Recipe

RESIDUAL_WRITERS = ("self_attn.o_proj", "mlp.down_proj")  # Llama / Mistral / Qwen2 layer outputs
POST_BRANCH_NORM = "post_feedforward_layernorm"  # marks layers whose branch outputs are normalized (Gemma, OLMo 2)


@dataclass(frozen=True)
class Fold:
    """Where a path layer's branch outputs are multiplied by 1/P in the exported weights.

    ``filters``: name substrings of the tensors that apply each branch's last factor.
    ``gain_offset``: 0 when such a tensor *is* that factor (a linear map: weight and bias times 1/P);
    g when the factor is ``g + w`` (Gemma's RMSNorm, g = 1): ``w' = (g + w) / P - g``, which the
    passthrough method writes as ``w * scale + offset`` with ``scale = 1/P``, ``offset = g (1/P - 1)``.
    """

    filters: tuple[str, ...]
    gain_offset: float = 0.0

    def parameters(self, inv: float) -> dict[str, Any]:
        """Passthrough parameters multiplying both branch outputs by ``inv``."""
        out: dict[str, Any] = {"scale": [{"filter": f, "value": inv} for f in self.filters]}
        if self.gain_offset:
            out["offset"] = [{"filter": f, "value": self.gain_offset * (inv - 1.0)} for f in self.filters]
        return out

    def describe(self) -> str:
        return " / ".join(self.filters)


RESIDUAL_FOLD = Fold(RESIDUAL_WRITERS)
# model_type -> fold, for the architectures whose layers normalize their branch outputs
FOLDS: dict[str, Fold] = {
    "gemma3_text": Fold(("post_attention_layernorm", "post_feedforward_layernorm"), gain_offset=1.0),
}


@dataclass(frozen=True)
class DFSPath:
    """A decoded candidate: ``layers[k] = (model name, layer index)``; ``scales[k]`` multiplies the hidden
    state entering path layer k (``scales[0] == 1``)."""

    layers: tuple[tuple[str, int], ...]
    scales: tuple[float, ...]

    def cumulative(self) -> list[float]:
        out, p = [], 1.0
        for s in self.scales:
            p *= s
            out.append(p)
        return out

    def to_data(self) -> list[dict[str, Any]]:
        return [{"model": m, "layer": l, "scale": s} for (m, l), s in zip(self.layers, self.scales)]


@dataclass(frozen=True)
class DFSSpace:
    models: tuple[str, ...]
    paths: Mapping[str, str]  # short name -> model reference written into recipes
    num_layers: Mapping[str, int]
    repeats: int = 3
    scale_bounds: tuple[float, float] = (0.5, 1.5)
    scale_diagonal: bool = True
    fixed_model: str | None = None
    fixed_first: int = 0
    fixed_last: int = 0
    init_model: str | None = None  # the initial mean reproduces this model's own path (default models[0])
    init_indicator: float = 1.0
    transform: str = "sigmoid"
    layer_prefix: str = "model.layers.${layer_index}."
    fold: Fold = RESIDUAL_FOLD  # where scales go in the export (see :func:`fold_for`)

    def __post_init__(self) -> None:
        if len(self.models) < 1:
            raise EvolutionError("space.models: DFS needs at least one model")
        if len(set(self.models)) != len(self.models):
            raise EvolutionError("space.models: a model is listed twice")
        for m in self.models:
            if m not in self.paths or m not in self.num_layers:
                raise EvolutionError(f"space.models: {m!r} is not among the sources ({', '.join(self.paths)})")
        if self.repeats < 1:
            raise EvolutionError(f"space.repeats: must be >= 1, got {self.repeats}")
        for which in ("fixed_model", "init_model"):
            name = getattr(self, which)
            if name is not None and name not in self.models:
                raise EvolutionError(f"space.{which}: {name!r} is not one of space.models")
        if self.fixed_first or self.fixed_last:
            if self.fixed_model is None:
                raise EvolutionError("space.fixed_ends: needs a model")
            if self.fixed_first < 0 or self.fixed_last < 0 or self.fixed_first + self.fixed_last > self.num_layers[self.fixed_model]:
                raise EvolutionError(f"space.fixed_ends: first + last must fit in {self.fixed_model}'s {self.num_layers[self.fixed_model]} layers")

    # ---- layout ---------------------------------------------------------------------------------
    def fixed_head(self) -> list[tuple[str, int]]:
        return [(self.fixed_model, i) for i in range(self.fixed_first)] if self.fixed_model else []

    def fixed_tail(self) -> list[tuple[str, int]]:
        if not self.fixed_model:
            return []
        n = self.num_layers[self.fixed_model]
        return [(self.fixed_model, i) for i in range(n - self.fixed_last, n)]

    def slots(self) -> list[tuple[str, int]]:
        """The T searched slots, in order: concatenated layers (minus fixed ends), repeated."""
        fixed = set(self.fixed_head()) | set(self.fixed_tail())
        one = [(m, i) for m in self.models for i in range(self.num_layers[m]) if (m, i) not in fixed]
        return one * self.repeats

    def scale_pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.models for b in self.models if self.scale_diagonal or a != b]

    def space(self) -> SearchSpace:
        init_model = self.init_model or self.models[0]
        params = []
        seen: set[tuple[str, int]] = set()
        for t, (m, layer) in enumerate(self.slots()):
            on = m == init_model and (m, layer) not in seen  # the init model's first repetition
            seen.add((m, layer))
            params.append(Param(f"use.{t}.{m}.L{layer}", init=self.init_indicator if on else -self.init_indicator, transform="none"))
        lo, hi = self.scale_bounds
        init = 1.0 if lo <= 1.0 <= hi else None
        for a, b in self.scale_pairs():
            params.append(Param(f"scale.{a}.{b}", lo, hi, init, self.transform))
        return SearchSpace.of(params)

    # ---- decoding -------------------------------------------------------------------------------
    def path(self, values: Mapping[str, float]) -> DFSPath:
        chosen = [(m, layer) for t, (m, layer) in enumerate(self.slots()) if values[f"use.{t}.{m}.L{layer}"] > 0]
        layers = self.fixed_head() + chosen + self.fixed_tail()
        if not layers:
            raise EvolutionError("empty inference path: no slot indicator is > 0")
        scales = [1.0]
        for (prev, _), (cur, _) in zip(layers, layers[1:]):
            scales.append(float(values.get(f"scale.{prev}.{cur}", 1.0)))
        return DFSPath(tuple(layers), tuple(scales))

    def recipe_dict(self, path: DFSPath) -> dict[str, Any]:
        """A passthrough ``slices:`` recipe stacking the path, scales folded (see module docstring)."""
        slices: list[dict[str, Any]] = []
        prev: tuple[str, int, float] | None = None
        for (model, layer), p in zip(path.layers, path.cumulative()):
            inv = 1.0 / p
            if prev is not None and prev[0] == model and prev[1] == layer - 1 and prev[2] == inv:
                slices[-1]["sources"][0]["layer_range"][1] = layer + 1  # extend a contiguous run
            else:
                src: dict[str, Any] = {"model": self.paths[model], "layer_range": [layer, layer + 1]}
                if inv != 1.0:
                    src["parameters"] = self.fold.parameters(inv)
                slices.append({"sources": [src]})
            prev = (model, layer, inv)
        return {"merge_method": "passthrough", "slices": slices}

    def recipe(self, path: DFSPath) -> Recipe:
        return Recipe.from_dict(self.recipe_dict(path), source_name="<candidate>")

    def scale_matrix(self, values: Mapping[str, float]) -> list[list[float]]:
        return [[float(values.get(f"scale.{a}.{b}", 1.0)) for b in self.models] for a in self.models]


def exact_export(path: DFSPath) -> bool:
    """Whether the folded checkpoint equals the candidate exactly (every cumulative scale is 1)."""
    return all(math.isclose(p, 1.0, rel_tol=0, abs_tol=0) for p in path.cumulative())


def fold_for(config: Mapping[str, Any], names: Sequence[str] | None, model: str) -> Fold:
    """How scales fold into ``model`` (its config.json data; ``names``, its tensor names, when known,
    checks that the fold's tensors exist and refuses unknown architectures with post-branch norms)."""
    model_type = config.get("model_type")
    fold = FOLDS.get(model_type, RESIDUAL_FOLD)
    if names is None:
        return fold
    if model_type not in FOLDS and any(POST_BRANCH_NORM in n for n in names):
        raise EvolutionError(f"{model}: {model_type} normalizes each branch output ({POST_BRANCH_NORM}); scales cannot be "
                             f"folded for this architecture (known: {', '.join(FOLDS)})")
    missing = [f for f in fold.filters if not any(f in n for n in names)]
    if missing:
        raise EvolutionError(f"{model}: no {' / '.join(missing)} tensors; scales cannot be folded for this architecture")
    return fold


__all__ = ["DFSPath", "DFSSpace", "FOLDS", "Fold", "RESIDUAL_FOLD", "RESIDUAL_WRITERS", "exact_export", "fold_for"]
