"""The demo's VLM stage: drawn scenes, the LLaVA around a Gemma 3 LM, grafts and their Japanese scores.

Tiny random Gemma 3 LMs (real tokenizer, hidden 64) stand in for the real base here, so scores are ~0;
these tests check the mechanics and the metric. What the shipped LLaVA weights reach with the real
base is measured by the demo run (see the report)."""

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import weights
from PIL import Image

from tsugiki.benchmarks.results import slug
from tsugiki.benchmarks.rouge import rouge_ja
from tsugiki.demo.stage import Row, StageContext
from tsugiki.demo.vlm import models as M
from tsugiki.demo.vlm import scenes
from tsugiki.demo.vlm import search as S
from tsugiki.demo.vlm import stage as V
from tsugiki.demo.world import COLOURS, JA_ALSO, SHAPES
from tsugiki.evolution.data import image_digest

TINY_ALIGN = replace(M.ALIGN, train_scenes=4, steps=2, batch_size=4, warmup=1, threads=1, lora_rank=2, lora_alpha=4,
                     lora_lr=1e-2)


@pytest.fixture(scope="module")
def vision(tmp_path_factory, tiny_gemma):
    """LLaVA weights aligned (two steps) to the tiny base, with a LoRA on its LM: the shipped ones project to
    640 dims."""
    out = tmp_path_factory.mktemp("llava_weights") / "llava"
    M.train_llava(tiny_gemma.base, out, TINY_ALIGN, progress=False)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_gemma, vision):
    run_dir = tmp_path_factory.mktemp("vlm_stage_run")
    ctx = StageContext(run_dir, run_dir / "vlm", quick=True, progress=False)
    ctx.out.mkdir()
    return ctx, V.run_vlm_stage(ctx, base=tiny_gemma.base, ja=tiny_gemma.variants[0], weights=vision)


# ----------------------------------------------------------------------------- scenes
def test_scene_answers_match_the_drawn_pixels():
    """Independent truth: the pixel at the shape's centre has the colour the answer names, and the
    box's top-left corner has the shape's colour exactly for squares."""
    rgb = {ja: c for _, ja, c in COLOURS}
    items = scenes.ja_items("test")
    for colour_q, shape_q in zip(items[::2], items[1::2]):
        assert colour_q.image is shape_q.image and colour_q.prompt == "この図形は何色ですか？"
        assert shape_q.prompt == "この図形の形は何ですか？"
        scene_name = colour_q.id.split("/")[1]
        x0, y0, x1, y1 = map(int, scene_name.rsplit("-", 1)[1].split("."))
        img = colour_q.image
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == rgb[colour_q.answer]
        corner_is_shape = img.getpixel((x0, y0)) == img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
        assert corner_is_shape == (shape_q.answer == "四角")


def test_japanese_splits_are_disjoint_by_scene_and_picture():
    parts = {s: scenes.ja_items(s) for s in ("fitness", "validation", "test")}
    assert sum(map(len, parts.values())) == 2 * scenes.JA_UNIVERSE_SIZE
    digests = {s: {image_digest(p.image) for p in items} for s, items in parts.items()}
    assert not digests["test"] & (digests["fitness"] | digests["validation"])
    assert not digests["fitness"] & digests["validation"]
    assert len(scenes.ja_items("test", 5, seed=1)) == 10
    assert scenes.ja_items("test", 5, seed=1) == scenes.ja_items("test", 5, seed=1)


def test_english_items_never_show_a_japanese_picture():
    ja = {image_digest(p.image) for p in scenes.ja_universe()}
    en = scenes.english_items(200, seed=3)
    assert len(en) == 400 and not {image_digest(p.image) for p in en} & ja
    assert {p.answer for p in en[::2]} <= {c[0] for c in COLOURS}
    assert {p.answer for p in en[1::2]} <= {s[0] for s in SHAPES}
    assert [p.id for p in en] == [p.id for p in scenes.english_items(200, seed=3)]


# ----------------------------------------------------------------------------- the headline metric
def test_headline_ranks_constant_and_empty_answers_below_correct_ones():
    """rougeL_ja against content-only references: a correct answer scores 100, a constant answer (the most
    frequent word, or a formulaic です。) and an empty one far less; content accuracy agrees."""
    items = scenes.ja_items("test")
    correct = [p.answer for p in items]
    metrics = {name: V.score(answers, items)[0] for name, answers in {
        "correct": correct, "correct, in a sentence": [f"{a}です。" for a in correct],
        "constant 赤": ["赤"] * len(items), "constant です。": ["です。"] * len(items), "empty": [""] * len(items),
        "wrong word": [next(w for w in scenes.vocabulary("ja", scenes.question_kind(p)) if w != p.answer) for p in items],
    }.items()}
    assert metrics["correct"]["rougeL_ja"] == 100.0 and metrics["correct"]["word_acc"] == 100.0
    for bad in ("constant 赤", "constant です。", "empty", "wrong word"):
        assert metrics[bad]["rougeL_ja"] < 20.0, bad
        assert metrics[bad]["rougeL_ja"] < metrics["correct, in a sentence"]["rougeL_ja"] < metrics["correct"]["rougeL_ja"]
    assert metrics["empty"]["rougeL_ja"] == 0.0 and metrics["constant です。"]["word_acc"] == 0.0
    assert metrics["wrong word"]["word_acc"] == 0.0 and metrics["correct, in a sentence"]["word_acc"] == 100.0


def test_content_accuracy_accepts_other_names_of_the_same_colour_or_shape():
    """金 names the colour 金色 and 丸 the shape 円 (hand-checked), but an answer naming two colours or the
    wrong one does not count; every form names exactly one word of its kind."""
    colours, shapes = scenes.vocabulary("ja", "colour"), scenes.vocabulary("ja", "shape")
    assert scenes.named_words("金", colours) == {"金色"} and scenes.named_words("茶です", colours) == {"茶色"}
    assert scenes.named_words("丸い", shapes) == {"円"} and scenes.named_words("正方形", shapes) == {"四角"}
    assert scenes.named_words("三角形", shapes) == {"三角"} and scenes.named_words("白色", colours) == {"白"}
    assert scenes.named_words("赤と金", colours) == {"赤", "金色"} and scenes.named_words("gold", colours) == set()
    for words in (colours, shapes):
        for w in words:
            for form in (w, *JA_ALSO.get(w, ())):
                assert scenes.named_words(form, words) == {w}, form
    items = scenes.ja_items("test", 2)  # colour, shape, colour, shape
    answers = [items[0].answer, "猫", "赤と青", items[3].answer]
    assert [scenes.question_kind(p) for p in items] == ["colour", "shape"] * 2
    assert V.word_accuracy(answers, items) == 50.0
    assert V.word_accuracy(answers, items, "colour") == 50.0 and V.word_accuracy(answers, items, "shape") == 50.0
    assert V.word_accuracy(answers[:1] + ["円"], items[:2], "shape") == (100.0 if items[1].answer == "円" else 0.0)


# ----------------------------------------------------------------------------- alignment and grafts
def test_training_sequences_label_only_the_answer_and_eos(tiny_gemma, vision):
    _, processor = M.assemble(tiny_gemma.base, vision, M.SPEC)
    items = scenes.english_items(2, seed=0)
    batch = M.batch_tensors(processor, M.EN_TEMPLATE, items)
    tok = processor.tokenizer
    n_image = (M.SPEC.image_size // M.SPEC.patch_size) ** 2
    for ids, labels, mask, item in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], items):
        labelled = labels[labels != -100].tolist()
        assert labelled == tok(" " + item.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt = ids[: int(mask.sum()) - len(labelled)]
        expected = processor(text=[M.EN_TEMPLATE.format(input=f"{M.IMAGE_TOKEN}\n" + item.prompt)], images=[item.image],
                             return_tensors="pt")
        assert prompt.tolist() == expected["input_ids"][0].tolist()
        assert (prompt == processor.image_token_id).sum() == n_image and processor.image_token_id == 262143
        text = tok.decode(prompt[(prompt != processor.image_token_id)])
        assert text.replace(" ", "") == f"<bos>Question:\n{item.prompt}\nAnswer:".replace(" ", "")


def _vision_changes(trained: dict, base_dir, seed: int) -> set[str]:
    untrained, _ = M.assemble(base_dir, None, M.SPEC, seed=seed)
    before = M.vision_state(untrained)
    assert set(trained) == set(before) and len(trained) > 10
    # LLaVA reads the second-to-last vision layer: the last layer and post_layernorm get no gradient
    last = f"model.vision_tower.encoder.layers.{M.SPEC.layers - 1}."
    unused = {n for n in trained if n.startswith(last) or "post_layernorm" in n}
    assert {n for n in trained if not trained[n].equal(before[n])} == set(trained) - unused
    return set(trained) - unused


def test_alignment_trains_the_vision_side_and_a_lora_the_llava_lm_carries(run, tiny_gemma, vision):
    """The vision side trains; the LoRA (zero-initialised B) learns through the LLaVA's forward pass and saves
    as an ordinary peft adapter of the base; the built LLaVA's LM is base + scale x B A, by hand."""
    import torch
    from safetensors.torch import load_file

    ctx, _ = run
    _vision_changes(weights(vision), tiny_gemma.base, TINY_ALIGN.seed)
    config = json.loads((vision / M.ADAPTER / "adapter_config.json").read_text())
    assert config["r"] == TINY_ALIGN.lora_rank and config["lora_alpha"] == TINY_ALIGN.lora_alpha
    assert set(config["target_modules"]) == set(TINY_ALIGN.lora_targets)
    lora = load_file(vision / M.ADAPTER / "adapter_model.safetensors")
    b_names = [n for n in lora if "lora_B" in n]
    assert b_names and all(lora[n].dtype == torch.bfloat16 for n in lora)
    assert all(lora[n].abs().sum() > 0 for n in b_names)  # trained away from zero
    llava, base = weights(ctx.out / "llava"), weights(tiny_gemma.base)
    scale = TINY_ALIGN.lora_alpha / TINY_ALIGN.lora_rank
    changed = 0
    for name, w in base.items():
        a_name = next((n for n in lora if "lora_A" in n and n.split("base_model.model.")[-1].replace(".lora_A.weight", ".weight") == name), None)
        got = llava[f"language_model.{name}"]
        if a_name is None:
            assert got.equal(w), name
        else:
            delta = lora[a_name.replace("lora_A", "lora_B")].float() @ lora[a_name].float()
            assert torch.allclose(got, w + scale * delta, atol=1e-6), name
            changed += 1
    assert changed == len(b_names)


def test_without_a_lora_the_language_model_stays_frozen(tiny_gemma, tmp_path):
    record = M.train_llava(tiny_gemma.base, tmp_path / "w", replace(TINY_ALIGN, lora_rank=0), progress=False)
    assert not (tmp_path / "w" / M.ADAPTER).exists() and record["recipe"]["lora_rank"] == 0
    _vision_changes(weights(tmp_path / "w"), tiny_gemma.base, TINY_ALIGN.seed)
    llava = weights(M.build_llava(tiny_gemma.base, tmp_path / "llava", tmp_path / "w"))
    for name, t in weights(tiny_gemma.base).items():
        assert llava[f"language_model.{name}"].equal(t), name


def test_ja_graft_row_answers_as_the_graft_tsugiki_vlm_swap_writes(run, tiny_gemma, tmp_path):
    """The stage merges the JA graft in place into its loaded LLaVA; `tsugiki vlm swap LLAVA JA -o DIR` writes a
    graft that keeps the LLaVA's vision side bit for bit, carries the JA LM, and answers as the stage recorded."""
    from tsugiki.cli import main

    ctx, result = run
    llava = weights(ctx.out / "llava")
    items = V.scenes.ja_items("test", S.QUICK.test_scenes, seed=ctx.seed)
    path = tmp_path / "ja"
    assert main(["vlm", "swap", str(ctx.out / "llava"), str(tiny_gemma.variants[0]), "-o", str(path)]) == 0
    graft = weights(path)
    assert set(graft) == set(llava)
    for n, t in llava.items():
        if "language_model" not in n:
            assert graft[n].dtype == t.dtype and graft[n].numpy().tobytes() == t.numpy().tobytes(), n
    lm = weights(tiny_gemma.variants[0])
    assert len(lm) == sum("language_model" in n for n in graft)
    for n, t in lm.items():
        assert graft[f"language_model.{n}"].equal(t), n
    assert _recorded(ctx, V.JA_GRAFT) == _answers(path, items)


def _recorded(ctx, name: str) -> list[str]:
    lines = (ctx.out / "answers" / f"{slug(name)}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["answer"] for x in lines]


def _answers(path, items) -> list[str]:
    model, processor = V._load(path)
    return V._predict(model, processor, V.JA_TEMPLATE, items, False)


def test_merged_rows_answer_as_their_kept_recipes_merged_by_the_cli(run, tmp_path):
    """The task-arithmetic baseline and the evolved model, merged in place into the stage's loaded LLaVA, are
    kept as recipes; `tsugiki merge RECIPE -o DIR` writes LLaVA dirs that keep the vision side bit for bit and
    answer exactly as the stage recorded."""
    from tsugiki.cli import main

    ctx, result = run
    llava = weights(ctx.out / "llava")
    items = V.scenes.ja_items("test", S.QUICK.test_scenes, seed=ctx.seed)
    merged = [name for name in result.recipes]
    assert merged == [*S.BASELINES, "evolved PS (seed 0)"]
    for name in merged:
        out = tmp_path / slug(name)
        assert main(["merge", str(ctx.run_dir / result.recipes[name]), "-o", str(out)]) == 0
        state = weights(out)
        assert set(state) == set(llava)
        assert all(state[n].equal(t) for n, t in llava.items() if "language_model" not in n)
        assert _recorded(ctx, name) == _answers(out, items), name


def test_rows_roles_and_files(run):
    ctx, result = run
    assert result.stage == "vlm" and result.headline == "rougeL_ja" and not result.lower_is_better
    names = ["llava", V.JA_GRAFT, *S.BASELINES, "evolved PS (seed 0)"]
    assert [(r.model, r.role) for r in result.rows] == list(zip(names, ["source", "baseline", "baseline", "evolved"]))
    assert set(result.models) == {"llava"}  # the others were merged in place to be scored; their recipes stay
    for rel in result.models.values():
        assert (ctx.run_dir / rel / "config.json").is_file()
    assert all((ctx.run_dir / rel).is_file() for rel in result.recipes.values())
    assert (ctx.out / "runs" / "ps-s0" / "best.yaml").is_file() and not (ctx.out / "runs" / "ps-s0" / "model").exists()
    doc = json.loads(json.dumps(result.to_json()))
    assert [r["model"] for r in doc["rows"]] == names
    assert all(set(r["metrics"]) == {"rougeL_ja", "rougeL", "word_acc"} for r in doc["rows"])
    assert [s.seed for s in result.seeds] == [0] and result.seeds[0].model == "evolved PS (seed 0)"
    assert result.verdict and len(result.tables) == 2 and result.seconds > 0  # English check, content accuracy
    images = {s.image for s in result.samples}
    assert images and all((ctx.run_dir / i).is_file() for i in images)
    assert all(Image.open(ctx.run_dir / i).size == (scenes.DRAW_SIZE, scenes.DRAW_SIZE) for i in images)
    # the search's data: the fitness scenes' questions with their pictures, none of them a test picture
    fitness = [json.loads(x) for x in (ctx.out / "data" / "fitness.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(fitness) == 2 * S.QUICK.fitness_scenes
    test = {image_digest(p.image) for p in scenes.ja_items("test")}
    for x in fitness:
        assert (ctx.out / "data" / x["image"]).is_file()
        assert image_digest(Image.open(ctx.out / "data" / x["image"]).convert("RGB")) not in test


def test_row_numbers_are_rouge_ja_of_the_saved_answers(run):
    ctx, result = run
    for row in result.rows:
        lines = [json.loads(x) for x in (ctx.out / "answers" / f"{slug(row.model)}.jsonl").read_text().splitlines()]
        assert len(lines) == 2 * S.QUICK.test_scenes
        again = rouge_ja([x["reference"] for x in lines], [x["answer"] for x in lines])
        for k in ("rougeL_ja", "rougeL"):
            assert row.metrics[k] == again.scores[k].value
            assert row.ci[k] == [again.scores[k].low, again.scores[k].high]
        # word accuracy by hand: exactly the expected word among the world's words of that kind
        words = {"colour": {c[1] for c in COLOURS}, "shape": {s[1] for s in SHAPES}}
        hits = [{w for w in words[x["id"].rsplit("/", 1)[1]] if w in x["answer"]} == {x["reference"]} for x in lines]
        assert row.metrics["word_acc"] == pytest.approx(100 * sum(hits) / len(hits))


def test_built_llava_is_reused(run, tiny_gemma, vision):
    ctx, _ = run
    stamp = {p.name: p.stat().st_mtime_ns for p in (ctx.out / "llava").glob("*.safetensors")}
    assert (ctx.out / "llava" / "model.safetensors.index.json").exists()  # the shared embedding is stored once
    M.build_llava(tiny_gemma.base, ctx.out / "llava", vision)
    assert {p.name: p.stat().st_mtime_ns for p in (ctx.out / "llava").glob("*.safetensors")} == stamp


def test_alignment_is_deterministic(tiny_gemma, tmp_path, vision):
    record = M.train_llava(tiny_gemma.base, tmp_path / "again", TINY_ALIGN, progress=False)
    assert record["losses"] == json.loads((vision / "training.json").read_text())["losses"]
    for name in ("model.safetensors", f"{M.ADAPTER}/adapter_model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (vision / name).read_bytes(), name


def test_shipped_llava_weights_fit_the_real_base():
    record = json.loads((M.SHIPPED_LLAVA / "training.json").read_text())
    assert record["spec"] == M.VisionSpec().__dict__
    assert record["recipe"] == json.loads(json.dumps(M.AlignRecipe().__dict__))  # what --rebuild-models trains
    state = weights(M.SHIPPED_LLAVA)
    proj = [t for n, t in state.items() if n.endswith("multi_modal_projector.linear_2.weight")]
    assert proj and proj[0].shape == (640, 640)  # Gemma 3 270M's hidden size
    config = json.loads((M.SHIPPED_LLAVA / M.ADAPTER / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "google/gemma-3-270m" and config["r"] == M.ALIGN.lora_rank
    lora = weights(M.SHIPPED_LLAVA / M.ADAPTER)
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in lora}
    assert layers == set(range(18)) and len(lora) == 18 * 2 * len(M.ALIGN.lora_targets)


# ----------------------------------------------------------------------------- verdict and errors
def _rows(scores: dict[str, tuple[str, list[float]]]):
    rows = [Row(m, role, {"rougeL_ja": float(np.mean(v))}) for m, (role, v) in scores.items()]
    return rows, {m: [{"rougeL_ja": x} for x in v] for m, (_, v) in scores.items()}


def test_verdict_counts_standard_errors_of_the_paired_difference():
    # differences 100, 0, 100, 100: mean 75, sample sd 50, SE 50 / sqrt(4) = 25 -> 3.0 SE
    ja = V.JA_GRAFT
    rows, per_item = _rows({"llava": ("source", [0, 0, 0, 0]), ja: ("baseline", [0, 0, 0, 100]),
                            "evo": ("evolved", [100, 0, 100, 100])})
    assert V.paired_difference([100, 0, 100, 100], [0, 0, 0, 0]) == (75.0, 25.0)
    text = V.verdict(rows, per_item)
    assert "evo beat the LLaVA" in text and "+75.0 points = 3.0 SE" in text
    # against the JA graft: differences 100, 0, 100, 0: mean 50, sd 57.735, SE 28.87 -> 1.7 SE
    assert f"evo did not clearly beat the plain Japanese graft ({ja})" in text and "1.7 SE" in text
    rows, per_item = _rows({"llava": ("source", [0, 0]), ja: ("baseline", [0, 0])})
    assert V.verdict(rows, per_item) == (f"{ja} and the LLaVA have the same score on every question "
                                         "(rougeL_ja 0.0 vs 0.0 on 2 Japanese questions).")


def test_content_accuracy_against_chance_by_hand():
    """Two colour and two shape questions: one colour right (50 % vs chance 1/6: (0.5 - 1/6) / sqrt(1/6 x 5/6 / 2)
    = 1.26 SE), both shapes right (100 % vs 1/3: (1 - 1/3) / sqrt(1/3 x 2/3 / 2) = 2.0 SE)."""
    items = scenes.ja_items("test", 2)
    wrong = next(w for w in scenes.vocabulary("ja", "colour") if w != items[2].answer)
    got = V.content_vs_chance([items[0].answer, items[1].answer, wrong, items[3].answer], items)
    assert got["colour"]["acc"] == 50.0 and got["shape"]["acc"] == 100.0
    assert got["colour"]["chance"] == pytest.approx(100 / 6) and got["shape"]["chance"] == pytest.approx(100 / 3)
    assert got["colour"]["se_above_chance"] == pytest.approx(1.2649, abs=1e-4)
    assert got["shape"]["se_above_chance"] == pytest.approx(2.0)
