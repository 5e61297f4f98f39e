"""The demo's SDXL stage: block-wise merge of two tiny SDXL UNets trained on different drawings.

One quick stage run (session fixture) is checked against the metric code run again on what the stage
saved, against a hand-computed task-arithmetic merge, and for bit-identical fixed components."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tsugiki.demo.sdxl import data, stage
from tsugiki.demo.stage import StageContext

QUICK_LIMIT_S = 90  # the quick budget is < 40 s on an idle core; this machine is shared, so leave room


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sdxl_demo")
    ctx = StageContext(run_dir=run_dir, out=run_dir / "sdxl", quick=True, seed=0, progress=False)
    ctx.out.mkdir()
    start = time.perf_counter()
    result = stage.run_sdxl_stage(ctx)
    return ctx, result, time.perf_counter() - start


SEEDS = tuple(range(stage.QUICK.seeds))  # search seeds 0, 1, ... (the context's seed is 0)
NAMES = {**stage.ROW_NAMES, **{f"evolved-s{seed}": stage.evolved_name(seed) for seed in SEEDS}}  # eval folder -> row


def _row(result, name: str):
    return next(r for r in result.rows if r.model == name)


def test_quick_run_is_fast_and_complete(quick_run):
    ctx, result, seconds = quick_run
    assert seconds < QUICK_LIMIT_S
    assert result.stage == "sdxl" and result.headline == "acc" and not result.lower_is_better
    assert len(SEEDS) > 1  # the quick run exercises several search seeds
    assert sorted(r.role for r in result.rows) == ["baseline", *["evolved"] * len(SEEDS), "source", "source"]
    for r in result.rows:
        assert set(r.metrics) == {"acc", "prob", "hps", "fid", "prob_fitness"}
        assert all(np.isfinite(v) for v in r.metrics.values())
        for k in ("acc", "prob", "hps"):
            lo, hi = r.ci[k]
            assert lo <= r.metrics[k] <= hi
    for f in result.figures:
        assert (ctx.run_dir / f.path).is_file(), f.path
    captions = " ".join(f.caption for f in result.figures)
    assert "fitness" in captions and all(name in captions for name in NAMES.values())
    assert all(f"search seed {seed}" in captions for seed in SEEDS)
    assert all((ctx.run_dir / s.image).is_file() for s in result.samples)
    assert any("not comparable" in n for n in result.notes)
    assert {s.model for s in result.samples} == set(NAMES.values())
    assert result.verdict and len(result.tables) == len(SEEDS)
    assert [s.seed for s in result.seeds] == list(SEEDS) and f"in {sum(s.won for s in result.seeds)} of {len(SEEDS)}" in result.verdict
    json.dumps(result.to_json())  # results.json-ready
    for path in result.models.values():
        assert (ctx.run_dir / path / "model_index.json").is_file()


def test_numbers_equal_the_metric_code_on_saved_images(quick_run):
    from tsugiki.benchmarks.fid import fid_from_features
    from tsugiki.benchmarks.hps import hps_scores
    from tsugiki.benchmarks.t2i import load_images

    ctx, result, _ = quick_run
    judge, tokenizer = stage.load_judge(ctx.out / "models" / "judge")
    reference = np.load(ctx.out / "references" / "heldout.npy")
    # the real set's features are the judge's features of the saved reference drawings
    np.testing.assert_array_equal(data.judge_image_features(judge, load_images(ctx.out / "references" / "heldout")), reference)
    for key, name in NAMES.items():
        row = _row(result, name)
        folder = ctx.out / "eval" / key
        images = load_images(folder / "images")
        saved = json.loads((folder / "scores.json").read_text())
        feats = data.judge_image_features(judge, images)
        np.testing.assert_array_equal(feats, np.load(folder / "features.npy"))
        assert row.metrics["fid"] == fid_from_features(feats, reference)
        prompts = saved["extra"]["prompts"]
        per_image = hps_scores(judge, tokenizer, images, prompts)
        assert per_image == saved["extra"]["hps_per_image"]
        assert row.metrics["hps"] == pytest.approx(float(np.mean(per_image)), abs=1e-12)
        # accuracy and probability by hand from the judge's embeddings: softmax of scaled cosines
        every = [i.prompt for i in data.world_items()]
        text = torch.nn.functional.normalize(data.judge_text_features(judge, tokenizer, every).double(), dim=-1)
        img = torch.nn.functional.normalize(torch.from_numpy(feats), dim=-1)
        logits = judge.logit_scale.exp().double() * img @ text.T
        own = torch.tensor([every.index(p) for p in prompts])
        hits = (logits.argmax(dim=1) == own).double()
        assert row.metrics["acc"] == pytest.approx(100.0 * float(hits.mean()), abs=1e-9)
        prob = torch.softmax(logits, dim=1)[torch.arange(len(prompts)), own]
        assert row.metrics["prob"] == pytest.approx(100.0 * float(prob.mean()), abs=1e-9)


def test_evolved_fitness_split_score_is_the_searchs_best(quick_run):
    """The exported pipeline, loaded from disk, reproduces the in-memory candidate's fitness."""
    ctx, result, _ = quick_run
    for seed in SEEDS:
        best = json.loads((ctx.out / f"search-s{seed}" / "best.json").read_text())
        assert _row(result, stage.evolved_name(seed)).metrics["prob_fitness"] == pytest.approx(best["fitness"], rel=1e-6)


def _files(pipeline: Path, component: str) -> dict[str, bytes]:
    return {p.relative_to(pipeline).as_posix(): p.read_bytes() for p in sorted((pipeline / component).rglob("*")) if p.is_file()}


def test_text_encoders_and_vae_bit_identical_unets_differ(quick_run):
    ctx, result, _ = quick_run
    source_a = ctx.out / "models" / "source_a"
    fixed = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler")
    for path in result.models.values():
        for component in fixed:
            assert _files(ctx.run_dir / path, component) == _files(source_a, component), (path, component)
    unets = [load_file(ctx.run_dir / p / "unet" / "diffusion_pytorch_model.safetensors") for p in result.models.values()]
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    for i in range(len(unets)):
        for j in range(i + 1, len(unets)):
            assert not torch.equal(unets[i][name], unets[j][name])


def test_evolved_unet_is_the_hand_computed_blockwise_task_arithmetic(quick_run):
    from tsugiki.diffusion.blocks import locate

    ctx, _, _ = quick_run
    best = json.loads((ctx.out / "search-s1" / "best.json").read_text())["params"]
    searched = set(stage.QUICK.blocks)
    unet = lambda p: load_file(p / "unet" / "diffusion_pytorch_model.safetensors")  # noqa: E731
    base, a, b = (unet(ctx.out / "models" / n) for n in ("base", "source_a", "source_b"))
    merged = unet(ctx.out / "merged" / "evolved-s1")
    assert set(merged) == set(base)
    for name, tensor in merged.items():
        block = locate(name)[0]
        unit = block if block in searched else "rest"
        wa, wb = best[f"source_a.weight.{unit}"], best[f"source_b.weight.{unit}"]
        expected = base[name] + wa * (a[name] - base[name]) + wb * (b[name] - base[name])
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6)
    average = unet(ctx.out / "merged" / "uniform_average")
    for name in ("conv_in.weight", "mid_block.attentions.0.proj_in.weight"):
        torch.testing.assert_close(average[name], (a[name] + b[name]) / 2, rtol=1e-6, atol=1e-7)


def test_cached_models_are_reused(quick_run):
    ctx, _, _ = quick_run
    unet_file = ctx.out / "models" / "source_a" / "unet" / "diffusion_pytorch_model.safetensors"
    before = unet_file.stat().st_mtime_ns
    start = time.perf_counter()
    stage.build_models(ctx.out, stage.QUICK, ctx.seed, progress=False)
    assert time.perf_counter() - start < 1.0
    assert unet_file.stat().st_mtime_ns == before


def test_unet_training_is_deterministic_and_moves_the_weights(quick_run):
    ctx, _, _ = quick_run
    pipe = stage.load_pipeline(ctx.out / "models" / "base")
    start = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    runs = []
    for _ in range(2):
        pipe.unet.load_state_dict(start)
        losses = data.finetune_unet(pipe, data.items_of(palette="a")[:2], steps=1, seed=5, per_item=1)
        runs.append((losses, {k: v.clone() for k, v in pipe.unet.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in start)
    assert not torch.equal(runs[0][1]["conv_out.weight"], start["conv_out.weight"])


def test_prompt_splits_are_disjoint_and_cover_the_world():
    fit, held = data.items_of(split="fitness"), data.items_of(split="heldout")
    assert not {i.prompt for i in fit} & {i.prompt for i in held}
    assert len(fit) + len(held) == len(data.world_items()) == 18
    for split in (fit, held):
        assert {i.colour for i in split} == {i.colour for i in data.world_items()}
        assert {i.shape for i in split} == {i.shape for i in data.world_items()}
    assert set(data.PALETTES["a"]).isdisjoint(data.PALETTES["b"])
    assert len(data.items_of(palette="a")) == len(data.items_of(palette="b")) == 9


def test_drawings_are_deterministic_by_seed():
    items = data.world_items()[:3]
    one, two, other = (data.draw_many(items, 2, s) for s in (7, 7, 8))
    assert [im.tobytes() for im in one] == [im.tobytes() for im in two]
    assert [im.tobytes() for im in one] != [im.tobytes() for im in other]
    assert one[0].size == (data.IMAGE_SIZE, data.IMAGE_SIZE)
    pixel = np.asarray(one[0])[data.IMAGE_SIZE // 2, data.IMAGE_SIZE // 2]
    assert tuple(pixel) == items[0].rgb  # the shape covers the centre, in its colour


def test_search_fitness_refuses_other_prompts(quick_run):
    from tsugiki.errors import EvolutionError
    from tsugiki.evolution.data import Pair

    ctx, _, _ = quick_run
    with pytest.raises(EvolutionError, match="fitness prompts"):
        stage.search_fitness(None, [Pair("a red circle", "red circle")], base="", judge="", images_per_prompt=1, seed=0)
