"""Tiny LLaVA and LLaVA-NeXT models (Mistral or Llama text, ``factory.archs.llava_text_arch_names()``, + CLIP
vision) as real checkpoints, offline.

The language model has the shapes and vocabulary of a tiny LM built from the same `TinyLMSpec`, so
a tiny VLM and the tiny LM siblings can be grafted together. The tokenizer is the project's char
tokenizer with its first reserved slot renamed ``<image>`` (same vocabulary size as the LMs'); the
processor is built locally from Pillow-backed image processors and saved with `save_pretrained`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from tsugiki.factory.archs import VLM_KINDS
from tsugiki.factory.lm import SiblingSet, TinyLMSpec, build_siblings, make_config, perturb
from tsugiki.factory.tokenizer import BOS, EOS, PAD, UNK, build_char_tokenizer
from tsugiki.hf_load import from_pretrained
from tsugiki.hf_quiet import hf_progress_bars_off

IMAGE_TOKEN = "<image>"
# Mistral-instruct style; a user turn's content may be a string or a list of {type: image|text} parts
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image>\n{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %} [/INST]"
    "{% else %}{{ m['content'] if m['content'] is string else m['content'][0]['text'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class TinyVLMSpec:
    kind: str = "llava"  # one of VLM_KINDS
    text: TinyLMSpec = field(default_factory=lambda: TinyLMSpec(arch="mistral"))
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    image_size: int = 32  # the CLIP input (and crop) size
    patch_size: int = 8  # 16 patches: 16 image tokens per image (LLaVA), more per tile for NeXT
    seed: int = 0


def build_vlm_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """The char tokenizer with ``<reserved_0>`` renamed ``<image>`` (a special token, same id)."""
    base = build_char_tokenizer(vocab_size)
    data = json.loads(base.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    if "<reserved_0>" not in vocab:
        raise ValueError("the char vocabulary has no reserved slot for <image>; pass a larger vocab_size")
    image_id = vocab.pop("<reserved_0>")
    vocab[IMAGE_TOKEN] = image_id
    data["added_tokens"].append({"id": image_id, "content": IMAGE_TOKEN, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False, chat_template=CHAT_TEMPLATE, model_max_length=1 << 20,
        padding_side="left",
    )


def _configs(spec: TinyVLMSpec, tok: PreTrainedTokenizerFast):
    text = make_config(spec.text, tok, torch.float32)
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size, intermediate_size=spec.vision_intermediate_size,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.vision_hidden_size,
    )
    common = dict(text_config=text, vision_config=vision, image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                  vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=spec.text.tie_word_embeddings)
    if spec.kind == "llava":
        return LlavaConfig(**common, image_seq_length=(spec.image_size // spec.patch_size) ** 2)
    if spec.kind == "llava_next":
        s = spec.image_size
        return LlavaNextConfig(**common, image_grid_pinpoints=[[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]])
    raise ValueError(f"kind must be 'llava' or 'llava_next', not {spec.kind!r}")


def config_json(spec: TinyVLMSpec) -> dict:
    """The config.json of a VLM built from ``spec``, without building it (a plan reads it)."""
    cls = LlavaForConditionalGeneration if spec.kind == "llava" else LlavaNextForConditionalGeneration
    return {**_configs(spec, build_vlm_tokenizer(spec.text.vocab_size)).to_diff_dict(), "architectures": [cls.__name__]}


def _processor(spec: TinyVLMSpec, tok: PreTrainedTokenizerFast, config):
    size = {"shortest_edge": spec.image_size}
    crop = {"height": spec.image_size, "width": spec.image_size}
    common = dict(tokenizer=tok, patch_size=spec.patch_size, vision_feature_select_strategy="default",
                  image_token=IMAGE_TOKEN, num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    if spec.kind == "llava":
        return LlavaProcessor(image_processor=CLIPImageProcessorPil(size=size, crop_size=crop), **common)
    images = LlavaNextImageProcessorPil(size=size, crop_size=crop, image_grid_pinpoints=config.image_grid_pinpoints)
    return LlavaNextProcessor(image_processor=images, **common)


def build_tiny_vlm(out_dir: str | Path, spec: TinyVLMSpec = TinyVLMSpec(), *, language_model: str | Path | None = None,
                   lm_delta: float = 0.0, torch_dtype: torch.dtype = torch.float32) -> Path:
    """A tiny LLaVA / LLaVA-NeXT in `out_dir` (weights, config, processor, tokenizer, generation config).

    `language_model`: a tiny LM dir (e.g. `build_siblings(...).base`, built from `spec.text`) whose
    weights become the VLM's language model, plus a delta of std ``lm_delta * std(param)`` (0: exact
    copy). Without it the language model is initialised from `spec.text.seed`, like `build_tiny_lm`."""
    tok = build_vlm_tokenizer(spec.text.vocab_size)
    config = _configs(spec, tok)
    cls = LlavaForConditionalGeneration if spec.kind == "llava" else LlavaNextForConditionalGeneration
    with hf_progress_bars_off():  # no "Loading weights" / "Writing model shards" bars per tiny file
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = cls(config).eval()
            if language_model is None:
                torch.manual_seed(spec.text.seed)  # the same draw build_tiny_lm makes for this text spec
                text_model = AutoModelForCausalLM.from_config(config.text_config)
        if language_model is not None:
            text_model = from_pretrained(AutoModelForCausalLM, language_model, dtype=torch.float32)
        out = _save(model, text_model, tok, spec, config, Path(out_dir), lm_delta, torch_dtype)
    return out


def _save(model, text_model, tok, spec: TinyVLMSpec, config, out: Path, lm_delta: float, torch_dtype: torch.dtype) -> Path:
    if lm_delta:
        perturb(text_model, spec.seed + 7, lm_delta, density=1.0)
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    model.lm_head.load_state_dict(text_model.lm_head.state_dict())

    from tsugiki.merging.output_dir import AtomicOutputDir  # lazily: factory models need no merge engine

    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    # no max_new_tokens: a length limit belongs to an evaluation, not to the model (merges copy this file)
    with AtomicOutputDir(out, force=True) as tmp:  # a killed build leaves no half-written model
        model.save_pretrained(tmp)
        _processor(spec, tok, config).save_pretrained(tmp)
    return out


@dataclass(frozen=True)
class GraftSet:
    """Tiny LMs and two tiny VLMs whose language models derive from the LMs' first variant."""

    llms: SiblingSet
    llava: Path
    llava_next: Path


def build_graft_set(out_root: str | Path, text: TinyLMSpec = TinyLMSpec(arch="mistral"), *, n: int = 2,
                    kind: str = "perturbed", lm_delta: float = 0.02) -> GraftSet:
    """`out_root/llms/{base,variant_i}` (see `build_siblings`), `out_root/llava`, `out_root/llava_next`;
    each VLM's language model is variant_0 plus a delta of relative std `lm_delta` (a "fine-tune")."""
    root = Path(out_root)
    llms = build_siblings(root / "llms", n=n, spec=text, kind=kind)
    vlms = [build_tiny_vlm(root / k, TinyVLMSpec(kind=k, text=text), language_model=llms.variants[0], lm_delta=lm_delta)
            for k in VLM_KINDS]
    return GraftSet(llms, *vlms)
