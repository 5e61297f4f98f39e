"""Sampling presets, prompt files, and `eval t2i` end to end on a tiny pipeline (FID and HPSv2 with
random-weight networks: the plumbing, not the numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tsugiki.benchmarks.t2i import T2IOptions, evaluate_t2i, image_grid, load_prompts
from tsugiki.diffusion.presets import PRESETS, apply_preset, get_preset
from tsugiki.errors import TsugikiError, UnknownNameError
from tsugiki.factory.sdxl import build_clip_tokenizer, build_tiny_sdxl

PROMPTS = ["富士山と桜の写真", "a photo of a cat", "夜の東京の街並み"]



@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "p", seed=3)


def test_presets():
    assert {"lightning-4step", "turbo-1step", "sdxl-30step"} <= set(PRESETS.names())
    p = get_preset("lightning-4step")
    assert p.call_kwargs() == {"num_inference_steps": 4, "guidance_scale": 0.0}
    with pytest.raises(UnknownNameError, match="did you mean 'lightning-4step'"):
        get_preset("lightning-4steps")

    from diffusers import EulerDiscreteScheduler

    class Pipe:
        scheduler = EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)

    pipe = apply_preset(Pipe(), get_preset("turbo-1step"))
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing" and pipe.scheduler.config.steps_offset == 1
    pipe.scheduler.set_timesteps(4)
    assert int(pipe.scheduler.timesteps[0]) == 999  # trailing: the first step starts from pure noise


def test_load_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("一行目\n\n  two  \n", encoding="utf-8")
    assert load_prompts(tmp_path / "p.txt") == ["一行目", "two"]
    (tmp_path / "p.jsonl").write_text('{"caption": "猫"}\n{"prompt": "犬"}\n', encoding="utf-8")
    assert load_prompts(tmp_path / "p.jsonl", limit=1) == ["猫"]
    (tmp_path / "p.json").write_text('["a", "b"]')
    assert load_prompts(tmp_path / "p.json") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"caption": "x"}\n{"text": "y"}\n')
    with pytest.raises(TsugikiError, match="bad.jsonl:2: expected a JSON object"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(TsugikiError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")
    with pytest.raises(TsugikiError, match="not found"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(TsugikiError, match="no images"):
        image_grid([])


def _tiny_hps_checkpoint(path, vocab: int) -> None:
    """Random open_clip-layout CLIP with one 64-wide text and one 80-wide vision layer (ViT-H head widths)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    state = {"token_embedding.weight": r(vocab, 64), "positional_embedding": r(77, 64), "ln_final.weight": r(64) + 1,
             "ln_final.bias": r(64), "text_projection": r(64, 32), "logit_scale": torch.tensor(4.6),
             "visual.class_embedding": r(80), "visual.positional_embedding": r(5, 80), "visual.conv1.weight": r(80, 3, 14, 14),
             "visual.ln_pre.weight": r(80) + 1, "visual.ln_pre.bias": r(80), "visual.ln_post.weight": r(80) + 1,
             "visual.ln_post.bias": r(80), "visual.proj": r(80, 32)}
    for prefix, w in (("transformer.resblocks.0.", 64), ("visual.transformer.resblocks.0.", 80)):
        state.update({prefix + k: v for k, v in {
            "ln_1.weight": r(w) + 1, "ln_1.bias": r(w), "attn.in_proj_weight": r(3 * w, w), "attn.in_proj_bias": r(3 * w),
            "attn.out_proj.weight": r(w, w), "attn.out_proj.bias": r(w), "ln_2.weight": r(w) + 1, "ln_2.bias": r(w),
            "mlp.c_fc.weight": r(4 * w, w), "mlp.c_fc.bias": r(4 * w), "mlp.c_proj.weight": r(w, 4 * w), "mlp.c_proj.bias": r(w),
        }.items()})
    save_file(state, path)


def test_eval_t2i_end_to_end(pipeline, tmp_path):
    from tsugiki.benchmarks.fid_inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    save_file({k: v.half() for k, v in net.state_dict().items() if v.is_floating_point()}, tmp_path / "inception.safetensors")
    np.save(tmp_path / "ref.npy", np.random.default_rng(0).random((4, 2048)))
    tokenizer = build_clip_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    _tiny_hps_checkpoint(tmp_path / "hps.safetensors", len(tokenizer))
    options = T2IOptions(preset="turbo-1step", seed=5, inception_weights=str(tmp_path / "inception.safetensors"),
                         fid_ref=str(tmp_path / "ref.npy"), hps_weights=str(tmp_path / "hps.safetensors"),
                         clip_tokenizer=str(tmp_path / "tok"), progress=False)
    report = evaluate_t2i(pipeline, PROMPTS, tmp_path / "run", options)
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    from PIL import Image

    assert Image.open(tmp_path / "run" / "grid.png").size == (32, 32)  # 3 images of 16 px in a 2 x 2 grid
    assert report["n"] == 3 and report["sampling"]["num_inference_steps"] == 1 and report["sampling"]["guidance_scale"] == 0.0
    assert report["fid_n"] == [3, 4] and report["fid"] >= 0 and np.load(tmp_path / "run" / "features.npy").shape == (3, 2048)
    assert len(report["hps_per_image"]) == 3 and all(-100 <= s <= 100 for s in report["hps_per_image"])
    assert report["hps"] == pytest.approx(np.mean(report["hps_per_image"]))
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == report


def test_cli_parsers(pipeline, tmp_path, capsys):
    from tsugiki.cli import build_parser

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    parser = build_parser()
    args = parser.parse_args(["eval", "t2i", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "-o", str(tmp_path / "run"),
                              "--limit", "2", "--steps", "1", "--guidance", "0", "-q"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 2 and "fid" not in printed and "hps" not in printed
    args = parser.parse_args(["eval-t2i", str(pipeline), "--prompts", str(tmp_path / "p.txt"), "-o", str(tmp_path / "run2"),
                              "--hps-weights", str(tmp_path / "x.safetensors"), "--limit", "1", "--steps", "1", "-q"])
    with pytest.raises(TsugikiError, match="HPS needs --clip-tokenizer"):
        args.func(args)
    args = parser.parse_args(["tiny", "sdxl", "-o", str(tmp_path / "tiny"), "-n", "1", "--single-file"])
    assert args.func(args) == 0
    assert (tmp_path / "tiny" / "sdxl_0" / "model_index.json").exists() and (tmp_path / "tiny" / "sdxl_0.safetensors").exists()


def test_eval_t2i_old_spelling_is_an_alias(pipeline, tmp_path, capsys):
    """`tsugiki eval-t2i` runs `tsugiki eval t2i` (the same report) and says so once on stderr."""
    from tsugiki.cli import main

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    reports = {}
    for argv in (["eval", "t2i"], ["eval-t2i"]):
        out = tmp_path / "-".join(argv)
        assert main([*argv, str(pipeline), "--prompts", str(tmp_path / "p.txt"), "-o", str(out), "--limit", "2",
                     "--steps", "1", "--guidance", "0", "-q"]) == 0
        printed, err = capsys.readouterr()
        reports[argv[-1]] = json.loads(printed)
        if argv == ["eval-t2i"]:
            assert err.startswith("tsugiki: note: `tsugiki eval-t2i` is now `tsugiki eval t2i`\n")
            assert err.count("note:") == 1
        else:
            assert "note:" not in err
        assert (out / "grid.png").exists()
    assert reports["t2i"]["n"] == 2 and reports["eval-t2i"] == reports["t2i"]
