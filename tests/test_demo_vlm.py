"""The demo's VLM stage: drawn scenes, the English-aligned tiny LLaVA, grafts and their Japanese scores.

Stand-in LMs (random Llama siblings) know no Japanese, so scores are ~0 here; these tests check the
mechanics. What the default budget reaches with trained LMs is measured separately (see the stage's
docstring / the report)."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import weights
from tsugiki.benchmarks.rouge import rouge_ja
from tsugiki.demo import scenes
from tsugiki.demo import vlm_stage as V
from tsugiki.demo.stage import Row, StageContext
from tsugiki.demo.world import COLOURS, SHAPES
from tsugiki.errors import CheckpointError
from tsugiki.evolution.data import image_digest
from tsugiki.factory.lm import TinyLMSpec, build_siblings, build_tiny_lm


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    return build_siblings(tmp_path_factory.mktemp("vlm_stage_lms"), n=2, spec=TinyLMSpec("llama"), kind="perturbed")


@pytest.fixture(scope="module")
def run(tmp_path_factory, lms):
    run_dir = tmp_path_factory.mktemp("vlm_stage_run")
    ctx = StageContext(run_dir, run_dir / "vlm", quick=True, progress=False)
    ctx.out.mkdir()
    grafts = {"ja": ("baseline", lms.variants[0]), "evo": ("evolved", lms.variants[1])}
    return ctx, V.run_vlm_stage(ctx, llava_lm=lms.base, grafts=grafts)


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
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == rgb[colour_q.answer.removesuffix("です。")]
        corner_is_shape = img.getpixel((x0, y0)) == img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))
        assert corner_is_shape == (shape_q.answer == "四角です。")


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


# ----------------------------------------------------------------------------- alignment and grafts
def test_training_sequences_label_only_the_answer_and_eos(run):
    ctx, _ = run
    _, processor = V._load(ctx.out / "llava")
    items = scenes.english_items(2, seed=0)
    batch = V._batch_tensors(processor, V.EN_TEMPLATE, items)
    tok = processor.tokenizer
    for ids, labels, mask, item in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], items):
        labelled = labels[labels != -100].tolist()
        assert labelled == tok(item.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt = ids[: int(mask.sum()) - len(labelled)]
        # the prompt generation gives: BOS, "Q: ", the image tokens, "\n", the question, " A: "
        expected = processor(text=[V.EN_TEMPLATE.format(input="<image>\n" + item.prompt)], images=[item.image],
                             return_tensors="pt")
        assert prompt.tolist() == expected["input_ids"][0].tolist()
        n_image = (V.VISION["image_size"] // V.VISION["patch_size"]) ** 2
        assert tok.decode(prompt[:4]) == "<s>Q: " and (prompt == processor.image_token_id).sum() == n_image
        assert tok.decode(prompt[4 + n_image:]) == f"\n{item.prompt} A: " 


def test_llava_language_model_is_frozen_and_vision_side_trained(run, lms, tmp_path):
    ctx, _ = run
    llava = weights(ctx.out / "llava")
    lm = weights(lms.base)
    for name, t in lm.items():
        assert llava[f"language_model.{name}"].equal(t), name
    from tsugiki.factory.vlm import TinyVLMSpec, build_tiny_vlm

    untrained = weights(build_tiny_vlm(tmp_path / "u", TinyVLMSpec(kind="llava", text=V.lm_spec(lms.base), seed=0, **V.VISION),
                                       language_model=lms.base))
    vision = [n for n in llava if not n.startswith("language_model.")]
    assert set(untrained) == set(llava) and len(vision) > 10
    # LLaVA reads the second-to-last vision layer: the last layer and post_layernorm get no gradient
    last = f"vision_tower.encoder.layers.{V.VISION['vision_layers'] - 1}."
    unused = {n for n in vision if n.startswith(last) or "post_layernorm" in n}
    assert {n for n in vision if not llava[n].equal(untrained[n])} == set(vision) - unused


def test_grafts_keep_the_vision_side_bit_for_bit_and_carry_the_grafted_lm(run, lms):
    ctx, result = run
    llava = weights(ctx.out / "llava")
    for name, lm_dir in (("ja", lms.variants[0]), ("evo", lms.variants[1])):
        graft = weights(ctx.run_dir / result.models[name])
        assert set(graft) == set(llava)
        for n, t in llava.items():
            if not n.startswith("language_model."):
                assert graft[n].dtype == t.dtype and graft[n].numpy().tobytes() == t.numpy().tobytes(), n
        lm = weights(lm_dir)
        assert len(lm) == sum(n.startswith("language_model.") for n in graft)
        for n, t in lm.items():
            assert graft[f"language_model.{n}"].equal(t), n


def test_rows_roles_and_files(run):
    ctx, result = run
    assert result.stage == "vlm" and result.headline == "rougeL_ja" and not result.lower_is_better
    assert [(r.model, r.role) for r in result.rows] == [("llava", "source"), ("ja", "baseline"), ("evo", "evolved")]
    assert set(result.models) == {"llava", "ja", "evo"}
    for rel in result.models.values():
        assert (ctx.run_dir / rel / "config.json").is_file()
    doc = json.loads(json.dumps(result.to_json()))
    assert [r["model"] for r in doc["rows"]] == ["llava", "ja", "evo"]
    assert all(set(r["metrics"]) == {"rougeL_ja", "rougeL", "word_acc"} for r in doc["rows"])
    assert result.verdict and len(result.tables) == 2 and result.seconds > 0
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
        hits = [{w for w in words[x["id"].rsplit("/", 1)[1]] if w in x["answer"]} == {x["reference"][:-3]} for x in lines]
        assert row.metrics["word_acc"] == pytest.approx(100 * sum(hits) / len(hits))


def test_cached_llava_is_reused_and_retrained_only_when_its_inputs_change(run, lms):
    ctx, _ = run
    meta = ctx.out / "llava" / V.META_FILE
    before = meta.read_text(), (ctx.out / "llava" / "model.safetensors").stat().st_mtime_ns
    record = V.build_llava(lms.base, ctx.out / "llava", V.QUICK, seed=0, progress=False)
    assert (meta.read_text(), (ctx.out / "llava" / "model.safetensors").stat().st_mtime_ns) == before
    assert record == json.loads(before[0])
    assert V._fingerprint(lms.base, V.QUICK, 1) != record["fingerprint"]
    assert V._fingerprint(lms.variants[0], V.QUICK, 0) != record["fingerprint"]


def test_training_is_deterministic(lms, tmp_path):
    from tsugiki.factory.vlm import TinyVLMSpec, build_tiny_vlm

    spec = TinyVLMSpec(kind="llava", text=V.lm_spec(lms.base), seed=0, **V.VISION)
    budget = V.VlmBudget(train_scenes=4, steps=3, batch_size=4, lr=3e-3, en_eval_scenes=1, test_scenes=1, warmup=1)
    items = scenes.english_items(4, seed=0)
    params = []
    for _ in range(2):
        model, processor = V._load(build_tiny_vlm(tmp_path / "d", spec, language_model=lms.base))
        losses = V.train_vision(model, processor, items, budget, seed=5, progress=False)
        params.append((losses, {n: p.clone() for n, p in model.named_parameters()}))
    assert params[0][0] == params[1][0]
    assert all(params[0][1][n].equal(t) for n, t in params[1][1].items())


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


def test_non_llama_language_model_is_refused(tmp_path):
    path = build_tiny_lm(tmp_path / "m", TinyLMSpec("mistral"))
    with pytest.raises(CheckpointError, match="needs a Llama LM, not 'mistral'"):
        V.lm_spec(path)


def test_bad_graft_names_and_roles_are_refused_up_front(tmp_path, lms):
    ctx = StageContext(tmp_path, tmp_path / "vlm", quick=True, progress=False)
    with pytest.raises(ValueError, match="taken by the LLaVA"):
        V.run_vlm_stage(ctx, llava_lm=lms.base, grafts={"llava": ("baseline", lms.variants[0])})
    with pytest.raises(ValueError, match="role must be 'baseline' or 'evolved', not 'source'"):
        V.run_vlm_stage(ctx, llava_lm=lms.base, grafts={"ja": ("source", lms.variants[0])})
    assert not ctx.out.exists()  # refused before anything was built
