"""SDXL UNet layouts and blocks: the key table against diffusers' own model and converter, round trips,
block/group assignment against an independent rule on diffusers' module structure."""

from __future__ import annotations

import re

import pytest
import torch

from tsugiki.diffusion import blocks, layout
from tsugiki.diffusion.layout import SDXL_BASE_UNET_CONFIG
from tsugiki.errors import CheckpointError
from tsugiki.factory.sdxl import build_unet

SDXL_BASE = SDXL_BASE_UNET_CONFIG



@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_unet()


def test_table_is_a_bijection_over_real_sdxl():
    from diffusers import UNet2DConditionModel

    table = layout.sdxl_unet_table()
    assert len(table.rows) == 1680
    assert len(set(table.original_names())) == len(set(table.diffusers_names())) == 1680
    with torch.device("meta"):
        real = UNet2DConditionModel(**SDXL_BASE).state_dict()
    assert list(real) == table.diffusers_names()
    assert all(tuple(real[r.diffusers].shape) == r.sdxl_shape for r in table.rows)
    assert sum(torch.Size(r.sdxl_shape).numel() for r in table.rows) == 2_567_463_684  # SDXL base UNet, 2.57B


def test_tiny_unet_has_every_sdxl_name(tiny_unet):
    assert list(tiny_unet.state_dict()) == layout.sdxl_unet_table().diffusers_names()


def test_round_trip_is_identity(tiny_unet):
    state = tiny_unet.state_dict()
    original = layout.diffusers_to_original(state)
    assert len(original) == len(state) and all(k.startswith(layout.ORIGINAL_PREFIX) for k in original)
    back = layout.original_to_diffusers(original)
    assert list(back) == list(state) and all(back[k] is state[k] for k in state)
    # and the other way round, with other components beside the UNet (ignored)
    extra = {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(2),
             "first_stage_model.decoder.conv_in.weight": torch.ones(2)}
    again = layout.diffusers_to_original(layout.original_to_diffusers({**original, **extra}))
    assert again.keys() == original.keys() and all(again[k] is original[k] for k in original)


def test_agrees_with_diffusers_single_file_converter(tiny_unet):
    """diffusers' convert_ldm_unet_checkpoint (an independent implementation of the same layout)
    turns our original-layout export back into exactly the model's tensors."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = tiny_unet.state_dict()
    converted = convert_ldm_unet_checkpoint(layout.diffusers_to_original(state), dict(tiny_unet.config))
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


def _expected_block(name: str) -> str:
    """The block from diffusers' module structure: down block i holds input_blocks 3i+1..3i+3."""
    if name.startswith("conv_in."):
        return "IN00"
    if m := re.match(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.", name):
        return f"IN{3 * int(m[1]) + int(m[3]) + 1:02d}"
    if m := re.match(r"down_blocks\.(\d)\.downsamplers\.", name):
        return f"IN{3 * int(m[1]) + 3:02d}"
    if name.startswith("mid_block."):
        return "M00"
    if m := re.match(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.", name):
        return f"OUT{3 * int(m[1]) + int(m[3]):02d}"
    if m := re.match(r"up_blocks\.(\d)\.upsamplers\.", name):
        return f"OUT{3 * int(m[1]) + 2:02d}"
    return "BASE"


def test_blocks_and_groups(tiny_unet):
    modules = dict(tiny_unet.named_modules())
    seen = set()
    for name in tiny_unet.state_dict():
        block, group = blocks.locate(name)
        assert block == _expected_block(name), name
        module = modules[name.rsplit(".", 1)[0]]
        kind = type(module).__name__
        if kind in ("GroupNorm", "LayerNorm"):
            assert group == "norm", name
        elif ".attentions." in name:
            assert group == "attention", name
        elif name.startswith(("time_embedding.", "add_embedding.")):
            assert group == "embedding", name
        else:
            assert group == "resnet" and kind in ("Conv2d", "Linear"), name
        seen.add(block)
        assert blocks.match_name(name) == f"{block}/{group}/{name}"
    assert seen == set(blocks.BLOCKS)
    assert [blocks.block_t(b) * 19 for b in blocks.BLOCKS] == list(range(20))
    units = blocks.block_groups()
    assert units[0].name == "BASE/resnet" and blocks.BlockGroup("M00", "attention") in units
    # BASE 3 groups; IN00, IN03, IN06 conv only; IN01-02, OUT06-08 resnet+norm; IN04-05, IN07-08, M00,
    # OUT00-05 attention+resnet+norm
    assert len(units) == len({u.name for u in units}) == 3 + 3 + 2 * 5 + 3 * 11


def test_conditional_setting():
    setting = blocks.conditional_setting({"M00": 0.5, "IN04/attention": 0.25}, default=1.0)
    assert setting == [{"filter": "IN04/attention/", "value": 0.25}, {"filter": "M00/", "value": 0.5}, {"value": 1.0}]
    with pytest.raises(ValueError, match="unknown block/group 'IN09'"):
        blocks.conditional_setting({"IN09": 1.0})


def test_strict_conversions(tiny_unet):
    state = dict(tiny_unet.state_dict())
    del state["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    with pytest.raises(CheckpointError, match=r"attn2.to_k.weight' \(block IN04\) is missing"):
        layout.diffusers_to_original(state, label="u")
    original = layout.diffusers_to_original(tiny_unet.state_dict())
    original["model.diffusion_model.input_blocks.11.0.in_layers.0.weight"] = torch.ones(1)  # SD1.x has 12 input blocks
    with pytest.raises(CheckpointError, match="input_blocks.11.0.in_layers.0.weight' is not part of an SDXL UNet"):
        layout.original_to_diffusers(original)
    with pytest.raises(CheckpointError, match="is missing"):
        layout.original_to_diffusers({"first_stage_model.x": torch.ones(1)})
