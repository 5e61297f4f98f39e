"""Find and open SDXL UNets wherever they are stored, always presenting diffusers tensor names.

A model reference can be
- a diffusers pipeline folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, ...),
- a diffusers UNet folder (`config.json` + `diffusion_pytorch_model[.variant].safetensors`, or a
  sharded `diffusion_pytorch_model.safetensors.index.json`),
- a single-file checkpoint in the original layout (`model.diffusion_model.*`, usually beside
  `conditioner.embedders.*` and `first_stage_model.*`, which are not read here).

`UNetSource` implements the merge engine's TensorSource protocol over any of them, so the planner and
the kernels of `tsugiki.merging` run unchanged on UNets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tsugiki.diffusion.layout import ORIGINAL_PREFIX, check_complete, sdxl_unet_table
from tsugiki.errors import CheckpointError
from tsugiki.merging.checkpoint import Checkpoint, parse_safetensors_header
from tsugiki.merging.tensors import TensorInfo

UNET_WEIGHTS = "diffusion_pytorch_model"
SDXL_DOWN_BLOCKS = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
SDXL_UP_BLOCKS = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]


def diffusion_kind(path: Path) -> str | None:
    """'pipeline', 'unet', 'single_file' or None (not a diffusion model we know). Reads headers only."""
    if path.is_dir():
        if (path / "model_index.json").exists() and (path / "unet").is_dir():
            return "pipeline"
        cfg = _read_json(path / "config.json") if (path / "config.json").exists() else {}
        if cfg.get("_class_name") == "UNet2DConditionModel" or any(path.glob(f"{UNET_WEIGHTS}*")):
            return "unet"
        return None
    if path.is_file() and path.suffix == ".safetensors":
        try:
            infos, _ = parse_safetensors_header(path)
        except CheckpointError:
            return None
        return "single_file" if any(n.startswith(ORIGINAL_PREFIX) for n in infos) else None
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def unet_weight_files(unet_dir: Path) -> list[Path]:
    """The UNet's weight file(s) in a diffusers UNet folder (refuses ambiguity)."""
    index = unet_dir / f"{UNET_WEIGHTS}.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: invalid index file (no weight_map)")
        files = [unet_dir / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{index}: shard {f.name!r} listed in the index is missing")
        return files
    single = unet_dir / f"{UNET_WEIGHTS}.safetensors"
    if single.exists():
        return [single]
    variants = sorted(unet_dir.glob(f"{UNET_WEIGHTS}.*.safetensors"))
    if len(variants) == 1:
        return variants
    if variants:
        raise CheckpointError(f"{unet_dir}: several UNet weight variants ({', '.join(v.name for v in variants)}); name one file")
    pickles = sorted(unet_dir.glob(f"{UNET_WEIGHTS}*.bin"))
    if pickles:
        return pickles
    raise CheckpointError(f"{unet_dir}: no UNet weights ({UNET_WEIGHTS}.safetensors) found")


def check_sdxl_config(config: dict, label: str) -> None:
    """Refuse UNets that are not SDXL base-shaped (SD1.x/2.x, refiner, ...) by their config."""
    problems = []
    if list(config.get("down_block_types") or []) != SDXL_DOWN_BLOCKS:
        problems.append(f"down blocks {config.get('down_block_types')}")
    if list(config.get("up_block_types") or []) != SDXL_UP_BLOCKS:
        problems.append(f"up blocks {config.get('up_block_types')}")
    if config.get("addition_embed_type") != "text_time":
        problems.append(f"addition_embed_type {config.get('addition_embed_type')!r} (SDXL: 'text_time')")
    tl = config.get("transformer_layers_per_block")
    if tl is not None and (list(tl) if isinstance(tl, (list, tuple)) else tl) != [1, 2, 10]:
        problems.append(f"transformer_layers_per_block {tl} (SDXL base: [1, 2, 10])")
    if problems:
        raise CheckpointError(f"{label}: not an SDXL base UNet: {'; '.join(problems)}")


class UNetSource:
    """An SDXL UNet, read lazily, named in diffusers' layout (TensorSource protocol)."""

    def __init__(self, path: Path, *, label: str, allow_pickle: bool = False):
        self.path = Path(path)
        self.label = label
        self.kind = diffusion_kind(self.path)
        self._config: dict | None = None
        self._files: list[Checkpoint] = []
        self._where: dict[str, tuple[Checkpoint, str]] = {}
        try:
            self._open(allow_pickle)
        except BaseException:
            self.close()
            raise

    def _open(self, allow_pickle: bool) -> None:
        if self.kind is None:
            raise CheckpointError(
                f"{self.label}: not an SDXL UNet (no diffusers pipeline or UNet folder, "
                f"no {ORIGINAL_PREFIX}* tensors in a .safetensors file)"
            )
        table = sdxl_unet_table()
        if self.kind == "single_file":
            ckpt = Checkpoint(self.path, label=self.label)
            self._files.append(ckpt)
            originals = {n[len(ORIGINAL_PREFIX):]: n for n in ckpt.names() if n.startswith(ORIGINAL_PREFIX)}
            check_complete(originals, layout="original", label=self.label)
            self._where = {table.by_original(o).diffusers: (ckpt, stored)  # type: ignore[union-attr]
                           for o, stored in originals.items()}
        else:
            unet_dir = self.path / "unet" if self.kind == "pipeline" else self.path
            if (unet_dir / "config.json").exists():
                self._config = _read_json(unet_dir / "config.json")
                check_sdxl_config(self._config, self.label)
            for f in unet_weight_files(unet_dir):
                ckpt = Checkpoint(f, allow_pickle=allow_pickle, label=self.label)
                self._files.append(ckpt)
                for n in ckpt.names():
                    if n in self._where:
                        raise CheckpointError(f"{f}: tensor {n!r} appears in two UNet weight files")
                    self._where[n] = (ckpt, n)
            check_complete(self._where, layout="diffusers", label=self.label)

    @property
    def unet_config(self) -> dict | None:
        """The diffusers UNet config, None for a single-file checkpoint (it has none)."""
        return self._config

    # -- TensorSource --------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sdxl_unet_table().diffusers_names()  # table order: the same for every source

    def _loc(self, name: str) -> tuple[Checkpoint, str]:
        try:
            return self._where[name]
        except KeyError:
            raise CheckpointError(f"{self.label}: UNet tensor {name!r} not found") from None

    def info(self, name: str) -> TensorInfo:
        ckpt, stored = self._loc(name)
        return ckpt.info(stored)

    def read(self, name: str) -> torch.Tensor:
        ckpt, stored = self._loc(name)
        return ckpt.read(stored)

    def view(self, name: str) -> torch.Tensor:
        ckpt, stored = self._loc(name)
        return ckpt.view(stored)

    def release(self, name: str) -> None:
        ckpt, stored = self._loc(name)
        ckpt.release(stored)

    def config(self) -> dict[str, Any] | None:
        return self._config

    def weight_files(self) -> list[Path]:
        return [f for c in self._files for f in c.weight_files()]

    def check_unchanged(self) -> None:
        for c in self._files:
            c.check_unchanged()

    def close(self) -> None:
        for f in self._files:
            f.close()

    def __enter__(self) -> "UNetSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
