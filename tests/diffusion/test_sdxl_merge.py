"""SDXL merges end to end on tiny pipelines: per-block parameters land on exactly their block, components are
copied bit for bit, single-file sources and outputs, generation from the result, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tsugiki.diffusion import blocks, layout
from tsugiki.diffusion.merge import SINGLE_FILE_NAME, is_sdxl_recipe, merge_sdxl_to_disk
from tsugiki.errors import CheckpointError, MergeError, OutputExistsError, RecipeError
from tsugiki.factory.sdxl import build_sd15_unet, build_tiny_sdxl, export_single_file
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.methods import MergeInputs, get_method
from tsugiki.merging.recipe import load_recipe

from helpers import NEW_METHODS, new_method_recipe

OPTS = MergeOptions(progress=False)
UNET_FILE = Path("unet/diffusion_pytorch_model.safetensors")
COPIED = ("text_encoder/model.safetensors", "text_encoder_2/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
          "tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json", "scheduler/scheduler_config.json",
          "vae/config.json", "text_encoder/config.json")



@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    base = build_tiny_sdxl(root / "base", seed=0)
    variant = build_tiny_sdxl(root / "variant", seed=0, unet_seed=1)
    japanese = build_tiny_sdxl(root / "ja", seed=7, unet_seed=0)  # other text encoders (a "Japanese" donor)
    single = export_single_file(variant, root / "variant.safetensors")
    unet = load_file(base / UNET_FILE)
    for name, value in (("ones", 1.0), ("zeros", 0.0)):  # UNet-only folders with constant tensors
        (root / name).mkdir()
        shutil.copy(base / "unet" / "config.json", root / name / "config.json")
        save_file({k: torch.full_like(v, value) for k, v in unet.items()}, root / name / "diffusion_pytorch_model.safetensors")
    return {"root": root, "base": base, "variant": variant, "ja": japanese, "single": single}


def _recipe(text: str, sdxl) -> object:
    for key in ("base", "variant", "ja", "single", "root"):
        text = text.replace("{" + key + "}", str(sdxl[key]))
    return load_recipe(text)


def _tags(out: Path) -> dict[str, float]:
    """Every merged tensor must be constant; returns its value per tensor name."""
    merged = load_file(out / UNET_FILE)
    values = {}
    for name, t in merged.items():
        assert torch.all(t == t.flatten()[0]), name
        values[name] = float(t.flatten()[0])
    return values


def test_per_block_gradient_lands_on_its_block(sdxl, tmp_path):
    # a 20-value list gives one weight per block (BASE, IN00..IN08, M00, OUT00..OUT08)
    w = [round(0.05 * i, 2) for i in range(20)]
    recipe = _recipe(f"""
merge_method: linear
models:
  - model: {{root}}/ones
    parameters: {{weight: {w}}}
  - model: {{root}}/zeros
    parameters: {{weight: {[round(1 - x, 2) for x in w]}}}
""", sdxl)
    out = tmp_path / "out"
    merge_sdxl_to_disk(recipe, out, OPTS, components_from=str(sdxl["base"]))
    tags = _tags(out)
    assert len(tags) == 1680
    for name, value in tags.items():
        block, _ = blocks.locate(name)
        assert value == pytest.approx(w[blocks.BLOCKS.index(block)], abs=1e-6), name


def test_block_and_group_filters(sdxl, tmp_path):
    recipe = _recipe("""
merge_method: linear
parameters:
  normalize: false
models:
  - model: {root}/ones
    parameters:
      weight:
        - {filter: M00/attention/, value: 0.25}
        - {filter: IN04/, value: 0.5}
        - {filter: /norm/, value: 0.75}
        - value: 0.0
  - model: {root}/zeros
    parameters: {weight: 1.0}
""", sdxl)
    out = tmp_path / "out"
    merge_sdxl_to_disk(recipe, out, OPTS, components_from=str(sdxl["base"]))
    for name, value in _tags(out).items():
        block, group = blocks.locate(name)
        expected = (0.25 if (block, group) == ("M00", "attention") else 0.5 if block == "IN04"
                    else 0.75 if group == "norm" else 0.0)
        assert value == expected, name


def test_merge_writes_a_pipeline_that_generates(sdxl, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from tsugiki.diffusion.presets import apply_preset, get_preset

    recipe = _recipe("""
merge_method: slerp
base_model: {base}
parameters:
  t:
    - {filter: /attention/, value: 0.7}
    - value: 0.3
models:
  - model: {base}
  - model: {variant}
""", sdxl)
    out = tmp_path / "merged"
    result = merge_sdxl_to_disk(recipe, out, OPTS, single_file=True)
    assert result.tensors == 1680 and not list(tmp_path.glob(".merged.tmp-*"))
    for rel in COPIED:  # text encoders, tokenizers, VAE, scheduler: bit for bit
        assert (out / rel).read_bytes() == (sdxl["base"] / rel).read_bytes(), rel
    assert json.loads((out / "model_index.json").read_text()) == json.loads((sdxl["base"] / "model_index.json").read_text())
    merged, a, b = (load_file(p / UNET_FILE) for p in (out, sdxl["base"], sdxl["variant"]))
    assert not torch.equal(merged["conv_in.weight"], a["conv_in.weight"])
    assert not torch.equal(merged["conv_in.weight"], b["conv_in.weight"])
    # the optional single file is the same UNet in the original layout
    single = load_file(out / SINGLE_FILE_NAME)
    assert layout.original_to_diffusers(single).keys() == merged.keys()
    assert all(torch.equal(v, merged[k]) for k, v in layout.original_to_diffusers(single).items())

    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    preset = get_preset("turbo-1step")
    apply_preset(pipe, preset)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), **preset.call_kwargs()).images[0]
    assert image.size == (16, 16) and len(set(image.get_flattened_data())) > 1


def test_single_file_source_equals_folder_source(sdxl, tmp_path):
    text = """
merge_method: linear
models:
  - model: {base}
    parameters: {weight: 0.4}
  - model: VARIANT
    parameters: {weight: 0.6}
"""
    for tag, ref in (("folder", "{variant}"), ("single", "{single}")):
        merge_sdxl_to_disk(_recipe(text.replace("VARIANT", ref), sdxl), tmp_path / tag, OPTS)
    a, b = load_file(tmp_path / "folder" / UNET_FILE), load_file(tmp_path / "single" / UNET_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_text_encoders_from_another_pipeline_and_unet_swap(sdxl, tmp_path):
    recipe = _recipe("""
merge_method: passthrough
tokenizer_source: {ja}
models:
  - model: {variant}
""", sdxl)
    out = tmp_path / "swap"
    merge_sdxl_to_disk(recipe, out, OPTS)
    assert (out / UNET_FILE).read_bytes() != b""
    merged, variant = load_file(out / UNET_FILE), load_file(sdxl["variant"] / UNET_FILE)
    assert all(torch.equal(merged[k], variant[k]) for k in variant)  # a swap is bit-exact
    for rel in ("text_encoder/model.safetensors", "text_encoder_2/model.safetensors", "tokenizer/tokenizer.json"):
        assert (out / rel).read_bytes() == (sdxl["ja"] / rel).read_bytes()
    assert (out / "text_encoder/model.safetensors").read_bytes() != (sdxl["variant"] / "text_encoder/model.safetensors").read_bytes()
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (out / vae).read_bytes() == (sdxl["variant"] / vae).read_bytes()


def test_is_sdxl_recipe(sdxl, tmp_path):
    assert is_sdxl_recipe(_recipe("merge_method: passthrough\nmodels:\n  - model: {single}\n", sdxl))
    assert is_sdxl_recipe(_recipe("merge_method: passthrough\nmodels:\n  - model: {root}/ones\n", sdxl))
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text('{"model_type": "llama"}')
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, tmp_path / "lm" / "model.safetensors")
    assert not is_sdxl_recipe(load_recipe(f"merge_method: passthrough\nmodels:\n  - model: {tmp_path / 'lm'}\n"))
    assert not is_sdxl_recipe(load_recipe("merge_method: passthrough\nmodels:\n  - model: org/some-model\n"))


def _merge_error(recipe_text: str, sdxl, tmp_path, **kw):
    out = tmp_path / "bad"
    try:
        merge_sdxl_to_disk(_recipe(recipe_text, sdxl), out, OPTS, **kw)
    finally:
        assert not out.exists() and not list(tmp_path.glob(".bad.tmp-*"))  # nothing left behind


def test_bad_inputs(sdxl, tmp_path):
    pair = "merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {weight: 1}\n  - model: OTHER\n    parameters: {weight: 1}\n"
    sd15 = build_sd15_unet(tmp_path / "sd15")
    with pytest.raises(CheckpointError, match="not an SDXL base UNet: down blocks"):
        _merge_error(pair.replace("OTHER", str(sd15)), sdxl, tmp_path)
    # a UNet missing a block's tensors
    unet = load_file(sdxl["variant"] / UNET_FILE)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(sdxl["variant"] / "unet" / "config.json", partial / "config.json")
    save_file({k: v for k, v in unet.items() if blocks.locate(k)[0] != "OUT07"}, partial / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"\(block OUT07\) is missing; 12 missing in block\(s\) OUT07"):
        _merge_error(pair.replace("OTHER", str(partial)), sdxl, tmp_path)
    # not a UNet at all
    save_file({"weight": torch.zeros(2)}, tmp_path / "not_unet.safetensors")
    with pytest.raises(CheckpointError, match="not an SDXL UNet"):
        _merge_error(pair.replace("OTHER", str(tmp_path / "not_unet.safetensors")), sdxl, tmp_path)
    # a UNet with other sizes
    wide = tmp_path / "wide"
    wide.mkdir()
    shutil.copy(sdxl["variant"] / "unet" / "config.json", wide / "config.json")
    save_file({**unet, "conv_in.weight": torch.zeros(16, 4, 3, 3)}, wide / "diffusion_pytorch_model.safetensors")
    with pytest.raises(MergeError, match=r"conv_in.weight: shape \[16, 4, 3, 3\]"):
        _merge_error(pair.replace("OTHER", str(wide)), sdxl, tmp_path)
    # a VAE whose latents do not fit the UNet
    other_vae = tmp_path / "other_vae"
    shutil.copytree(sdxl["base"], other_vae)
    cfg = json.loads((other_vae / "vae" / "config.json").read_text())
    (other_vae / "vae" / "config.json").write_text(json.dumps({**cfg, "latent_channels": 16}))
    with pytest.raises(MergeError, match="VAE mismatch: .* 16 latent channels, the UNet's in_channels is 4"):
        _merge_error(pair.replace("OTHER", str(sdxl["variant"])), sdxl, tmp_path, components_from=str(other_vae))
    # components from a single file: it has no VAE/text encoders in diffusers form
    with pytest.raises(CheckpointError, match="pipeline donor .* must be a diffusers SDXL pipeline folder"):
        _merge_error("merge_method: passthrough\nmodels:\n  - model: {single}\n", sdxl, tmp_path)
    with pytest.raises(RecipeError, match="slices: not supported for SDXL"):
        _merge_error("merge_method: passthrough\nslices:\n  - sources:\n      - model: {base}\n        layer_range: [0, 1]\n",
                     sdxl, tmp_path)
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        merge_sdxl_to_disk(_recipe("merge_method: passthrough\nmodels:\n  - model: {base}\n", sdxl), tmp_path / "exists", OPTS)


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_each_newer_method_merges_every_unet_tensor_through_its_kernel(method, sdxl, tmp_path):
    """The methods added after the first twelve merge SDXL UNets like the others: each UNet tensor is the
    kernel applied to the sources' tensors in recipe order, the other components are copied."""
    root = sdxl["root"]
    for name in ("noisy_a", "noisy_b"):  # UNet-only sources near the base, so every method has work to do
        if not (root / name).exists():
            (root / name).mkdir()
            shutil.copy(sdxl["base"] / "unet" / "config.json", root / name / "config.json")
            g = torch.Generator().manual_seed(len(name) + ord(name[-1]))
            noisy = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in load_file(sdxl["base"] / UNET_FILE).items()}
            save_file(noisy, root / name / "diffusion_pytorch_model.safetensors")
    text = new_method_recipe(method, str(sdxl["base"]), [str(root / "noisy_a"), str(root / "noisy_b")])
    merge_sdxl_to_disk(load_recipe(text), tmp_path / "out", OPTS, components_from=str(sdxl["base"]))
    for rel in COPIED:
        assert (tmp_path / "out" / rel).read_bytes() == (sdxl["base"] / rel).read_bytes(), rel
    uses_base, models, params = NEW_METHODS[method]
    unets = {"base": load_file(sdxl["base"] / UNET_FILE),
             0: load_file(root / "noisy_a" / "diffusion_pytorch_model.safetensors"),
             1: load_file(root / "noisy_b" / "diffusion_pytorch_model.safetensors")}
    per_model = [{} if w == "base" and uses_base else yaml.safe_load(p) for w, p in models]
    base_index = 0 if uses_base else None
    kernel, globals_ = get_method(method), yaml.safe_load(params)
    merged = load_file(tmp_path / "out" / UNET_FILE)
    assert merged.keys() == unets["base"].keys()
    for name, got in merged.items():
        want = kernel(MergeInputs([unets[w][name] for w, _ in models], base_index, per_model, None, name), **globals_)
        assert torch.equal(got, want), name
