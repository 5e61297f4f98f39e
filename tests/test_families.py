"""`tsugiki.merge`, the one library entry (tsugiki.families): it writes what `tsugiki merge` writes, and
the recipe's sources pick the family (LM, LLaVA graft, SDXL pipeline) as the family functions would."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import tsugiki
from tsugiki.cli import main
from tsugiki.factory.sdxl import build_tiny_sdxl
from tsugiki.factory.vlm import build_graft_set
from tsugiki.families import family_of
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe

from helpers import weights

QUIET = MergeOptions(progress=False)


def linear(*models):
    return "merge_method: linear\nmodels:\n" + "".join(f"  - {{model: {m}, parameters: {{weight: 1.0}}}}\n" for m in models)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_graft_set(tmp_path_factory.mktemp("graft"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "base", seed=0)


def test_import_tsugiki_stays_light_and_merge_is_the_entry():
    code = "import sys, tsugiki; assert 'torch' not in sys.modules, 'torch imported'; print(tsugiki.__version__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    from tsugiki.families import merge

    assert tsugiki.merge is merge
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tsugiki.nope  # noqa: B018


def test_merge_of_a_recipe_path_writes_what_the_cli_writes(tiny_siblings, tmp_path):
    a, b = tiny_siblings.variants[:2]
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = folder / "recipe.yaml"  # relative model paths: they resolve against the recipe's folder
    recipe.write_text(linear(os.path.relpath(a, folder), os.path.relpath(b, folder)))
    result = tsugiki.merge(recipe, tmp_path / "lib", QUIET)
    assert result.out == tmp_path / "lib" and result.tensors == len(weights(a))
    assert main(["merge", str(recipe), "-o", str(tmp_path / "cli"), "-q"]) == 0
    lib, cli = (load_file(tmp_path / d / "model.safetensors") for d in ("lib", "cli"))
    assert lib.keys() == cli.keys() and all(torch.equal(lib[k], cli[k]) for k in lib)
    wa, wb = weights(a), weights(b)
    assert all(torch.allclose(lib[k], (wa[k] + wb[k]) / 2, atol=1e-6) for k in wa)  # linear, weights normalized
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_family_of_names_each_family(tiny_siblings, world, pipeline, tmp_path):
    lm, llava = tiny_siblings.base, world.llava
    assert family_of(load_recipe(linear(lm, tiny_siblings.variants[0]))) == "lm"
    assert family_of(load_recipe(linear(world.llms.base, llava))) == "vlm"  # one LLaVA source is enough
    assert family_of(load_recipe(linear(pipeline))) == "sdxl"
    assert family_of(load_recipe(linear(pipeline.name)), pipeline.parent) == "sdxl"  # relative to base_dir


def test_merge_routes_to_the_family_functions(world, pipeline, tmp_path):
    from tsugiki.diffusion.merge import SINGLE_FILE_NAME, merge_sdxl_to_disk
    from tsugiki.vlm.merge import merge_vlm_to_disk

    vlm = load_recipe(linear(world.llava, world.llms.base))
    tsugiki.merge(vlm, tmp_path / "vlm", QUIET, components_from="ignored", single_file=True)  # SDXL options: ignored
    merge_vlm_to_disk(vlm, tmp_path / "vlm_direct", QUIET)
    assert (tmp_path / "vlm/model.safetensors").read_bytes() == (tmp_path / "vlm_direct/model.safetensors").read_bytes()

    sdxl = load_recipe("merge_method: passthrough\nmodels:\n  - model: base\n")
    tsugiki.merge(sdxl, tmp_path / "sdxl", QUIET, base_dir=pipeline.parent, single_file=True, vocab="embed_slice")
    merge_sdxl_to_disk(sdxl, tmp_path / "sdxl_direct", QUIET, base_dir=pipeline.parent, single_file=True)
    for name in ("unet/diffusion_pytorch_model.safetensors", SINGLE_FILE_NAME):
        assert (tmp_path / "sdxl" / name).read_bytes() == (tmp_path / "sdxl_direct" / name).read_bytes(), name
