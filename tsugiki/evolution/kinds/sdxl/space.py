"""SDXL UNet block search space (PS over blocks / block groups) and a cheap UNet fitness.

EvoSDXL-JP (Akiba et al. 2024, arXiv:2403.13187) merged SDXL UNets with per-block parameters. Here a
candidate is a merge recipe whose per-model parameters (``weight``, and ``density`` for DARE/TIES) are
conditionals over the UNet's blocks, or over its (block, group) units, from
:mod:`tsugiki.diffusion.blocks` (BASE, IN00..IN08, M00, OUT00..OUT08; groups attention / resnet /
norm / embedding). Parameter names::

    "<model>.<param>.<BLOCK>"            units: blocks   e.g. "variant_0.weight.IN04"
    "<model>.<param>.<BLOCK>/<group>"    units: groups   e.g. "variant_0.weight.M00/attention"
    "<model>.<param>.rest"               every tensor outside the searched ``blocks`` (when a subset)

Candidates are merged in place into one loaded UNet with the same planner and kernels as ``tsugiki
merge`` (:func:`tsugiki.diffusion.merge.plan_unet_merge`), so a candidate equals the disk merge of its
recipe; the best exports as a full pipeline folder (:func:`tsugiki.diffusion.merge.merge_sdxl_to_disk`).

Fitness ``unet_output_mse`` (cheap, for tiny models; no images): minus the mean squared difference
between the candidate UNet's noise prediction and a reference UNet's (a source named by
``reference``) on ``samples`` fixed random inputs (latents, timesteps, text embeddings, time ids drawn
from ``seed``). Its maximum, 0, is reached by any candidate whose UNet equals the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from tsugiki.diffusion.blocks import BLOCKS, GROUPS, block_groups, conditional_setting
from tsugiki.errors import EvolutionError
from tsugiki.evolution.fitness import FITNESS, EvalContext, FitnessSpec
from tsugiki.evolution.kinds.ps.space import DEFAULT_BOUNDS, check_searched, method_level, recipe_data
from tsugiki.evolution.space import Param, SearchSpace
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.merging.recipe import Recipe

UNITS = ("blocks", "groups")


@dataclass(frozen=True)
class SDXLBlockSpace:
    method: str
    base_model: str | None
    models: tuple[str, ...]
    paths: Mapping[str, str]
    units: str = "blocks"
    blocks: tuple[str, ...] | None = None  # searched blocks/units; None: all
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {"weight": DEFAULT_BOUNDS["weight"]})
    init: Mapping[str, float] = field(default_factory=dict)
    transform: str = "sigmoid"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    merge_seed: int | None = 0

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise EvolutionError(f"space.units: expected one of {', '.join(UNITS)}, got {self.units!r}")
        for b in self.blocks or ():
            block, _, group = b.partition("/")
            if block not in BLOCKS or (group and group not in GROUPS) or (group and self.units == "blocks"):
                raise EvolutionError(f"space.blocks: unknown {self.units[:-1]} {b!r} (blocks: {', '.join(BLOCKS)}"
                                     + (f"; groups: {', '.join(GROUPS)}" if self.units == "groups" else "") + ")")
        for name in (*self.models, *([self.base_model] if self.base_model else [])):
            if name not in self.paths:
                raise EvolutionError(f"space: model {name!r} is not among the sources ({', '.join(self.paths)})")
        check_searched(self.method, self.bounds, self.fixed)

    def owners(self, param: str) -> list[str | None]:
        """Each model, or None once for a method-level parameter (as in the PS space)."""
        return [None] if method_level(self.method, param) else list(self.models)

    @staticmethod
    def name(model: str | None, param: str, unit: str) -> str:
        return (f"{model}.{param}" if model is not None else param) + f".{unit}"

    def unit_names(self) -> list[str]:
        if self.units == "blocks":
            every = list(BLOCKS)
        else:
            every = [u.name for u in block_groups()]
        if self.blocks is None:
            return every
        wanted = set(self.blocks)
        if self.units == "groups":  # a whole block in the list selects its groups
            wanted |= {u for u in every if u.split("/")[0] in self.blocks}
        return [u for u in every if u in wanted]

    def columns(self) -> list[str]:
        return self.unit_names() + (["rest"] if self.blocks is not None else [])

    def space(self) -> SearchSpace:
        return SearchSpace.of(Param(self.name(m, p, u), lo, hi, self.init.get(p), self.transform)
                              for p, (lo, hi) in self.bounds.items() for m in self.owners(p) for u in self.columns())

    def recipe_dict(self, values: Mapping[str, float]) -> dict[str, Any]:
        def setting(m: str | None, p: str):
            units = {u: float(values[self.name(m, p, u)]) for u in self.unit_names()}
            return conditional_setting(units, float(values[self.name(m, p, "rest")]) if self.blocks is not None else None)

        searched = {p: self.owners(p) for p in self.bounds}
        entries = [{"model": self.paths[m], "parameters": {p: setting(m, p) for p, o in searched.items() if o != [None]}}
                   for m in self.models]
        fixed = {**self.fixed, **{p: setting(None, p) for p, o in searched.items() if o == [None]}}
        return recipe_data(self.method, entries, self.paths[self.base_model] if self.base_model is not None else None,
                           fixed, self.merge_seed)

    def recipe(self, values: Mapping[str, float]):
        return Recipe.from_dict(self.recipe_dict(values), source_name="<candidate>")

    def matrix(self, values: Mapping[str, float], pname: str):
        cols, owners = self.columns(), self.owners(pname)
        return ([m if m is not None else "(all models)" for m in owners], cols,
                [[float(values[self.name(m, pname, c)]) for c in cols] for m in owners])


def load_unet(path: str | Path, device: str = "cpu"):
    from diffusers import UNet2DConditionModel  # diffusers loads in seconds: only for SDXL searches

    from tsugiki.hf_load import from_pretrained

    p = Path(path)
    with hf_progress_bars_off(diffusers=True, errors_only=True):  # no "accelerate not installed" notice per worker
        return from_pretrained(UNet2DConditionModel, p / "unet" if (p / "unet").is_dir() else p).to(device).eval()


# ------------------------------------------------------------------------------ fitness
_REFERENCE: dict[tuple, torch.Tensor] = {}


def unet_inputs(unet, samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed random SDXL UNet inputs for ``unet``'s config (float32, on its device)."""
    c = unet.config
    g = torch.Generator().manual_seed(seed)
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    text_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    dev = next(unet.parameters()).device
    out = {"sample": torch.randn(samples, c.in_channels, size, size, generator=g),
           "timestep": torch.randint(1, 1000, (samples,), generator=g),
           "encoder_hidden_states": torch.randn(samples, 8, c.cross_attention_dim, generator=g),
           "text_embeds": torch.randn(samples, text_dim, generator=g),
           "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(samples, 1)}
    return {k: v.to(dev) for k, v in out.items()}


@torch.no_grad()
def unet_forward(unet, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}).sample


def unet_output_mse(ctx: EvalContext, data: Any = None, *, reference: str, samples: int = 2, seed: int = 0) -> float:
    """``-mean((candidate(x) - reference(x))^2)`` over fixed random UNet inputs (see the module doc)."""
    paths = ctx.extra.get("paths") or {}
    if reference not in paths:
        raise EvolutionError(f"unet_output_mse: reference {reference!r} is not a source ({', '.join(paths)})")
    inputs = unet_inputs(ctx.model, int(samples), int(seed))
    key = (str(paths[reference]), int(samples), int(seed), str(inputs["sample"].device))
    if key not in _REFERENCE:
        _REFERENCE[key] = unet_forward(load_unet(paths[reference], str(inputs["sample"].device)), inputs)
    got = unet_forward(ctx.model, inputs)
    return -float(((got.float() - _REFERENCE[key].float()) ** 2).mean())


FITNESS.register("unet_output_mse", FitnessSpec(unet_output_mse, True, "-MSE of the UNet's noise prediction vs a reference UNet"))
