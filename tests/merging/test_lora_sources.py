"""LoRA sources (``MODEL+ADAPTER``, mergekit's syntax): recipes merged by tsugiki, compared with mergekit 0.1.5's
merges of the same recipes (recorded by scripts/make_mergekit_lora.py; mergekit is not imported here), and
the refusals of adapters that do not fit."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tsugiki.errors import CheckpointError
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk

from helpers import TEST_DATA, weights

DATA = TEST_DATA / "mergekit_lora"
RECIPES = sorted(DATA.glob("*.yaml"))


def recipe_of(path: Path, root: Path = DATA):
    return load_recipe(path.read_text().replace("{root}", str(root)), source_name=path.name)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_with_lora_sources_equals_mergekit(path, tmp_path):
    merge_to_disk(recipe_of(path), tmp_path / "out", MergeOptions(progress=False))
    got, want = weights(tmp_path / "out"), load_file(str(path.with_suffix(".safetensors")))
    assert sorted(got) == sorted(want)
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= 1e-6, (path.stem, worst)


def test_adapters_change_what_they_name():
    """A sanity check on the recording: each adapter moved the tensors it names, and only those."""
    a = load_file(str(DATA / "models" / "a" / "model.safetensors"))
    got = load_file(str(DATA / "passthrough_q_a.safetensors"))
    changed = {k for k in a if not got[k].equal(a[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight", "o_proj.weight")) for k in changed)
    base = load_file(str(DATA / "models" / "base" / "model.safetensors"))
    got = load_file(str(DATA / "passthrough_emb_base.safetensors"))
    changed = {k for k in base if not got[k].equal(base[k])}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= changed
    assert all(k.endswith(("k_proj.weight", "embed_tokens.weight", "lm_head.weight")) for k in changed)


def _refused(tmp_path, capsys, model_line: str, *, setup=None):
    """`tsugiki merge` of a one-LoRA-source recipe: its one error line, with nothing written."""
    from tsugiki.cli import main

    root = tmp_path / "root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(DATA / "models", root / "models")
    shutil.copytree(DATA / "adapters", root / "adapters")
    if setup is not None:
        setup(root)
    recipe = root / "merge.yaml"
    recipe.write_text(f"merge_method: linear\ndtype: float32\nmodels:\n  - model: models/base\n    parameters: {{weight: 0.5}}\n"
                      f"  - model: {model_line}\n    parameters: {{weight: 0.5}}\n")
    code = main(["merge", str(recipe), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    return err[0]


def test_missing_adapter_is_one_line(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "models/a+adapters/nope")
    assert "merge.yaml:6: models[1].model: adapter adapters/nope: not a local folder and could not be fetched" in line
    line = _refused(tmp_path, capsys, "models/a+./nope")
    assert line.endswith("merge.yaml:6: models[1].model: adapter ./nope: no such folder (and not a hub id)"), line


def test_adapter_dir_without_config_is_one_line(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "models/a+adapters/q_a",
                    setup=lambda root: (root / "adapters" / "q_a" / "adapter_config.json").unlink())
    assert "merge.yaml:6: models[1].model: adapter adapters/q_a: no adapter_config.json in" in line, line


def test_adapter_of_another_shape_is_one_line(tmp_path, capsys):
    def narrow(root):  # a base with a narrower MLP than the adapter's
        from safetensors.torch import load_file, save_file

        f = root / "models" / "a" / "model.safetensors"
        sd = load_file(f)
        sd["model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"][:4].contiguous()
        save_file(sd, f)

    line = _refused(tmp_path, capsys, "{model: models/a, lora: adapters/q_a}", setup=narrow)
    assert "merge.yaml:6: models[1].model: adapter adapters/q_a does not fit models/a: model.layers.0.self_attn.q_proj." \
           "weight is [8, 8] in the adapter, [4, 8] in the model" in line, line


def test_adapter_naming_a_tensor_the_model_lacks_is_one_line(tmp_path, capsys):
    line = _refused(tmp_path, capsys, "models/a+adapters/emb_base",
                    setup=lambda root: _drop(root / "models" / "a", "lm_head.weight"))
    assert "adapter adapters/emb_base does not fit models/a: it changes 'lm_head.weight', which models/a does not have" in line


def _drop(model: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(model / "model.safetensors")
    del sd[name]
    save_file(sd, model / "model.safetensors")


@pytest.mark.parametrize("key,value,words", [("use_dora", True, "DoRA (use_dora) is not supported"),
                                             ("peft_type", "LOHA", "only LoRA adapters")])
def test_unsupported_adapters_are_refused(tmp_path, key, value, words):
    d = tmp_path / "ad"
    shutil.copytree(DATA / "adapters" / "q_a", d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg[key] = value
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    recipe = load_recipe(f"merge_method: passthrough\nmodels:\n  - model: {DATA}/models/a+{d}\n", source_name="r.yaml")
    with pytest.raises(CheckpointError, match=re.escape(words)) as ei:
        merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False))
    assert str(ei.value).startswith("r.yaml:3: models[0].model: adapter ")
    assert not (tmp_path / "out").exists()


def test_in_memory_merge_of_lora_sources_equals_the_disk_merge(tmp_path):
    """The evolution's merger (tsugiki.merging.inmemory) reads MODEL+ADAPTER sources the same way."""
    from transformers import AutoModelForCausalLM

    from tsugiki.merging.inmemory import InMemoryMerger

    path = DATA / "ties_lora.yaml"
    recipe = recipe_of(path)
    model = AutoModelForCausalLM.from_pretrained(str(DATA / "models" / "base"))  # noqa: remote-code (a local tiny Llama)
    merger = InMemoryMerger(model, {r: r for r in recipe.model_refs()})
    merger.apply(recipe)
    want = load_file(str(path.with_suffix(".safetensors")))
    got = model.state_dict()
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-6


def test_evolve_sources_may_name_an_adapter(tmp_path):
    from types import SimpleNamespace

    from tsugiki.errors import EvolutionError
    from tsugiki.evolution.plan import check_source_paths
    from tsugiki.evolution.sources import local_dir, read_source_config

    ok = f"{DATA}/models/a+{DATA}/adapters/q_a"
    bad = f"{DATA}/models/a+{tmp_path}/nope"
    spec = SimpleNamespace(sources={"ja": ok}, named_as={})
    config = SimpleNamespace(spec=spec, where=lambda key: f"evolve.yaml:3: {key}: ")
    check_source_paths(config)
    assert local_dir(ok) == DATA / "models" / "a" and read_source_config(ok)["model_type"] == "llama"
    spec.sources = {"ja": bad}
    with pytest.raises(EvolutionError, match=re.escape(f"evolve.yaml:3: sources.ja: {bad}: {tmp_path}/nope: no such file")):
        check_source_paths(config)


def test_ps_search_with_an_adapter_source_runs_and_exports_what_it_scored(tmp_path):
    """An evolve config whose source is MODEL+ADAPTER: a PS search runs end to end, and its best exports (tsugiki
    merge's path, the adapter applied as the file is read) to the weights the search scored."""
    import torch

    from tsugiki.evolution import evolve, from_data, make_problem
    from tsugiki.evolution.runner import export_best

    root = tmp_path / "data"
    for part in ("models/base", "models/a", "models/b", "adapters/q_a", "adapters/mlp_b"):
        shutil.copytree(DATA / part, root / part)
    tokenizer = TEST_DATA / "mergekit_tokenizers" / "models" / "base"  # the search loads one
    for name in ("models/base", "models/a", "models/b"):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer / f, root / name / f)
    sources = {"base": f"{root}/models/base", "a": f"{root}/models/a+{root}/adapters/q_a",
               "b": f"{root}/models/b+{root}/adapters/mlp_b"}
    config = from_data({"name": "lora-ps", "sources": sources,
                        "space": {"kind": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["a", "b"],
                                  "params": {"weight": [0, 1]}},
                        "fitness": {"function": "neg_sphere", "args": {"center": 0.3}},
                        "search": {"seed": 0, "population": 3, "generations": 2}})
    result = evolve(config, tmp_path / "run", plots=False)
    assert result.evaluations == 6 and result.best is not None
    out = export_best(result, tmp_path / "run", tmp_path / "best")
    problem = make_problem(result.config, tmp_path / "run")
    problem.evaluate(result.best["params"])  # merged in memory, as the search does
    on_disk = weights(out)
    for name, tensor in problem.model.state_dict().items():
        assert torch.equal(tensor, on_disk[name]), name
    card = (out / "README.md").read_text()
    assert "adapters/q_a" in card and "adapters/mlp_b" in card
