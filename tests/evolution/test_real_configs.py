"""The paper-scale configs (configs/evollm-jp-*, evovlm-jp*, evosdxl-jp*) parse, keep their hub ids and
resolve into the search spaces the paper describes, offline: each source's config.json is written here
with the real 7B shapes (into a fake Hugging Face cache for the CLI), and nothing else is read.

Expected dimensions are counted by hand from the paper's setups (Akiba et al. 2024, arXiv:2403.13187):
PS with M models x (weight, density) x G values; DFS with T = (sum of layers) x r indicators plus an
M x M scaling matrix; SDXL with models x 20 UNet blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsugiki.errors import EvolutionError
from tsugiki.evolution.config import from_data, load_config
from tsugiki.evolution.optimizers import cma_population
from tsugiki.evolution.plan import plan_space
from helpers import REPO

CONFIGS = REPO / "configs"
PAPER_CONFIGS = sorted([*CONFIGS.glob("evollm-jp-*.yaml"), *CONFIGS.glob("evovlm-jp*.yaml"),
                        *CONFIGS.glob("evosdxl-jp*.yaml")])

# config.json as the hub has them (the fields a plan reads; Mistral-7B: 32 layers, hidden 4096)
MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "num_hidden_layers": 32,
              "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
              "vocab_size": 32000}
# llava-hf's text_config omits num_hidden_layers (Mistral's default, 32)
LLAVA_NEXT_7B = {"architectures": ["LlavaNextForConditionalGeneration"], "model_type": "llava_next",
                 "text_config": {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 4096,
                                 "vocab_size": 32064},
                 "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "num_hidden_layers": 24}}
HUB_CONFIGS = {
    "mistralai/Mistral-7B-v0.1": MISTRAL_7B,
    "augmxnt/shisa-gamma-7b-v1": MISTRAL_7B,
    "WizardLMTeam/WizardMath-7B-V1.1": MISTRAL_7B,
    "GAIR/Abel-7B-002": MISTRAL_7B,
    "llava-hf/llava-v1.6-mistral-7b-hf": LLAVA_NEXT_7B,
}
SDXL_BLOCKS = ["BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9))]


def by_name(config) -> dict[str, dict]:
    """Source name -> its (fake) config.json, as a caller of plan_space gives them."""
    return {name: HUB_CONFIGS[ref] for name, ref in config.data["sources"].items() if ref in HUB_CONFIGS}


def load(name: str):
    return load_config(CONFIGS / f"{name}.yaml")


def test_the_paper_configs_exist():
    names = {p.stem for p in PAPER_CONFIGS}
    assert {"evollm-jp-ps", "evollm-jp-dfs", "evollm-jp-ps-dfs", "evovlm-jp", "evosdxl-jp-style"} <= names


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_keeps_hub_ids(path):
    config = load_config(path)
    assert config.data["sources"], "a paper config names its sources"
    for name, ref in config.data["sources"].items():
        assert ref.count("/") == 1 and not Path(ref).is_absolute(), f"{name}: {ref} is no longer a hub id"
    assert config.search["device"] == "cuda"
    header = path.read_text(encoding="utf-8").split("\nname:")[0]
    for needle in ("Expected compute", "GPU-hours", "memory", "arXiv:2403.13187"):
        assert needle in header, f"{path.name}: header comment lacks {needle!r}"


def test_evollm_ps_space_is_per_model_density_and_weight():
    config = load("evollm-jp-ps")
    assert config.data["sources"] == {"mistral": "mistralai/Mistral-7B-v0.1", "shisa": "augmxnt/shisa-gamma-7b-v1",
                                      "wizardmath": "WizardLMTeam/WizardMath-7B-V1.1", "abel": "GAIR/Abel-7B-002"}
    plan = plan_space(config, by_name(config))
    # 3 models x (weight, density) x 1 value
    assert plan.space.dim == 6
    expected = [f"{m}.{p}" for m in ("shisa", "wizardmath", "abel") for p in ("weight", "density")]
    assert sorted(plan.space.names) == sorted(expected)
    assert dict((label.split(":")[0], n) for label, n in plan.parts) == {"weight": 3, "density": 3}
    values = plan.space.decode(plan.space.x0())
    assert values["shisa.weight"] == pytest.approx(0.5) and values["abel.density"] == pytest.approx(0.55)
    assert (plan.population, plan.evaluations) == (16, 1000)


def test_evollm_ps_layer_wise_variant_uses_the_32_mistral_layers():
    config = load("evollm-jp-ps")
    data = json.loads(json.dumps(config.data))
    data["space"]["layer_groups"] = 32
    plan = plan_space(from_data(data), by_name(config))
    # 3 models x 2 params x (32 layer groups + rest: embeddings, final norm, head)
    assert plan.space.dim == 3 * 2 * 33 == 198
    assert "shisa.density.g31" in plan.space.names and "abel.weight.rest" in plan.space.names
    data["space"]["layer_groups"] = 33  # more groups than Mistral-7B has layers
    with pytest.raises(EvolutionError, match="1..32"):
        plan_space(from_data(data), by_name(config))


@pytest.mark.parametrize("name", ["evollm-jp-dfs", "evollm-jp-ps-dfs"])
def test_evollm_dfs_space_is_192_indicators_plus_w(name):
    config = load(name)
    configs = by_name(config)
    configs.setdefault("ps", MISTRAL_7B)  # the PS model keeps Mistral-7B's shape
    plan = plan_space(config, configs)
    first, second = config.space["models"]
    indicators = [n for n in plan.space.names if n.startswith("use.")]
    scales = [n for n in plan.space.names if n.startswith("scale.")]
    # T = M x r with M = 32 + 32 layers and r = 3; W is 2 x 2 (tsugiki indexes it by model)
    assert len(indicators) == (32 + 32) * 3 == 192
    assert sorted(scales) == sorted(f"scale.{a}.{b}" for a in (first, second) for b in (first, second))
    assert plan.space.dim == 196
    expected_slots = [(m, layer) for _ in range(3) for m in (first, second) for layer in range(32)]
    assert indicators == [f"use.{t}.{m}.L{layer}" for t, (m, layer) in enumerate(expected_slots)]
    # the search starts from the first model's own path: its first repetition on, everything else off
    x0 = plan.space.decode(plan.space.x0())
    assert [n for n in indicators if x0[n] > 0] == indicators[:32]
    assert all(x0[n] == pytest.approx(1.0) for n in scales)
    # 24 candidates x 100 generations
    assert (plan.population, plan.evaluations) == (24, 2400)


def test_evollm_dfs_refuses_sources_of_different_width():
    config = load("evollm-jp-dfs")
    configs = by_name(config)
    configs["wizardmath"] = {**MISTRAL_7B, "hidden_size": 5120}
    with pytest.raises(EvolutionError, match="cannot share a path"):
        plan_space(config, configs)


def test_ps_dfs_takes_the_ps_model_shape_from_the_ps_recipe(tmp_path):
    config = load("evollm-jp-ps-dfs")
    # the PS run has not happened: its best.yaml is missing and no "ps" config is given
    with pytest.raises(EvolutionError, match="run the PS search first"):
        plan_space(config, by_name(config))
    recipe = tmp_path / "best.yaml"  # a PS run's best.yaml names its sources by hub id
    recipe.write_text("merge_method: dare_ties\nbase_model: mistralai/Mistral-7B-v0.1\nmodels:\n"
                      "  - {model: augmxnt/shisa-gamma-7b-v1, parameters: {weight: 0.5, density: 0.5}}\n")
    data = json.loads(json.dumps(config.data))
    data["space"]["ps_recipe"] = str(recipe)
    data["sources"]["mistral"] = "mistralai/Mistral-7B-v0.1"
    with_recipe = from_data(data)
    plan = plan_space(with_recipe, by_name(with_recipe))
    assert plan.space.dim == 196
    assert any("Mistral-7B-v0.1" in n for n in plan.notes)


def test_evovlm_merges_the_language_model_with_vision_fixed():
    config = load("evovlm-jp")
    assert config.data["sources"]["llava"] == "llava-hf/llava-v1.6-mistral-7b-hf"
    plan = plan_space(config, by_name(config))
    # 2 models (the VLM's language model, shisa) x (weight, density)
    assert plan.space.dim == 4
    assert sorted(plan.space.names) == ["llava.density", "llava.weight", "shisa.density", "shisa.weight"]
    assert any("vision tower and projector stay fixed" in n for n in plan.notes)
    assert config.data["fitness"]["function"] == "rougeL_ja"


def test_a_vlm_alone_gets_its_layer_count_from_the_text_family_default():
    config = load("evovlm-jp")
    data = json.loads(json.dumps(config.data))
    data["space"].pop("base_model")
    data["space"].update(method="linear", models=["llava"], params={"weight": [0.0, 1.0]})
    data["space"]["layer_groups"] = 32  # valid only if the 32 layers were found (text_config omits them)
    plan = plan_space(from_data(data), by_name(config))
    assert plan.space.dim == 1 * 1 * 33


def test_evosdxl_style_searches_every_block_of_both_fine_tunes():
    config = load("evosdxl-jp-style")
    plan = plan_space(config, {})  # the 20 SDXL blocks are fixed: no model config needed
    assert plan.space.dim == 2 * 20 == 40
    assert plan.space.names == [f"{m}.weight.{b}" for m in ("juggernaut", "dpo") for b in SDXL_BLOCKS]
    assert (plan.population, plan.evaluations) == (16, 960)


def test_default_population_is_pycmas():
    import cma

    for dim in (4, 6, 40, 196):
        es = cma.CMAEvolutionStrategy([0.0] * dim, 0.5, {"verbose": -9})
        assert cma_population(dim) == es.popsize


def test_plan_refuses_an_unknown_architecture_from_config_alone():
    config = load("evollm-jp-ps")
    configs = by_name(config)
    configs["mistral"] = {**MISTRAL_7B, "architectures": ["SomethingNewForCausalLM"]}
    with pytest.raises(EvolutionError, match="no known architecture"):
        plan_space(config, configs)


# ------------------------------------------------------------------------------ the CLI, offline
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """A Hugging Face cache holding only the sources' config.json files; offline mode on; and any
    attempt to fetch a model snapshot (weights) fails the test."""
    import huggingface_hub.constants as hub_constants

    import tsugiki.merging.checkpoint as checkpoint

    cache = tmp_path / "hub"
    for repo, cfg in HUB_CONFIGS.items():
        folder = cache / ("models--" + repo.replace("/", "--"))
        revision = "0" * 40
        (folder / "snapshots" / revision).mkdir(parents=True)
        (folder / "snapshots" / revision / "config.json").write_text(json.dumps(cfg))
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    def no_snapshot(repo_id):
        raise AssertionError(f"a plan tried to fetch the weights of {repo_id}")

    monkeypatch.setattr(checkpoint, "_snapshot", no_snapshot)
    return cache


@pytest.mark.parametrize("name, dims", [("evollm-jp-ps", 6), ("evollm-jp-dfs", 196), ("evovlm-jp", 4),
                                        ("evosdxl-jp-style", 40), ("evollm-jp-mo", 6)])
def test_cli_plan_reads_only_config_files(offline_hub, capsys, name, dims):
    from tsugiki.cli import main

    assert main(["evolve", str(CONFIGS / f"{name}.yaml"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert f"{dims} dimensions" in out
    assert "evaluations" in out


def test_multi_objective_config_searches_the_ps_space_with_nsga2(offline_hub, capsys):
    """configs/evollm-jp-mo.yaml: evollm-jp-ps's merge, two maximised objectives (MGSM-JA; lm-eval's gsm8k),
    NSGA-II."""
    from tsugiki.cli import main

    config = load("evollm-jp-mo")
    ja, en = config.spec.objectives
    assert (ja.name, ja.direction, ja.function, ja.args["metric"], ja.data.mgsm) == (
        "acc_ja", "maximize", "mgsm_accuracy", "acc_ja", "ja")
    assert (en.name, en.direction, en.function, en.args["tasks"], en.data) == (
        "acc_en", "maximize", "lm_eval", ["gsm8k"], None)
    assert config.data["space"] == load("evollm-jp-ps").data["space"]
    assert main(["evolve", str(CONFIGS / "evollm-jp-mo.yaml"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "budget: population 20, 1000 evaluations" in out
    assert "optimizer nsga2 over 2 objectives (acc_ja: maximize, acc_en: maximize)" in out


def test_cli_plan_says_which_source_config_is_missing(offline_hub, capsys, tmp_path):
    from tsugiki.cli import main

    config = tmp_path / "c.yaml"
    config.write_text((CONFIGS / "evollm-jp-ps.yaml").read_text().replace("GAIR/Abel-7B-002", "GAIR/not-cached"))
    assert main(["evolve", str(config), "--plan"]) == 2
    assert "GAIR/not-cached" in capsys.readouterr().err
