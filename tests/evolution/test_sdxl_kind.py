"""SDXL block search: candidates equal a hand-computed per-block task arithmetic and the exported
pipeline; the UNet fitness equals an independent diffusers forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tsugiki.diffusion.blocks import locate
from tsugiki.errors import EvolutionError
from tsugiki.evolution import evolve, from_data, load_config, make_problem
from tsugiki.evolution.sources import prepare_sources
from tsugiki.evolution.kinds.sdxl.unet import load_unet, unet_forward, unet_inputs
from tsugiki.merging.methods.nearswap import nearswap_tensors
from helpers import REPO

CONFIG = REPO / "configs" / "tiny-sdxl-blocks.yaml"


def unet_weights(pipe: Path) -> dict:
    return load_file(pipe / "unet" / "diffusion_pytorch_model.safetensors")



@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sdxl_run")
    cfg = load_config(CONFIG).with_search(generations=1, population=4)
    prepare_sources(cfg, run)
    return cfg, run


def test_block_candidate_equals_hand_computed_task_arithmetic_and_export(sdxl_run, tmp_path):
    cfg, run = sdxl_run
    problem = make_problem(cfg, run)
    assert problem.space.names == [f"{m}.weight.{u}" for m in ("variant_0", "variant_1") for u in ("IN04", "M00", "OUT01", "rest")]
    w = {"IN04": (0.9, 0.1), "M00": (0.2, 0.7), "OUT01": (0.5, 0.5), "rest": (0.3, 0.05)}
    values = {f"variant_{i}.weight.{u}": w[u][i] for u in w for i in (0, 1)}
    problem.evaluate(values)
    base, v0, v1 = (unet_weights(run / "models" / n) for n in ("base", "variant_0", "variant_1"))
    got = problem.model.state_dict()
    for name in base:
        a, b = w.get(locate(name)[0], w["rest"])
        want = base[name] + a * (v0[name] - base[name]) + b * (v1[name] - base[name])
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=name)
    out = problem.export(values, tmp_path / "pipe")
    exported = unet_weights(out)
    assert all(torch.equal(exported[k], got[k]) for k in base)
    assert (out / "model_index.json").exists() and (out / "vae").is_dir()


def test_unet_output_mse_equals_independent_forward_and_is_zero_at_the_reference(sdxl_run):
    cfg, run = sdxl_run
    problem = make_problem(cfg, run)
    names = problem.space.names
    at_ref = {n: (1.0 if n.startswith("variant_0") else 0.0) for n in names}
    assert problem.evaluate(at_ref) == pytest.approx(0.0, abs=1e-9)
    values = {n: 0.5 for n in names}
    got = problem.evaluate(values)
    ref = load_unet(run / "models" / "variant_0")
    cand = problem.model
    x = unet_inputs(ref, 2, 0)
    with torch.no_grad():
        want = -float(((unet_forward(cand, x) - unet_forward(ref, x)) ** 2).mean())
    assert got == pytest.approx(want, rel=1e-6) and got < 0


def test_bad_block_names_are_config_errors(tmp_path):
    data = {"sources": {"base": str(tmp_path), "v": str(tmp_path)},
            "space": {"kind": "sdxl_blocks", "base_model": "base", "models": ["v"], "blocks": ["IN99"]},
            "fitness": {"function": "unet_output_mse", "args": {"reference": "v"}}, "search": {"generations": 1}}
    with pytest.raises(EvolutionError, match="unknown block 'IN99'"):
        make_problem(from_data(data), tmp_path)
    data["space"].update(units="groups", blocks=["M00/attention", "OUT01"])
    problem = make_problem(from_data(data), tmp_path)
    assert "v.weight.M00/attention" in problem.space.names and "v.weight.OUT01/resnet" in problem.space.names
    assert "v.weight.M00/resnet" not in problem.space.names and "v.weight.rest" in problem.space.names


def test_tiny_sdxl_config_runs(sdxl_run):
    cfg, run = sdxl_run
    result = evolve(cfg, run)
    assert result.evaluations == 4 and result.failures == 0 and result.best["fitness"] < 0
    assert (run / "plots" / "ps_heatmap.png").exists()
    page = (run / "report.html").read_text()
    assert '<img src="plots/ps_heatmap.png"' in page and '<img src="plots/fitness.png"' in page


def test_block_search_over_a_method_level_parameter(sdxl_run, tmp_path):
    """nearswap's t is one searched value per block for all models (not per model); the candidate merged in
    memory equals nearswap of each UNet tensor with its block's t, and the exported UNet."""
    cfg, run = sdxl_run
    data = dict(cfg.data)
    data["space"] = {**data["space"], "method": "nearswap", "models": ["variant_0"], "params": {"t": [0.0, 0.2]}}
    problem = make_problem(from_data(data), run)
    assert problem.space.names == [f"t.{u}" for u in ("IN04", "M00", "OUT01", "rest")]
    t = {"IN04": 0.15, "M00": 0.0, "OUT01": 0.05, "rest": 0.01}
    values = {f"t.{u}": v for u, v in t.items()}
    problem.evaluate(values)
    base, v0 = (unet_weights(run / "models" / n) for n in ("base", "variant_0"))
    got = problem.model.state_dict()
    for name in base:
        want = nearswap_tensors(t.get(locate(name)[0], t["rest"]), base[name], v0[name])
        assert torch.equal(got[name], want), name
    exported = unet_weights(problem.export(values, tmp_path / "pipe"))
    assert all(torch.equal(exported[k], got[k]) for k in base)
