"""Grafting on tiny real LLaVA / LLaVA-NeXT checkpoints: key map, factory, disk merge, bad input.

Truth comes from outside the code under test: tensors are read with the safetensors library, the
language model of a VLM is taken from the transformers module (`model.model.language_model`), and
standalone merges run through the ordinary `merge_to_disk`.
"""

import hashlib
import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from tsugiki.errors import CheckpointError, MergeError, OutputExistsError, RecipeError, TsugikiError
from tsugiki.factory import TinyLMSpec, build_mismatched
from tsugiki.factory.vlm import IMAGE_TOKEN, TinyVLMSpec, build_graft_set, build_tiny_vlm
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk
from tsugiki.vlm.keymap import load_keymap
from tsugiki.vlm.merge import is_vlm_recipe, merge_vlm_to_disk

from helpers import NEW_METHODS, copy_model, new_method_recipe, weights

QUIET = MergeOptions(progress=False)
LM_PREFIX = "language_model."  # transformers' on-disk layout: language_model.model.* / language_model.lm_head.*
CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_graft_set(tmp_path_factory.mktemp("graft"))


def sha(t):
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def standalone_lm(vlm_dir, like, out, cls=LlavaForConditionalGeneration):
    """The VLM's language model as a standalone LLM dir, taken from the transformers module."""
    model = cls.from_pretrained(vlm_dir)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.model.language_model.state_dict().items()}
    tensors["lm_head.weight"] = model.lm_head.weight.detach().contiguous()
    out.mkdir()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(like / name, out / name)
    return out


def module_layout_copy(vlm_dir, out, cls):
    """A copy of `vlm_dir` whose weights use transformers 5's module names (model.language_model.*)."""
    state = {k: v.contiguous() for k, v in cls.from_pretrained(vlm_dir).state_dict().items()}
    shutil.copytree(vlm_dir, out)
    (out / "model.safetensors").unlink()
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def recipe_text(method, base, models, extra=""):
    lines = [f"merge_method: {method}"] + ([f"base_model: {base}"] if base else []) + ["models:"]
    lines += [f"  - {{model: {m}, parameters: {p}}}" for m, p in models]
    return "\n".join(lines) + "\n" + extra


def assert_vision_identical(src, out, lm_prefix=LM_PREFIX):
    a, b = weights(src), weights(out)
    vision = {k for k in a if not k.startswith(lm_prefix) and k != "lm_head.weight"}
    assert vision == {k for k in b if not k.startswith(lm_prefix) and k != "lm_head.weight"}
    assert vision and all(sha(a[k]) == sha(b[k]) and a[k].dtype == b[k].dtype for k in vision)


# --------------------------------------------------------------------------- key map and factory


def test_keymap_round_trips_both_layouts_and_standalone_names(world):
    keymap = load_keymap("llava")
    llm_names = set(weights(world.llms.variants[0]))
    for kind in ("llava", "llava_next"):
        path = getattr(world, kind)
        on_disk = list(weights(path))
        in_memory = list(CLASSES[kind].from_pretrained(path).state_dict())
        for names, layout_name in ((on_disk, "checkpoint"), (in_memory, "module")):
            layout = keymap.detect(names, kind)
            assert layout.name == layout_name
            lm = [n for n in names if layout.to_llm(n) is not None]
            assert {layout.to_llm(n) for n in lm} == llm_names
            assert all(layout.to_vlm(layout.to_llm(n)) == n for n in lm)
            assert all(layout.to_llm(layout.to_vlm(n)) == n for n in llm_names)
            vision = [n for n in names if n not in lm]
            assert vision and all(layout.is_vision(n) for n in vision)
            assert any("image_newline" in n for n in vision) == (kind == "llava_next")
    with pytest.raises(CheckpointError, match="no language-model tensors"):
        keymap.detect(llm_names, "llm")
    with pytest.raises(CheckpointError, match="mixes key layouts"):
        keymap.detect(["language_model.model.norm.weight", "model.language_model.norm.weight"], "mixed")


def test_tiny_vlm_shares_vocabulary_and_shapes_with_llm_siblings(world):
    llm = weights(world.llms.variants[0])
    for kind in ("llava", "llava_next"):
        path = getattr(world, kind)
        config = json.loads((path / "config.json").read_text())
        processor = AutoProcessor.from_pretrained(path)
        tok = processor.tokenizer
        assert len(tok) == config["text_config"]["vocab_size"] == llm["model.embed_tokens.weight"].shape[0]
        assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == config["image_token_index"]
        assert tok(f"a{IMAGE_TOKEN}b", add_special_tokens=False)["input_ids"][1] == config["image_token_index"]
        vlm = weights(path)
        assert all(vlm[LM_PREFIX + k].shape == v.shape for k, v in llm.items())
        assert type(processor.image_processor).__name__.endswith("Pil")
    assert "torchvision" not in sys.modules


def test_tiny_vlm_language_model_is_the_given_llm(tmp_path, world):
    path = build_tiny_vlm(tmp_path / "v", TinyVLMSpec(), language_model=world.llms.base)
    vlm, llm = weights(path), weights(world.llms.base)
    assert all(torch.equal(vlm[LM_PREFIX + k], v) for k, v in llm.items())


# --------------------------------------------------------------------------- grafts


def test_linear_graft_keeps_vision_bits_and_merges_like_standalone(world, tmp_path):
    other = world.llms.variants[1]
    recipe = load_recipe(recipe_text("linear", world.llava, [(world.llava, "{weight: 0.6}"), (other, "{weight: 0.4}")]))
    assert is_vlm_recipe(recipe)
    result = merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert result.out == tmp_path / "out" and "config.json" in result.files
    assert_vision_identical(world.llava, tmp_path / "out")

    lm = standalone_lm(world.llava, world.llms.variants[0], tmp_path / "lm")
    standalone = load_recipe(recipe_text("linear", lm, [(lm, "{weight: 0.6}"), (other, "{weight: 0.4}")]))
    merge_to_disk(standalone, tmp_path / "std", QUIET)
    got, want = weights(tmp_path / "out"), weights(tmp_path / "std")
    assert {k for k in got if k.startswith(LM_PREFIX)} == {LM_PREFIX + k for k in want}
    assert all(torch.equal(got[LM_PREFIX + k], v) for k, v in want.items())
    for name in ("processor_config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (world.llava / name).read_bytes()
    assert json.loads((tmp_path / "out/config.json").read_text()) == json.loads((world.llava / "config.json").read_text())


def test_ties_graft_in_module_layout_with_llm_base_and_per_layer_weights(world, tmp_path):
    vlm = module_layout_copy(world.llava_next, tmp_path / "next_module", LlavaNextForConditionalGeneration)
    base, other = world.llms.base, world.llms.variants[1]
    weight = "{weight: [0.2, 0.8], density: 0.5}"
    recipe = load_recipe(recipe_text("ties", base, [(vlm, weight), (other, "{weight: 0.5, density: 0.7}")]))
    merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert_vision_identical(vlm, tmp_path / "out", lm_prefix="model.language_model.")
    got = weights(tmp_path / "out")
    assert "model.image_newline" in got and not any(k.startswith(LM_PREFIX) for k in got)

    lm = standalone_lm(world.llava_next, world.llms.variants[0], tmp_path / "lm", LlavaNextForConditionalGeneration)
    merge_to_disk(load_recipe(recipe_text("ties", base, [(lm, weight), (other, "{weight: 0.5, density: 0.7}")])),
                  tmp_path / "std", QUIET)
    want = weights(tmp_path / "std")
    renamed = {("lm_head.weight" if k == "lm_head.weight" else "model.language_model." + k[len("model."):]): v
               for k, v in want.items()}
    assert all(torch.equal(got[k], v) for k, v in renamed.items())

    model, info = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.model.image_newline, got["model.image_newline"])


def test_swap_replaces_language_model_outright(world, tmp_path):
    llm = world.llms.variants[1]
    recipe = load_recipe(f"merge_method: passthrough\nmodels:\n  - model: {llm}\n")
    assert not is_vlm_recipe(recipe)  # no VLM among the sources: the vision side is named explicitly
    merge_vlm_to_disk(recipe, tmp_path / "out", QUIET, vision_source=str(world.llava))
    assert_vision_identical(world.llava, tmp_path / "out")
    got = weights(tmp_path / "out")
    assert all(torch.equal(got[LM_PREFIX + k], v) for k, v in weights(llm).items())


def test_out_dtype_applies_to_language_model_only(world, tmp_path):
    recipe = load_recipe(recipe_text("linear", None, [(world.llava, "{weight: 1.0}"), (world.llms.base, "{weight: 1.0}")],
                                     "dtype: bfloat16\n"))
    merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert_vision_identical(world.llava, tmp_path / "out")  # still float32, same bytes
    got = weights(tmp_path / "out")
    assert {v.dtype for k, v in got.items() if k.startswith(LM_PREFIX)} == {torch.bfloat16}
    assert json.loads((tmp_path / "out/config.json").read_text())["dtype"] == "bfloat16"


def test_embed_slice_merges_shared_rows_and_keeps_the_vlms_extra_rows(world, tmp_path):
    big = build_tiny_vlm(tmp_path / "big", TinyVLMSpec(text=TinyLMSpec("mistral", vocab_size=768)))
    llm = world.llms.variants[1]  # 704 tokens
    recipe = load_recipe(recipe_text("linear", big, [(big, "{weight: 0.5}"), (llm, "{weight: 0.5}")]))
    with pytest.raises(MergeError, match=r"vocabulary size 704 differs from .*768.*embed_slice"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()
    merge_vlm_to_disk(recipe, tmp_path / "out", QUIET, vocab="embed_slice")
    a, b, got = weights(big), weights(llm), weights(tmp_path / "out")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        merged = got[LM_PREFIX + name]
        assert merged.shape == (768, 32)
        torch.testing.assert_close(merged[:704], 0.5 * a[LM_PREFIX + name][:704] + 0.5 * b[name], atol=1e-6, rtol=0)
        assert torch.equal(merged[704:], a[LM_PREFIX + name][704:])
    torch.testing.assert_close(got[LM_PREFIX + "model.norm.weight"], 0.5 * a[LM_PREFIX + "model.norm.weight"] + 0.5 * b["model.norm.weight"])


def test_llama_llava_layer_stacking_updates_the_text_config(tiny_siblings, tmp_path):
    vlm = build_tiny_vlm(tmp_path / "vlm", TinyVLMSpec(text=TinyLMSpec("llama")), language_model=tiny_siblings.base)
    other = tiny_siblings.variants[0]
    recipe = load_recipe(f"""
merge_method: passthrough
slices:
  - sources: [{{model: {vlm}, layer_range: [0, 3]}}]
  - sources: [{{model: {other}, layer_range: [1, 4]}}]
""")
    merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert_vision_identical(vlm, tmp_path / "out")
    got, want = weights(tmp_path / "out"), weights(other)
    assert torch.equal(got[LM_PREFIX + "model.layers.5.mlp.up_proj.weight"], want["model.layers.3.mlp.up_proj.weight"])
    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert model.config.text_config.num_hidden_layers == 6 and not info["missing_keys"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("what, message", [
    ("hidden", r"hidden_size 48, 4 layers\) differs from .*\(hidden_size 32, 4 layers\)"),
    ("layers", r"hidden_size 32, 6 layers\) differs from .*\(hidden_size 32, 4 layers\)"),
])
def test_shape_mismatch_names_both_shapes(world, tmp_path, what, message):
    bad = build_mismatched(tmp_path / "bad", TinyLMSpec("mistral"), what)
    recipe = load_recipe(recipe_text("linear", None, [(world.llava, "{weight: 0.5}"), (bad, "{weight: 0.5}")]))
    with pytest.raises(MergeError, match=message):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()


def edited_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_sources_that_are_not_llava(world, tmp_path):
    llm = world.llms.variants[1]
    recipe = load_recipe(f"merge_method: passthrough\nmodels:\n  - model: {llm}\n")
    with pytest.raises(CheckpointError, match=r"not a LLaVA-family model \(model_type 'mistral'"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET, vision_source=str(world.llms.base))
    other = edited_config(world.llava, tmp_path / "qwen_vl", model_type="qwen2_vl")
    recipe = load_recipe(recipe_text("linear", None, [(other, "{weight: 0.5}"), (llm, "{weight: 0.5}")]))
    assert is_vlm_recipe(recipe)  # routed here, so the error is explicit rather than a mangled merge
    with pytest.raises(CheckpointError, match=r"not a LLaVA-family model \(model_type 'qwen2_vl'"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)


def test_missing_or_unknown_vlm_tensors(world, tmp_path):
    gone = "multi_modal_projector.linear_2.weight"
    broken = copy_model(world.llava, tmp_path / "broken", lambda t: {k: v for k, v in t.items() if k != gone})
    recipe = load_recipe(recipe_text("linear", None, [(broken, "{weight: 0.5}"), (world.llms.base, "{weight: 0.5}")]))
    with pytest.raises(CheckpointError, match=f"vision tensor '{gone}' missing"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    extra = copy_model(world.llava, tmp_path / "extra", lambda t: {**t, "adapter.weight": torch.zeros(2)})
    recipe = load_recipe(recipe_text("linear", None, [(extra, "{weight: 0.5}"), (world.llms.base, "{weight: 0.5}")]))
    with pytest.raises(CheckpointError, match="'adapter.weight' is neither language model nor vision"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)


def test_absent_processor_files_say_how_to_supply_them(world, tmp_path):
    vlm = shutil.copytree(world.llava, tmp_path / "noproc")
    (vlm / "processor_config.json").unlink()
    recipe = load_recipe(recipe_text("linear", None, [(vlm, "{weight: 0.5}"), (world.llms.base, "{weight: 0.5}")]))
    with pytest.raises(CheckpointError, match=r"no image processor config .*AutoProcessor") as e:
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert "\n" not in str(e.value)


def test_tokenizer_without_image_token_is_refused(world, tmp_path):
    llm = world.llms.base
    recipe = load_recipe(recipe_text("linear", None, [(world.llava, "{weight: 0.5}"), (llm, "{weight: 0.5}")],
                                     f"tokenizer_source: {llm}\n"))
    with pytest.raises(MergeError, match="tokenizer has no '<image>' token at id 702"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)


def test_union_tokenizer_is_refused_for_a_llava(world, tmp_path):
    recipe = load_recipe(recipe_text("linear", None, [(world.llava, "{weight: 0.5}"), (world.llms.base, "{weight: 0.5}")],
                                     "tokenizer_source: union\n"))
    with pytest.raises(RecipeError, match="a LLaVA merge takes one model's tokenizer"):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()


def test_output_contract_matches_merge_to_disk(world, tmp_path):
    recipe = load_recipe(recipe_text("linear", None, [(world.llava, "{weight: 0.5}"), (world.llms.base, "{weight: 0.5}")]))
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError):
        merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    merge_vlm_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False, force=True, max_shard_bytes=100_000))
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    assert_vision_identical(world.llava, tmp_path / "out")
    assert issubclass(MergeError, TsugikiError) and issubclass(CheckpointError, TsugikiError)
    assert not is_vlm_recipe(load_recipe(recipe_text("linear", None, [(world.llms.base, "{weight: 1.0}")])))


@pytest.mark.parametrize("method", sorted(NEW_METHODS))
def test_graft_with_each_newer_method_merges_like_standalone(method, world, tmp_path):
    """The methods added after the first twelve graft like the others: vision tensors and side files kept
    bit for bit, the language model equal to the same recipe merged on the standalone LM."""
    others = [world.llms.variants[1], world.llms.base]
    merge_vlm_to_disk(load_recipe(new_method_recipe(method, world.llava, others)), tmp_path / "out", QUIET)
    assert_vision_identical(world.llava, tmp_path / "out")
    lm = standalone_lm(world.llava, world.llms.variants[0], tmp_path / "lm")
    merge_to_disk(load_recipe(new_method_recipe(method, lm, others)), tmp_path / "std", QUIET)
    got, want = weights(tmp_path / "out"), weights(tmp_path / "std")
    assert {k for k in got if k.startswith(LM_PREFIX)} == {LM_PREFIX + k for k in want}
    assert all(torch.equal(got[LM_PREFIX + k], v) for k, v in want.items())


def test_graft_of_an_llm_with_a_lora_adapter_merges_like_standalone(world, tmp_path):
    """An LLM source written MODEL+ADAPTER: its LM enters the graft with the adapter merged in, tensor for
    tensor as in the ordinary merge (tests/merging/test_lora_sources.py checks that one against mergekit)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = world.llms.variants[1]
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(other), LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "adapter")
    source = f"{other}+{tmp_path / 'adapter'}"
    recipe = load_recipe(recipe_text("linear", world.llava, [(world.llava, "{weight: 0.6}"), (source, "{weight: 0.4}")]))
    assert is_vlm_recipe(recipe)
    merge_vlm_to_disk(recipe, tmp_path / "out", QUIET)
    assert_vision_identical(world.llava, tmp_path / "out")
    lm = standalone_lm(world.llava, world.llms.variants[0], tmp_path / "lm")
    merge_to_disk(load_recipe(recipe_text("linear", lm, [(lm, "{weight: 0.6}"), (source, "{weight: 0.4}")])), tmp_path / "std", QUIET)
    merge_to_disk(load_recipe(recipe_text("linear", lm, [(lm, "{weight: 0.6}"), (other, "{weight: 0.4}")])), tmp_path / "plain", QUIET)
    got, want, plain = weights(tmp_path / "out"), weights(tmp_path / "std"), weights(tmp_path / "plain")
    assert all(torch.equal(got[LM_PREFIX + k], v) for k, v in want.items())
    assert not torch.equal(want["model.layers.0.self_attn.q_proj.weight"], plain["model.layers.0.self_attn.q_proj.weight"])
