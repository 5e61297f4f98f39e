"""``space.kind: sdxl_blocks``: per-block (or per block group) merge parameters of SDXL UNets
(:class:`~tsugiki.evolution.kinds.sdxl.space.SDXLBlockSpace`), merged in place into one loaded UNet; the best
exports as a diffusers pipeline folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import torch
from pydantic import PlainValidator

from tsugiki.diffusion.merge import merge_sdxl_to_disk, plan_unet_merge
from tsugiki.diffusion.sources import UNetSource
from tsugiki.errors import EvolutionError
from tsugiki.evolution.kinds.ps.plots import CAPTIONS, heatmap_plots
from tsugiki.evolution.kinds.ps.space import DEFAULT_BOUNDS
from tsugiki.evolution.kinds.sdxl.space import UNITS, SDXLBlockSpace
from tsugiki.evolution.kinds.sdxl.unet import load_unet
from tsugiki.evolution.problems import Problem, parameter_matrices
from tsugiki.evolution.schema import Bounds, Mapping_, Names, NonNegative, one_of
from tsugiki.evolution.sources import local_dir
from tsugiki.evolution.space_kind import KindPlan, SpaceKind
from tsugiki.merging.execute import MergeOptions, iter_merged


def _blocks(v: Any) -> Optional[list]:
    if not (isinstance(v, list) and v and all(isinstance(b, str) for b in v)):
        raise ValueError("expected a non-empty list of block names (IN04, M00, OUT01/attention, ...)")
    return v


class SDXLBlocksKind(SpaceKind):
    """Keys: ``method`` [task_arithmetic], ``base_model``, ``models``, ``units`` (blocks | groups),
    ``blocks`` (BLOCK or BLOCK/group; default all, the others share a "rest" value), ``params``
    [{weight: [0, 1]}], ``fixed``, ``merge_seed``."""

    kind: str = "sdxl_blocks"
    method: str = "task_arithmetic"
    base_model: Optional[str] = None
    models: Names
    units: Annotated[str, one_of(*UNITS)] = "blocks"
    blocks: Annotated[Optional[list], PlainValidator(_blocks)] = None
    params: Optional[dict[str, Bounds]] = None
    fixed: Mapping_ = {}
    merge_seed: NonNegative = 0

    source_keys = ("models", "base_model")
    plot_captions = CAPTIONS  # the PS heatmap, over UNet blocks

    def build(self, config: Any, paths: Mapping[str, str]) -> SDXLBlockSpace:
        params = self.params or {"weight": Bounds(bounds=DEFAULT_BOUNDS["weight"])}
        try:
            return SDXLBlockSpace(
                method=self.method, base_model=self.base_model, models=tuple(self.models), paths=paths,
                units=self.units, blocks=tuple(self.blocks) if self.blocks is not None else None,
                bounds={k: v.bounds for k, v in params.items()},
                init={k: v.init for k, v in params.items() if v.init is not None}, transform=self.transform,
                fixed=self.fixed, merge_seed=self.merge_seed)
        except EvolutionError as e:
            raise EvolutionError(f"{config.where('space')}{e}") from None

    def problem(self, config: Any, paths: Mapping[str, str]) -> "SDXLBlocksProblem":
        return SDXLBlocksProblem(config, paths)

    def plan(self, config: Any, paths: Mapping[str, str], configs: Mapping[str, Mapping[str, Any]]) -> KindPlan:
        sd = self.build(config, paths)
        space = sd.space()
        sd.recipe(space.decode(space.x0()))
        parts = tuple((f"{p}: {len(sd.models)} models x {len(sd.columns())} UNet {sd.units}", len(sd.models) * len(sd.columns()))
                      for p in sd.bounds)
        return KindPlan(space, parts)

    def plots(self, details: Mapping[str, Any], out_dir: Path) -> list[Path]:
        return heatmap_plots(details, out_dir)


class SDXLBlocksProblem(Problem):
    kind = "sdxl_blocks"

    def __init__(self, config: Any, paths: Mapping[str, str]):
        super().__init__(config, paths)
        spec: SDXLBlocksKind = config.spec.space
        self.sdxl = spec.build(config, self.paths)
        self.space = self.sdxl.space()
        self.sdxl.recipe(self.space.decode(self.space.x0()))

    def setup(self) -> None:
        # hub ids become their local snapshots here (the UNet loaders and the fitness take folders)
        self.local = {n: str(local_dir(p) or p) for n, p in self.paths.items()}
        ref = self.sdxl.base_model or self.sdxl.models[0]
        self.model = load_unet(self.local[ref], self.config.spec.search.device)
        self.targets = dict(self.model.state_dict(keep_vars=True))
        refs = {self.paths[m] for m in (*self.sdxl.models, *([self.sdxl.base_model] if self.sdxl.base_model else []))}
        local_of = {self.paths[n]: p for n, p in self.local.items()}
        self.sources = {r: UNetSource(Path(local_of[r]), label=r) for r in sorted(refs)}

    @torch.no_grad()
    def prepare_candidate(self, values, ctx) -> None:
        plan = plan_unet_merge(self.sdxl.recipe(values), self.sources)
        for job, tensor in iter_merged(plan, self.sources, device=self.config.spec.search.device):
            self.targets[job.out_name].copy_(tensor)
        ctx.model = self.model
        ctx.extra["paths"] = self.local

    def document(self, values, header: str = "") -> str:
        return header + self.sdxl.recipe(values).to_yaml()

    def details(self, values) -> dict[str, Any]:
        return {"kind": "sdxl_blocks", "matrices": parameter_matrices(self.sdxl, values), "xlabel": "UNet " + self.sdxl.units[:-1]}

    def export(self, values, out, *, force: bool = False) -> Path:
        return merge_sdxl_to_disk(self.sdxl.recipe(values), out, MergeOptions(force=force, progress=False),
                                  named=self.named).out
