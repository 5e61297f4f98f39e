"""Whole recipes of the methods added after the first twelve (nuslerp, multislerp, karcher, sce,
arcee_fusion, nearswap, ram, ramplus_tl), in two slices with per-tensor filters and gradients, merged
by tsugiki and compared with mergekit 0.1.5's own merges of the same recipes on the same tiny Llama
checkpoints (recorded by scripts/make_mergekit_recipes.py; mergekit is not imported here)."""

from __future__ import annotations


import pytest
from safetensors.torch import load_file

from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk

from helpers import TEST_DATA, weights

DATA = TEST_DATA / "mergekit_recipes"
RECIPES = sorted(DATA.glob("*.yaml"))


def test_every_new_method_is_recorded():
    methods = {load_recipe(p.read_text().replace("{root}", str(DATA)), source_name=p.name).merge_method for p in RECIPES}
    assert methods == {"nuslerp", "multislerp", "karcher", "sce", "arcee_fusion", "nearswap", "ram", "ramplus_tl"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_equals_mergekit(path, tmp_path):
    recipe = load_recipe(path.read_text().replace("{root}", str(DATA)), source_name=path.name)
    merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False))
    got, want = weights(tmp_path / "out"), load_file(str(path.with_suffix(".safetensors")))
    assert sorted(got) == sorted(want)
    worst = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
    assert worst <= 1e-6, (path.stem, worst)
    # a sanity check on the recording: the merge moved away from the base
    base = load_file(str(DATA / "models" / "base" / "model.safetensors"))
    assert any(not want[k].equal(base[k]) for k in want)
