"""The demo's VLM stage: drawn scenes, the LLaVA around a Gemma 3 LM, grafts and their Japanese scores.

Tiny random Gemma 3 LMs (real tokenizer, hidden 64) stand in for the real base here, so scores are ~0;
these tests check the mechanics and the metric. What the shipped vision weights reach with the real
base is measured by the demo run (see the report)."""

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import weights
from PIL import Image

from tsugiki.benchmarks.rouge import rouge_ja
from tsugiki.demo.stage import Row, StageContext
from tsugiki.demo.vlm import models as M
from tsugiki.demo.vlm import scenes
from tsugiki.demo.vlm import stage as V
from tsugiki.demo.world import COLOURS, JA_ALSO, SHAPES
from tsugiki.evolution.data import image_digest

TINY_ALIGN = replace(M.ALIGN, train_scenes=4, steps=2, batch_size=4, warmup=1, threads=1)


@pytest.fixture(scope="module")
def vision(tmp_path_factory, tiny_gemma):
    """Vision weights aligned (two steps) to the tiny base: the shipped ones project to 640 dims."""
    out = tmp_path_factory.mktemp("vision") / "vision"
    M.train_vision(tiny_gemma.base, out, TINY_ALIGN, progress=False)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_gemma, vision):
    run_dir = tmp_path_factory.mktemp("vlm_stage_run")
    ctx = StageContext(run_dir, run_dir / "vlm", quick=True, progress=False)
    ctx.out.mkdir()
    grafts = {"ja": ("baseline", tiny_gemma.variants[0]), "evo": ("evolved", tiny_gemma.variants[1])}
    return ctx, V.run_vlm_stage(ctx, llava_lm=tiny_gemma.base, grafts=grafts, vision=vision)


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


def test_language_model_is_frozen_and_vision_side_trained(run, tiny_gemma, vision):
    ctx, _ = run
    llava = weights(ctx.out / "llava")
    lm = weights(tiny_gemma.base)
    for name, t in lm.items():
        assert llava[f"language_model.{name}"].equal(t), name
    untrained, _ = M.assemble(tiny_gemma.base, None, M.SPEC, seed=TINY_ALIGN.seed)
    before = M.vision_state(untrained)
    trained = weights(vision)
    assert set(trained) == set(before) and len(trained) > 10
    # LLaVA reads the second-to-last vision layer: the last layer and post_layernorm get no gradient
    last = f"model.vision_tower.encoder.layers.{M.SPEC.layers - 1}."
    unused = {n for n in trained if n.startswith(last) or "post_layernorm" in n}
    assert {n for n in trained if not trained[n].equal(before[n])} == set(trained) - unused


def test_grafts_keep_the_vision_side_bit_for_bit_and_carry_the_grafted_lm(run, tiny_gemma, tmp_path):
    """The stage scores each graft and deletes it; written again as the stage writes it, a graft keeps the
    LLaVA's vision side bit for bit, carries the grafted LM, and answers as the stage recorded."""
    ctx, result = run
    assert not (ctx.out / "grafts").exists() or not any((ctx.out / "grafts").iterdir())
    llava = weights(ctx.out / "llava")
    items = V.scenes.ja_items("test", V.QUICK.test_scenes, seed=ctx.seed)
    for name, lm_dir in (("ja", tiny_gemma.variants[0]), ("evo", tiny_gemma.variants[1])):
        path = V.graft(ctx.out / "llava", lm_dir, tmp_path / name)
        graft = weights(path)
        assert set(graft) == set(llava)
        for n, t in llava.items():
            if "language_model" not in n:
                assert graft[n].dtype == t.dtype and graft[n].numpy().tobytes() == t.numpy().tobytes(), n
        lm = weights(lm_dir)
        assert len(lm) == sum("language_model" in n for n in graft)
        for n, t in lm.items():
            assert graft[f"language_model.{n}"].equal(t), n
        model, processor = V._load(path)
        recorded = [json.loads(x)["answer"] for x in (ctx.out / "answers" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert V._predict(model, processor, V.JA_TEMPLATE, items, False) == recorded


def test_rows_roles_and_files(run):
    ctx, result = run
    assert result.stage == "vlm" and result.headline == "rougeL_ja" and not result.lower_is_better
    assert [(r.model, r.role) for r in result.rows] == [("llava", "source"), ("ja", "baseline"), ("evo", "evolved")]
    assert set(result.models) == {"llava"}  # the grafts were scored and deleted
    for rel in result.models.values():
        assert (ctx.run_dir / rel / "config.json").is_file()
    doc = json.loads(json.dumps(result.to_json()))
    assert [r["model"] for r in doc["rows"]] == ["llava", "ja", "evo"]
    assert all(set(r["metrics"]) == {"rougeL_ja", "rougeL", "word_acc"} for r in doc["rows"])
    assert result.verdict and len(result.tables) == 1 and result.seconds > 0  # the English check; the scores are the ranked table
    images = {s.image for s in result.samples}
    assert images and all((ctx.run_dir / i).is_file() for i in images)
    assert all(Image.open(ctx.run_dir / i).size == (scenes.DRAW_SIZE, scenes.DRAW_SIZE) for i in images)


def test_row_numbers_are_rouge_ja_of_the_saved_answers(run):
    ctx, result = run
    for row in result.rows:
        lines = [json.loads(x) for x in (ctx.out / "answers" / f"{row.model}.jsonl").read_text().splitlines()]
        assert len(lines) == 2 * V.QUICK.test_scenes
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


def test_alignment_is_deterministic(tiny_gemma, tmp_path):
    digests = []
    for i in range(2):
        record = M.train_vision(tiny_gemma.base, tmp_path / f"v{i}", TINY_ALIGN, progress=False)
        digests.append(((tmp_path / f"v{i}" / "model.safetensors").read_bytes(), record["losses"]))
    assert digests[0] == digests[1]


def test_shipped_vision_weights_fit_the_real_base():
    spec = json.loads((M.SHIPPED_VISION / "training.json").read_text())["spec"]
    state = weights(M.SHIPPED_VISION)
    assert spec == M.VisionSpec().__dict__
    proj = [t for n, t in state.items() if n.endswith("multi_modal_projector.linear_2.weight")]
    assert proj and proj[0].shape == (640, 640)  # Gemma 3 270M's hidden size


# ----------------------------------------------------------------------------- verdict and errors
def _rows(scores: dict[str, tuple[str, list[float]]]):
    rows = [Row(m, role, {"rougeL_ja": float(np.mean(v))}) for m, (role, v) in scores.items()]
    return rows, {m: [{"rougeL_ja": x} for x in v] for m, (_, v) in scores.items()}


def test_verdict_counts_standard_errors_of_the_paired_difference():
    # differences 100, 0, 100, 100: mean 75, sample sd 50, SE 50 / sqrt(4) = 25 -> 3.0 SE
    rows, per_item = _rows({"llava": ("source", [0, 0, 0, 0]), "ja": ("baseline", [0, 0, 0, 100]),
                            "evo": ("evolved", [100, 0, 100, 100])})
    assert V.paired_difference([100, 0, 100, 100], [0, 0, 0, 0]) == (75.0, 25.0)
    text = V.verdict(rows, per_item)
    assert "evo beat the LLaVA" in text and "+75.0 points = 3.0 SE" in text
    # against the baseline: differences 100, 0, 100, 0: mean 50, sd 57.735, SE 28.87 -> 1.7 SE
    assert "evo did not clearly beat the plain Japanese graft (ja)" in text and "1.7 SE" in text
    rows, per_item = _rows({"llava": ("source", [0, 0]), "ja": ("baseline", [0, 0])})
    assert V.verdict(rows, per_item) == ("ja and the LLaVA have the same score on every question "
                                         "(rougeL_ja 0.0 vs 0.0 on 2 Japanese questions).")


def test_bad_graft_names_and_roles_are_refused_up_front(tmp_path, tiny_gemma):
    ctx = StageContext(tmp_path, tmp_path / "vlm", quick=True, progress=False)
    with pytest.raises(ValueError, match="taken by the LLaVA"):
        V.run_vlm_stage(ctx, llava_lm=tiny_gemma.base, grafts={"llava": ("baseline", tiny_gemma.variants[0])})
    with pytest.raises(ValueError, match="role must be 'baseline' or 'evolved', not 'source'"):
        V.run_vlm_stage(ctx, llava_lm=tiny_gemma.base, grafts={"ja": ("source", tiny_gemma.variants[0])})
    assert not ctx.out.exists()  # refused before anything was built
