"""`tsugiki extract-lora` on the tiny pair of tests/data/mergekit_lora (models/b fine-tuned from models/base):
its adapters rebuild b as well as mergekit-extract-lora's recorded adapters do at the same rank, rebuild it
exactly at full rank, load with peft, and merge back as ``BASE+ADAPTER``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tsugiki.cli import main
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk

from helpers import TEST_DATA, weights

DATA = TEST_DATA / "mergekit_lora"
BASE, FT = DATA / "models" / "base", DATA / "models" / "b"


def rebuilt(adapter: Path, out: Path) -> dict[str, torch.Tensor]:
    """``BASE+adapter`` merged by tsugiki (a passthrough recipe), as tensors."""
    recipe = load_recipe(f"merge_method: passthrough\nmodels:\n  - model: {BASE}+{adapter}\n", source_name="r.yaml")
    merge_to_disk(recipe, out, MergeOptions(progress=False))
    return weights(out)


def extract(tmp_path: Path, rank: int, *extra: str) -> Path:
    out = tmp_path / f"lora{rank}"
    assert main(["extract-lora", "--model", str(FT), "--base", str(BASE), "--rank", str(rank), "-o", str(out), *extra]) == 0
    return out


def relative_errors(got: dict, ft: dict, base: dict) -> dict[str, float]:
    return {k: float((got[k] - ft[k]).norm() / (ft[k] - base[k]).norm()) for k in ft if not ft[k].equal(base[k])}


@pytest.mark.parametrize("rank,extra,recorded", [(2, (), "b_rank2"), (3, ("--embeddings",), "b_rank3_embed")])
def test_extraction_equals_mergekit_at_the_same_rank(tmp_path, capsys, rank, extra, recorded):
    ours = extract(tmp_path, rank, *extra)
    table = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in table and "worst relative error" in table
    ft, base = load_file(str(FT / "model.safetensors")), load_file(str(BASE / "model.safetensors"))
    got = rebuilt(ours, tmp_path / "ours")
    want = rebuilt(DATA / "extract" / recorded, tmp_path / "mergekit")
    assert sorted(got) == sorted(want)
    assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-5
    e_ours, e_mk = relative_errors(got, ft, base), relative_errors(want, ft, base)
    assert all(e_ours[k] <= e_mk[k] + 1e-5 for k in e_mk), {k: (e_ours[k], e_mk[k]) for k in e_mk}
    assert max(e_mk.values()) > 0.1  # a rank that does lose something
    # the reported errors are the errors of the adapter written
    report = json.loads((ours / "extract_lora_errors.json").read_text())
    assert report["rank"] == rank
    by_module = {m["module"]: m for m in report["modules"]}
    for k, err in e_ours.items():
        assert by_module[k.removesuffix(".weight")]["relative_frobenius_error"] == pytest.approx(err, abs=1e-5)
    kinds = {m["kind"] for m in report["modules"]}
    assert ("embedding lora" in kinds) == ("--embeddings" in extra)
    mk_config = json.loads((DATA / "extract" / recorded / "adapter_config.json").read_text())
    config = json.loads((ours / "adapter_config.json").read_text())
    for key in ("r", "lora_alpha", "rank_pattern", "use_rslora"):
        assert config[key] == mk_config[key], key
    assert sorted(config["target_modules"]) == sorted(mk_config["target_modules"])
    assert sorted(config["modules_to_save"]) == sorted(mk_config["modules_to_save"])


@pytest.mark.parametrize("extra", [(), ("--embeddings",)])
def test_full_rank_extraction_rebuilds_the_finetune(tmp_path, extra):
    ours = extract(tmp_path, 16, *extra)
    got, ft = rebuilt(ours, tmp_path / "merged"), load_file(str(FT / "model.safetensors"))
    assert max((got[k] - ft[k]).abs().max().item() for k in ft) <= 1e-5
    report = json.loads((ours / "extract_lora_errors.json").read_text())
    assert report["worst_relative_frobenius_error"] <= 1e-5


def test_peft_loads_the_extracted_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ours = extract(tmp_path, 16, "--embeddings")
    model = AutoModelForCausalLM.from_pretrained(str(BASE), dtype=torch.float32)  # noqa: remote-code (a local tiny Llama)
    merged = PeftModel.from_pretrained(model, str(ours)).merge_and_unload().state_dict()
    ft = load_file(str(FT / "model.safetensors"))
    assert max((merged[k] - ft[k]).abs().max().item() for k in ft) <= 1e-5


def test_bad_rank_and_existing_output_are_refused(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["extract-lora", "--model", str(FT), "--base", str(BASE), "--rank", "0", "-o", str(out)]) == 2
    assert "--rank must be at least 1" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    assert main(["extract-lora", "--model", str(FT), "--base", str(BASE), "--rank", "2", "-o", str(out)]) == 2
    assert "output exists" in capsys.readouterr().err
