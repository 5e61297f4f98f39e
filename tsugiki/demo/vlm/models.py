"""The VLM stage's LLaVA around the real base: a small CLIP vision tower and projector, Gemma 3 270M inside.

LLaVA's recipe in miniature: a vision tower (CLIP, trained from scratch here: no pretrained vision weights are
available offline) and a two-layer projector turn a 64 px picture into 16 soft tokens that the language model
reads in place of an image token (the last unused id of Gemma's 262k vocabulary). LLaVA trains the projector
first, then the projector and its language model; here both happen at once: the vision side and a LoRA on the
language model's attention (peft), on English questions about drawn shapes (:mod:`tsugiki.demo.vlm.scenes`):
``Question: <image>\nWhat colour is it?\nAnswer: red``. So the LLaVA's language model is a fine-tune of the
base that learned to look, as LLaVA-1.6-Mistral's is a fine-tune of Mistral, ready to be merged with the JA
sibling (another fine-tune of the same base) the way the seed merged it with a Japanese Mistral.

Training takes ~7 minutes on 2 CPU cores, so the trained weights ship with the package (``weights/llava``:
``model.safetensors``, the vision side, 4 MB; ``adapter/``, the LoRA as peft files for the base, 0.8 MB; a
model card); :func:`build_llava` puts them around the base, and ``tsugiki demo --rebuild-models`` trains them
again (:func:`train_llava`) and checks the result equals the shipped files bit for bit.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tsugiki.demo.lm.siblings import write_adapter
from tsugiki.demo.lm.word_problems import EN_PROMPT, JA_PROMPT
from tsugiki.demo.training import train_steps
from tsugiki.demo.vlm import scenes
from tsugiki.evolution.data import Pair
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.merging.output_dir import AtomicOutputDir
from tsugiki.threads import torch_threads

SHIPPED_LLAVA = Path(__file__).parents[1] / "weights" / "llava"
ADAPTER = "adapter"  # the language model's LoRA (peft files), beside the vision weights
IMAGE_TOKEN = "<unused6241>"  # id 262143, never produced by Gemma's tokenizer for ordinary text
EN_TEMPLATE = EN_PROMPT.replace("{q}", "{input}")  # the VQA predictor puts "<image>\n<question>" at {input}
JA_TEMPLATE = JA_PROMPT.replace("{q}", "{input}")


@dataclass(frozen=True)
class VisionSpec:
    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 256
    image_size: int = 64
    patch_size: int = 16  # 16 image tokens


@dataclass(frozen=True)
class AlignRecipe:
    """LLaVA's two training stages at once: AdamW on the vision tower and projector (stage 1) and a LoRA on the
    language model (stage 2 tunes the LM; ``lora_rank`` 0 keeps it frozen)."""

    train_scenes: int = 1200
    steps: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 20
    seed: int = 0
    threads: int = 2  # bit-for-bit reproducible for a fixed thread count and torch build
    # a light LoRA on the attention only: with r = 8 on every projection (lr 2e-4, 250 steps) the vision side
    # learned to speak to that LoRA alone, and no graft or merge with the JA sibling could read it (measured)
    lora_rank: int = 4
    lora_alpha: int = 8
    lora_lr: float = 1e-4
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


SPEC = VisionSpec()
ALIGN = AlignRecipe()


def _config(lm_dir: Path, spec: VisionSpec):
    from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig

    from tsugiki.hf_load import from_pretrained

    text = from_pretrained(AutoConfig, lm_dir)
    vision = CLIPVisionConfig(hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                              num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                              image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.hidden_size)
    return LlavaConfig(text_config=text, vision_config=vision, image_token_index=262143, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", image_seq_length=(spec.image_size // spec.patch_size) ** 2,
                       tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)))


def _processor(lm_dir: Path, spec: VisionSpec):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from tsugiki.tokenizer_cache import load_tokenizer

    tok = load_tokenizer(lm_dir)
    images = CLIPImageProcessorPil(size={"shortest_edge": spec.image_size},
                                   crop_size={"height": spec.image_size, "width": spec.image_size})
    return LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=spec.patch_size, image_token=IMAGE_TOKEN,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def vision_state(model) -> dict[str, torch.Tensor]:
    """The trained tensors: vision tower and projector (module names)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))}


def _causal_lm(lm_dir: Path, adapter: Path | None = None):
    """``lm_dir``'s causal LM in float32, with ``adapter`` (peft LoRA) merged into its weights when given."""
    from transformers import AutoModelForCausalLM

    from tsugiki.hf_load import from_pretrained, with_adapter

    with hf_progress_bars_off(errors_only=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
        lm = from_pretrained(AutoModelForCausalLM, lm_dir, dtype=torch.float32)
        return lm if adapter is None else with_adapter(lm, adapter).merge_and_unload()


def assemble(lm_dir: Path, weights: Path | None, spec: VisionSpec = SPEC, *, seed: int = 0):
    """(model, processor): a LLaVA whose language model is ``lm_dir``'s weights (plus the LoRA in
    ``weights/adapter`` when there is one) and whose vision side is ``weights/model.safetensors`` (None:
    freshly initialised from ``seed``, the language model as it is: to be trained)."""
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    config = _config(lm_dir, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    adapter = Path(weights) / ADAPTER if weights is not None and (Path(weights) / ADAPTER).is_dir() else None
    lm = _causal_lm(lm_dir, adapter)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight if config.tie_word_embeddings else lm.lm_head.weight
    if weights is not None:
        state = load_file(Path(weights) / "model.safetensors")
        missing = set(vision_state(model)) - set(state)
        if missing:
            raise ValueError(f"{weights}: vision weights lack {sorted(missing)[0]!r}")
        model.load_state_dict(state, strict=False)
    model.generation_config.pad_token_id = 0
    return model, _processor(lm_dir, spec)


def build_llava(lm_dir: Path, out: Path, weights: Path | None = None) -> Path:
    """A loadable LLaVA dir (weights, config, processor) around ``lm_dir`` with the shipped (or given) LLaVA
    weights: vision tower and projector, and the LoRA its language model learned (their ``training.json``
    says the vision spec); reused when ``out`` already holds one."""
    if (out / "config.json").exists():
        return out
    weights = Path(weights or SHIPPED_LLAVA)
    spec = VisionSpec(**json.loads((weights / "training.json").read_text())["spec"])
    model, processor = assemble(lm_dir, weights, spec)
    with AtomicOutputDir(out, force=True) as tmp, hf_progress_bars_off():
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


# ----------------------------------------------------------------------------- alignment (LLaVA's two stages)
def batch_tensors(processor, template: str, items: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + answer + EOS`` ids with labels on the answer and EOS only, and the pixel
    values, built by the same processor (image-token expansion, BOS) that generation uses."""
    tok = processor.tokenizer
    prompts = processor(text=[template.format(input=f"{processor.image_token}\n{p.prompt}") for p in items],
                        images=[p.image for p in items], return_tensors=None)
    seqs, labels = [], []
    for ids, p in zip(prompts["input_ids"], items):
        answer = tok(" " + p.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(list(ids) + answer)
        labels.append([-100] * len(ids) + answer)
    width = max(map(len, seqs))
    pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows])  # noqa: E731
    return {"input_ids": pad(seqs, tok.pad_token_id), "labels": pad(labels, -100),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "pixel_values": torch.from_numpy(np.stack(prompts["pixel_values"])).float()}


def _answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy at the answer positions only (the 262k-token head is the costliest layer per position)."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"], use_cache=False).last_hidden_state
    from tsugiki.engines.hf import head_logits

    target = batch["labels"][:, 1:]
    keep = target != -100
    return torch.nn.functional.cross_entropy(head_logits(model, hidden[:, :-1][keep]), target[keep])


def train_llava(lm_dir: Path, out: Path, recipe: AlignRecipe = ALIGN, spec: VisionSpec = SPEC, *,
                progress: bool = True) -> dict:
    """Align a fresh vision tower and projector to ``lm_dir`` on English scene questions, with a LoRA on the
    language model learning at the same time (``recipe.lora_rank`` > 0), and save them: ``out/model.safetensors``
    (vision side), ``out/adapter`` (peft files for ``lm_dir``'s causal LM, bfloat16), ``training.json`` and a
    model card. Returns the training record."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    with torch_threads(recipe.threads), torch.random.fork_rng(devices=[]):
        model, processor = assemble(lm_dir, None, spec, seed=recipe.seed)
        model.requires_grad_(False)
        vision = [model.model.vision_tower, model.model.multi_modal_projector]
        for m in vision:
            m.requires_grad_(True)
        groups = [{"params": [p for m in vision for p in m.parameters()], "lr": recipe.lr}]
        torch.manual_seed(recipe.seed)
        lora = _add_lora(model, lm_dir, recipe) if recipe.lora_rank else None
        if lora is not None:
            groups.append({"params": [p for p in lora.parameters() if p.requires_grad], "lr": recipe.lora_lr})
        items = scenes.english_items(recipe.train_scenes, recipe.seed)
        data = batch_tensors(processor, EN_TEMPLATE, items)
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, weight_decay=0.0, foreach=False)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * (1.0 - 0.9 * s / recipe.steps))
        order = random.Random(recipe.seed)

        def loss_at(step: int) -> torch.Tensor:
            idx = torch.tensor(order.sample(range(len(items)), recipe.batch_size))
            batch = {k: v[idx] for k, v in data.items()}
            width = int(batch["attention_mask"].sum(1).max())
            return _answer_loss(model, {k: v[:, :width] if k != "pixel_values" else v for k, v in batch.items()})

        model.train()
        what = "vision side and LM LoRA" if lora is not None else "vision side"
        losses = train_steps(loss_at, opt, steps=recipe.steps, desc=f"align LLaVA ({what}, English)", progress=progress,
                             clip=1.0, params=params, scheduler=sched)
    model.eval()
    record = {"recipe": asdict(recipe), "spec": asdict(spec), "seconds": round(time.perf_counter() - start, 1),
              "losses": [round(x, 4) for x in losses]}
    with AtomicOutputDir(out, force=True) as tmp:
        save_file({k: v.contiguous() for k, v in vision_state(model).items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        if lora is not None:
            write_adapter(lora, tmp / ADAPTER)
            (tmp / ADAPTER / "README.md").write_text(
                "# The LoRA the LLaVA's language model learned\n\npeft adapter files for the base's causal LM; how they "
                "were trained: `../README.md` and `../training.json`.\n", encoding="utf-8")
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        (tmp / "README.md").write_text(llava_card(record), encoding="utf-8")
    return record


def _add_lora(model, lm_dir: Path, recipe: AlignRecipe):
    """A peft LoRA model around ``lm_dir``'s causal LM whose decoder becomes the LLaVA's language model, so the
    LoRA trains inside the LLaVA and saves as an ordinary adapter for the standalone LM."""
    from peft import LoraConfig, get_peft_model

    lm = _causal_lm(lm_dir)  # the same weights assemble() put into the LLaVA
    config = LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                        target_modules=list(recipe.lora_targets), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
        lora = get_peft_model(lm, config)
    model.model.language_model = lora.get_base_model().model
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    return lora


def llava_card(record: dict) -> str:
    from tsugiki.demo.base_model import GEMMA_NOTICE, HUB_ID

    r, v = record["recipe"], record["spec"]
    lora = (f"a LoRA on its language model (r = {r['lora_rank']}, alpha = {r['lora_alpha']}, lr {r['lora_lr']}, on "
            f"{', '.join(r['lora_targets'])}; peft files in `{ADAPTER}/`, for {HUB_ID}'s causal LM)"
            if r["lora_rank"] else f"the language model {HUB_ID} frozen")
    return f"""# tsugiki demo: the LLaVA around {HUB_ID}

Trained by `tsugiki.demo.vlm.models.train_llava` for `tsugiki demo`'s VLM stage (EvoVLM-JP in miniature);
`tsugiki demo --rebuild-models` trains them again and checks the files are bit for bit these.

- Model: transformers `LlavaForConditionalGeneration`, language model {HUB_ID}, CLIP vision tower trained from
  scratch (hidden {v['hidden_size']}, {v['layers']} layers, {v['heads']} heads, {v['image_size']} px images,
  {v['patch_size']} px patches: {(v['image_size'] // v['patch_size']) ** 2} image tokens; LLaVA reads the second-to-last layer), the
  default two-layer projector; the image token is `{IMAGE_TOKEN}` (id 262143).
- Trained together, as LLaVA's two stages: the vision tower and projector (`model.safetensors`) and {lora}.
- Data: `tsugiki.demo.vlm.scenes.english_items({r['train_scenes']}, seed={r['seed']})`: one shape of one colour drawn
  with Pillow, two English questions each (`What colour is it?` → `red`, `What shape is it?` → `circle`).
- Recipe: AdamW lr {r['lr']} (warm-up {r['warmup']} steps, linear decay to 10 %), batch {r['batch_size']}, {r['steps']} steps,
  gradient clipping 1.0, loss on the answer and EOS only; {r['threads']} torch threads (bit for bit reproducible
  for that thread count and torch build); the LoRA stored in bfloat16.
- Time: {record['seconds']:.0f} s on 2 CPU cores; final loss {sum(record['losses'][-10:]) / 10:.4f} (mean of the
  last 10 steps; all in `training.json`).

{GEMMA_NOTICE} These weights were trained against Gemma and ship under the same terms.
"""
