"""Japanese VQA generation and the in-memory graft, on tiny real LLaVA / LLaVA-NeXT models."""

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from tsugiki.benchmarks.items import VQAItem
from tsugiki.benchmarks.predictors import Predictor
from tsugiki.errors import CheckpointError, MergeError, UnknownNameError
from tsugiki.factory.vlm import build_graft_set
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.vlm.generate import GenerationSettings, VQAPredictor, build_prompt
from tsugiki.vlm.inmemory import VlmLanguageModelMerger
from tsugiki.vlm.merge import merge_vlm_to_disk
from tsugiki.vlm.predictor import VLMPredictor

SHORT = GenerationSettings(max_new_tokens=6)  # the seed's beams and penalty, fewer tokens
CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_graft_set(tmp_path_factory.mktemp("gen"), n=2)


def drawn_images():
    """Pillow drawings of different sizes (LLaVA-NeXT turns them into different token counts)."""
    out = []
    for i, (w, h) in enumerate([(48, 40), (70, 30), (30, 90)]):
        im = Image.new("RGB", (w, h), (250 - 60 * i, 40 * i, 120))
        ImageDraw.Draw(im).ellipse((2, 2, w // 2, h // 2), fill=(0, 200, 0))
        out.append(im)
    return out


QUESTIONS = ["この画像には何が写っていますか？", "色は何ですか？", "丸はいくつ？"]


def test_ja_shisa_vqa_prompt_matches_the_seed_template():
    assert build_prompt("何色？") == (
        "[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
        "与えられた画像を下に、質問に答えてください。\n<</SYS>>\n\n<image>\n何色？ [/INST]")
    assert build_prompt("q", "USER: {input}") == "USER: <image>\nq"
    assert GenerationSettings() == GenerationSettings(num_beams=5, repetition_penalty=1.5, max_new_tokens=512, do_sample=False)
    with pytest.raises(UnknownNameError, match="did you mean 'ja-shisa-vqa'"):
        build_prompt("q", "ja-shisa-vq")


def test_loading_a_non_vlm_for_vqa_is_one_clear_error(world):
    with pytest.raises(CheckpointError, match="cannot load as an image-text model"):
        VQAPredictor.from_pretrained(world.llms.base)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_batched_beam_search_equals_unbatched(world, kind):
    path = getattr(world, kind)
    predictor = VQAPredictor(CLASSES[kind].from_pretrained(path), AutoProcessor.from_pretrained(path),
                             settings=SHORT, batch_size=3, progress=False)
    batch = predictor.processor(text=[predictor.prompt(q) for q in QUESTIONS], images=drawn_images(), padding=True)
    masks = torch.tensor(batch["attention_mask"])
    assert (masks[:, 0] == 0).any() and (masks[:, -1] == 1).all()  # rows really are left-padded
    batched = predictor.predict(drawn_images(), QUESTIONS)
    predictor.batch_size = 1
    assert batched == predictor.predict(drawn_images(), QUESTIONS)
    assert all(isinstance(a, str) for a in batched) and any(batched)
    item = VQAItem(id="0", question=QUESTIONS[0], answer="", image=drawn_images()[0])
    assert VLMPredictor(predictor, kind).predict([item]) == batched[:1]


def recipe(vlm, llm, w):
    return load_recipe(f"""
merge_method: linear
base_model: {vlm}
models:
  - {{model: {vlm}, parameters: {{weight: {w}}}}}
  - {{model: {llm}, parameters: {{weight: {1 - w}}}}}
""")


def test_grafted_model_answers_a_question_about_a_drawn_image(world, tmp_path):
    out = tmp_path / "grafted"
    merge_vlm_to_disk(recipe(world.llava_next, world.llms.variants[1], 0.7), out, MergeOptions(progress=False))
    predictor = VLMPredictor.from_pretrained(out, max_new_tokens=6)  # AutoProcessor + AutoModelForImageTextToText
    assert isinstance(predictor, Predictor) and predictor.settings()["num_beams"] == 5
    (answer,) = predictor.predict([VQAItem(id="0", question=QUESTIONS[0], answer="", image=drawn_images()[0])])
    assert isinstance(answer, str) and answer


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_in_memory_graft_touches_only_the_language_model(world, tmp_path, kind):
    path, llm = getattr(world, kind), world.llms.variants[1]
    model = CLASSES[kind].from_pretrained(path)
    vision = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()
              if not n.startswith("model.language_model.") and n != "lm_head.weight"}
    merger = VlmLanguageModelMerger(model, {str(path): path, str(llm): llm})
    for i, w in enumerate((0.3, 0.8)):  # successive candidates: each equals its own disk merge
        merger.apply(recipe(path, llm, w))
        merge_vlm_to_disk(recipe(path, llm, w), tmp_path / f"disk{i}", MergeOptions(progress=False))
        disk = load_file(tmp_path / f"disk{i}" / "model.safetensors")
        params = dict(model.named_parameters())
        for name, t in disk.items():
            if name.startswith("language_model.model."):
                assert torch.equal(params["model.language_model." + name[len("language_model.model."):]], t), name
        assert torch.equal(params["lm_head.weight"], disk["language_model.lm_head.weight"])
        for name, (ptr, value) in vision.items():
            assert params[name].data_ptr() == ptr and torch.equal(params[name], value), name


def test_in_memory_vocab_mismatch_is_explicit(world, tmp_path):
    from tsugiki.factory import TinyLMSpec, build_mismatched

    big = build_mismatched(tmp_path / "big", TinyLMSpec("mistral"), "vocab")  # 768 rows vs the VLM's 704
    model = LlavaForConditionalGeneration.from_pretrained(world.llava)
    sources = {str(world.llava): world.llava, str(big): big}
    with pytest.raises(MergeError, match="vocabulary size 768 differs from the loaded model's language model's 704"):
        VlmLanguageModelMerger(model, sources)
    merger = VlmLanguageModelMerger(model, sources, vocab="embed_slice")
    embed_before = model.model.language_model.embed_tokens.weight.detach().clone()
    merger.apply(recipe(world.llava, big, 0.5))
    other = load_file(big / "model.safetensors")["model.embed_tokens.weight"]
    torch.testing.assert_close(model.model.language_model.embed_tokens.weight, 0.5 * embed_before + 0.5 * other[:704])


def test_vlm_cli_verbs_swap_and_ask(world, tmp_path, capsys):
    import argparse

    from tsugiki.commands import vlm as vlm_commands

    parser = argparse.ArgumentParser()
    vlm_commands.register(parser.add_subparsers())
    out = tmp_path / "swapped"
    args = parser.parse_args(["vlm", "swap", str(world.llava), str(world.llms.variants[1]), "-o", str(out), "-q"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("swapped ")
    assert load_file(out / "model.safetensors")["language_model.model.norm.weight"].equal(
        load_file(world.llms.variants[1] / "model.safetensors")["model.norm.weight"])
    image = tmp_path / "circle.png"
    drawn_images()[0].save(image)
    args = parser.parse_args(["vlm", "ask", str(out), str(image), "--question", "何？", "--max-new-tokens", "4", "--quiet"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith(f"{image}\t")
