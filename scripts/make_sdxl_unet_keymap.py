"""Regenerate tsugiki/diffusion/keymaps/sdxl_unet.json: every tensor of the SDXL base UNet, in the
original (Stability `sgm`) layout and in diffusers' layout, with its merge block and group.

The diffusers names come from diffusers' own UNet2DConditionModel built with the SDXL base config on
the meta device (no weights, no download). The original names follow the `sgm` UNetModel module
structure written out below. tests/diffusion/test_unet_layout.py checks the table against diffusers'
single-file converter (`convert_ldm_unet_checkpoint`), an independent implementation.

    python scripts/make_sdxl_unet_keymap.py   # rewrites the JSON file
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from tsugiki.diffusion.layout import SDXL_BASE_UNET_CONFIG

OUT = Path(__file__).resolve().parents[1] / "tsugiki" / "diffusion" / "keymaps" / "sdxl_unet.json"

SDXL_BASE_CONFIG = SDXL_BASE_UNET_CONFIG

# diffusers ResnetBlock2D submodule -> sgm ResBlock submodule
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
       "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
       "conv_norm_out": "out.0", "conv_out": "out.2"}
HAS_ATTENTION_UP = (True, True, False)  # up_blocks 0 and 1 have attentions, so their upsampler is module 2


def resnet_rest(rest: str) -> str:
    sub, _, tail = rest.partition(".")
    return f"{RESNET[sub]}.{tail}"


def to_original(name: str) -> str:
    for d, o in TOP.items():
        if name.startswith(d + "."):
            return o + name[len(d):]
    if m := re.fullmatch(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = 3 * i + j + 1
        return f"input_blocks.{n}.0.{resnet_rest(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.+)", name):
        return f"input_blocks.{3 * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", name):
        return f"middle_block.{2 * int(m[1])}.{resnet_rest(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = 3 * i + j
        return f"output_blocks.{n}.0.{resnet_rest(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.conv\.(.+)", name):
        i = int(m[1])
        return f"output_blocks.{3 * i + 2}.{2 if HAS_ATTENTION_UP[i] else 1}.conv.{m[2]}"
    raise ValueError(f"no original name for {name}")


def block_of(original: str) -> str:
    """The community's merge-block name (SuperMerger's SDXL naming) of an original-layout tensor."""
    if m := re.match(r"input_blocks\.(\d+)\.", original):
        return f"IN{int(m[1]):02d}"
    if original.startswith("middle_block."):
        return "M00"
    if m := re.match(r"output_blocks\.(\d+)\.", original):
        return f"OUT{int(m[1]):02d}"
    return "BASE"  # time/label embeddings and the output head


def group_of(diffusers_name: str) -> str:
    module = diffusers_name.rsplit(".", 1)[0]
    last = module.rsplit(".", 1)[-1]
    if re.fullmatch(r"norm\d?", last) or last == "conv_norm_out":
        return "norm"
    if ".attentions." in module:
        return "attention"
    if module.startswith(("time_embedding.", "add_embedding.")):
        return "embedding"
    return "resnet"  # resnet convs, time projections, shortcuts, down/upsamplers, conv_in, conv_out


def main() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE_CONFIG)
    rows = []
    for name, t in unet.state_dict().items():
        original = to_original(name)
        rows.append([original, name, block_of(original), group_of(name), list(t.shape)])
    assert len({r[0] for r in rows}) == len(rows), "original names must be unique"
    lines = ",\n".join("    " + json.dumps(r) for r in rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        "{\n"
        '  "about": "SDXL base UNet: [original name (after model.diffusion_model.), diffusers name, block, group, SDXL base shape]",\n'
        '  "original_prefix": "model.diffusion_model.",\n'
        f'  "tensors": [\n{lines}\n  ]\n}}\n'
    )
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
