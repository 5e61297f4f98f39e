"""The demo's language models: the shipped base and its two fine-tuned siblings.

The base takes ~15–25 minutes to train on 2 CPU cores, longer than a demo run may take, so its weights
ship with the package (``tsugiki/demo/weights/base``, float16, with a model card). ``tsugiki demo
--rebuild-models`` trains it again with the code below and checks the result is bit-for-bit the shipped
file. The siblings take a minute or two and are trained at run time from the shipped base.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from tsugiki.demo import lm_data
from tsugiki.demo.lm_train import TrainSettings, train
from tsugiki.factory.lm import TinyLMSpec, _new_model, _save
from tsugiki.factory.tokenizer import build_char_tokenizer

SHIPPED_BASE = Path(__file__).parent / "weights" / "base"
BASE_SPEC = TinyLMSpec(arch="llama", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4,
                       intermediate_size=512, max_position_embeddings=128, seed=0)
BASE_CORPUS = (200_000, 0)  # examples, seed
BASE_TRAIN = TrainSettings(steps=2500, lr=3e-3, batch_size=64, warmup=50, seed=0)


@dataclass(frozen=True)
class SiblingRecipe:
    """How a sibling is fine-tuned from the base: which corpus, how long, how fast."""

    corpus: str  # "ja" or "math"
    steps: int
    lr: float = 1e-3
    examples: int = 20_000
    seed: int = 1

    def examples_for(self, design: lm_data.Design) -> list[tuple[str, str]]:
        make = {"ja": lm_data.ja_corpus, "math": lm_data.math_corpus}[self.corpus]
        return make(self.examples, self.seed, design)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_base(out: Path, *, progress: bool = True) -> Path:
    """Train the base from scratch (deterministic) and save it as float16 to ``out``."""
    tok = build_char_tokenizer(BASE_SPEC.vocab_size)
    model = _new_model(BASE_SPEC, tok)
    train(model, tok, lm_data.base_corpus(*BASE_CORPUS), BASE_TRAIN, desc="base LM", progress=progress)
    return _save(model, tok, out, None, torch.float16)


def train_sibling(base: Path, out: Path, recipe: SiblingRecipe, design: lm_data.Design, *, progress: bool = True) -> Path:
    """Fine-tune a float32 copy of ``base`` and save it (float32) to ``out``; a finished ``out`` is reused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    settings = TrainSettings(steps=recipe.steps, lr=recipe.lr, batch_size=32, warmup=20, seed=recipe.seed)
    train(model, tok, recipe.examples_for(design), settings, desc=f"{recipe.corpus} sibling", progress=progress)
    tmp = out.with_name(out.name + ".tmp")
    _save(model, tok, tmp, None, torch.float32)
    tmp.rename(out)
    return out
