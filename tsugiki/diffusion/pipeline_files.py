"""The non-UNet parts of a diffusers SDXL pipeline folder: checked against the UNet, copied bit for bit.

An SDXL pipeline folder is `model_index.json` plus one subfolder per component. A merge writes a new
`unet/` and copies the others unchanged: the text side (`text_encoder`, `text_encoder_2`, `tokenizer`,
`tokenizer_2`) from the text donor, everything else (`vae`, `scheduler`, ...) from the pipeline donor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tsugiki.errors import CheckpointError, MergeError

TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
REQUIRED_COMPONENTS = ("unet", "vae", "scheduler", *TEXT_COMPONENTS)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def model_index(pipeline_dir: Path) -> dict:
    index = _json(pipeline_dir / "model_index.json")
    missing = [c for c in REQUIRED_COMPONENTS if c not in index or not (pipeline_dir / c).is_dir()]
    if missing:
        raise CheckpointError(f"{pipeline_dir}: not a complete SDXL pipeline folder (component {missing[0]!r} missing)")
    return index


def component_config(pipeline_dir: Path, component: str) -> dict:
    return _json(pipeline_dir / component / "config.json")


def check_compatible(unet_config: dict, pipeline_dir: Path, text_dir: Path) -> None:
    """The UNet's input sizes must match the VAE's latents and the text encoders' outputs."""
    vae = component_config(pipeline_dir, "vae")
    latent = vae.get("latent_channels")
    for key in ("in_channels", "out_channels"):
        if unet_config.get(key) != latent:
            raise MergeError(
                f"VAE mismatch: {pipeline_dir / 'vae'} has {latent} latent channels, "
                f"the UNet's {key} is {unet_config.get(key)}"
            )
    te1 = component_config(text_dir, "text_encoder")
    te2 = component_config(text_dir, "text_encoder_2")
    width = te1.get("hidden_size", 0) + te2.get("hidden_size", 0)
    if unet_config.get("cross_attention_dim") != width:
        raise MergeError(
            f"text encoders of {text_dir} give {width}-wide hidden states "
            f"({te1.get('hidden_size')} + {te2.get('hidden_size')}), the UNet's cross_attention_dim is "
            f"{unet_config.get('cross_attention_dim')}"
        )
    pooled = te2.get("projection_dim", 0) + 6 * unet_config.get("addition_time_embed_dim", 0)
    if unet_config.get("projection_class_embeddings_input_dim") != pooled:
        raise MergeError(
            f"{text_dir / 'text_encoder_2'}: projection_dim {te2.get('projection_dim')} does not fit the UNet's "
            f"add-embedding input ({unet_config.get('projection_class_embeddings_input_dim')} = projection_dim + 6 x "
            f"{unet_config.get('addition_time_embed_dim')})"
        )


def copy_components(pipeline_dir: Path, text_dir: Path, out: Path) -> list[str]:
    """Copy every component except `unet` into `out`, and write the combined model_index.json.
    Returns the relative paths written."""
    index = model_index(pipeline_dir)
    text_index = model_index(text_dir)
    for c in TEXT_COMPONENTS:
        index[c] = text_index[c]
    written = []
    for component, spec in index.items():
        if component.startswith("_") or component == "unet" or not isinstance(spec, list):
            continue
        src_root = text_dir if component in TEXT_COMPONENTS else pipeline_dir
        src = src_root / component
        if not src.is_dir():
            if spec == [None, None]:  # an optional component the pipeline does not use
                continue
            raise CheckpointError(f"{src_root}: component folder {component!r} listed in model_index.json is missing")
        shutil.copytree(src, out / component, copy_function=shutil.copy2)
        written += [str(p.relative_to(out)) for p in sorted((out / component).rglob("*")) if p.is_file()]
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written + ["model_index.json"]
