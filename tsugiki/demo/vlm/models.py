"""The VLM stage's LLaVA around the real base: a small CLIP vision tower and projector, Gemma 3 270M inside.

LLaVA-1.5's recipe in miniature: a vision tower (CLIP, trained from scratch here: no pretrained vision
weights are available offline) and a two-layer projector turn a 64 px picture into 16 soft tokens that
the frozen language model reads in place of an image token (the last unused id of Gemma's 262k
vocabulary). Only the vision side is trained (LLaVA's first stage), on English questions about drawn
shapes (:mod:`tsugiki.demo.vlm.scenes`): ``Question: <image>\\nWhat colour is it?\\nAnswer: red``.

Training takes ~10 minutes on 2 CPU cores, so the trained vision weights ship with the package
(``weights/vision``, ~4 MB, with a model card); :func:`build_llava` puts them around any LM of the base's
shapes, and ``tsugiki demo --rebuild-models`` trains them again (:func:`train_vision`) and checks the result
equals the shipped file bit for bit. As in the seed, a Japanese LM is then grafted in place of the LLaVA's
own with ``tsugiki vlm swap``'s code; the vision side stays bit for bit.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tsugiki.demo.lm.word_problems import EN_PROMPT, JA_PROMPT
from tsugiki.demo.training import train_steps
from tsugiki.demo.vlm import scenes
from tsugiki.evolution.data import Pair
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.merging.output_dir import AtomicOutputDir
from tsugiki.threads import torch_threads

SHIPPED_VISION = Path(__file__).parents[1] / "weights" / "vision"
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
    """LLaVA stage 1: AdamW on the vision tower and projector, the language model frozen."""

    train_scenes: int = 1200
    steps: int = 250
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 20
    seed: int = 0
    threads: int = 1  # bit-for-bit reproducible for a fixed thread count and torch build


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


def assemble(lm_dir: Path, vision: Path | None, spec: VisionSpec = SPEC, *, seed: int = 0):
    """(model, processor): a LLaVA whose language model is ``lm_dir``'s weights and whose vision side is
    ``vision/model.safetensors`` (None: freshly initialised from ``seed``, to be trained)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    from tsugiki.hf_load import from_pretrained

    config = _config(lm_dir, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    with hf_progress_bars_off():
        lm = from_pretrained(AutoModelForCausalLM, lm_dir, dtype=torch.float32)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight if config.tie_word_embeddings else lm.lm_head.weight
    if vision is not None:
        state = load_file(Path(vision) / "model.safetensors")
        missing = set(vision_state(model)) - set(state)
        if missing:
            raise ValueError(f"{vision}: vision weights lack {sorted(missing)[0]!r}")
        model.load_state_dict(state, strict=False)
    model.generation_config.pad_token_id = 0
    return model, _processor(lm_dir, spec)


def build_llava(lm_dir: Path, out: Path, vision: Path | None = None) -> Path:
    """A loadable LLaVA dir (weights, config, processor) around ``lm_dir`` with the shipped (or given)
    vision weights (their ``training.json`` says the vision spec); reused when ``out`` already holds one."""
    if (out / "config.json").exists():
        return out
    vision = Path(vision or SHIPPED_VISION)
    spec = VisionSpec(**json.loads((vision / "training.json").read_text())["spec"])
    model, processor = assemble(lm_dir, vision, spec)
    with AtomicOutputDir(out, force=True) as tmp, hf_progress_bars_off():
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


# ----------------------------------------------------------------------------- alignment (stage 1)
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


def train_vision(lm_dir: Path, out: Path, recipe: AlignRecipe = ALIGN, spec: VisionSpec = SPEC, *,
                 progress: bool = True) -> dict:
    """Align a fresh vision tower and projector to the frozen ``lm_dir`` on English scene questions and save
    them (``out/model.safetensors`` + ``training.json``); returns the training record."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    model, processor = assemble(lm_dir, None, spec, seed=recipe.seed)
    items = scenes.english_items(recipe.train_scenes, recipe.seed)
    data = batch_tensors(processor, EN_TEMPLATE, items)
    vision = [model.model.vision_tower, model.model.multi_modal_projector]
    model.requires_grad_(False)
    for m in vision:
        m.requires_grad_(True)
    params = [p for m in vision for p in m.parameters()]
    with torch_threads(recipe.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0, foreach=False)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * (1.0 - 0.9 * s / recipe.steps))
        order = random.Random(recipe.seed)

        def loss_at(step: int) -> torch.Tensor:
            idx = torch.tensor(order.sample(range(len(items)), recipe.batch_size))
            batch = {k: v[idx] for k, v in data.items()}
            width = int(batch["attention_mask"].sum(1).max())
            return _answer_loss(model, {k: v[:, :width] if k != "pixel_values" else v for k, v in batch.items()})

        model.train()
        losses = train_steps(loss_at, opt, steps=recipe.steps, desc="align LLaVA (English)", progress=progress,
                             clip=1.0, params=params, scheduler=sched)
    model.eval()
    record = {"recipe": asdict(recipe), "spec": asdict(spec), "seconds": round(time.perf_counter() - start, 1),
              "losses": [round(x, 4) for x in losses]}
    with AtomicOutputDir(out, force=True) as tmp:
        save_file({k: v.contiguous() for k, v in vision_state(model).items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        (tmp / "README.md").write_text(vision_card(record), encoding="utf-8")
    return record


def vision_card(record: dict) -> str:
    from tsugiki.demo.base_model import GEMMA_NOTICE, HUB_ID

    r, v = record["recipe"], record["spec"]
    return f"""# tsugiki demo: vision tower and projector of the LLaVA around {HUB_ID}

Trained by `tsugiki.demo.vlm.models.train_vision` for `tsugiki demo`'s VLM stage (EvoVLM-JP in miniature);
`tsugiki demo --rebuild-models` trains them again and checks the file is bit for bit this one.

- Model: transformers `LlavaForConditionalGeneration`, language model {HUB_ID} (frozen), CLIP vision tower
  trained from scratch (hidden {v['hidden_size']}, {v['layers']} layers, {v['heads']} heads, {v['image_size']} px images,
  {v['patch_size']} px patches: {(v['image_size'] // v['patch_size']) ** 2} image tokens; LLaVA reads the second-to-last layer), the
  default two-layer projector; the image token is `{IMAGE_TOKEN}` (id 262143).
- Data: `tsugiki.demo.vlm.scenes.english_items({r['train_scenes']}, seed={r['seed']})`: one shape of one colour drawn
  with Pillow, two English questions each (`What colour is it?` → `red`, `What shape is it?` → `circle`).
- Recipe: AdamW lr {r['lr']} (warm-up {r['warmup']} steps, linear decay to 10 %), batch {r['batch_size']}, {r['steps']} steps,
  gradient clipping 1.0, loss on the answer and EOS only; {r['threads']} torch threads (bit for bit reproducible
  for that thread count and torch build).
- Time: {record['seconds']:.0f} s on 2 CPU cores; final loss {sum(record['losses'][-10:]) / 10:.4f} (mean of the
  last 10 steps; all in `training.json`).

{GEMMA_NOTICE} These weights were trained against Gemma and ship under the same terms.
"""
