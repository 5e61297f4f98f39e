"""Tiny causal LMs (Llama / Mistral / Qwen2) saved as real Hugging Face checkpoints, offline.

Everything is deterministic: the same arguments give bit-identical ``*.safetensors`` files.
All randomness comes from ``torch.manual_seed`` inside ``torch.random.fork_rng``, so the
caller's global RNG state is left untouched.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import transformers
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from tsugiki.factory.archs import SIBLING_KINDS, tiny_arch
from tsugiki.factory.tokenizer import build_char_tokenizer
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.threads import torch_threads

@dataclass(frozen=True)
class TinyLMSpec:
    """Shape and seed of a tiny model. ``vocab_size=None`` means the char tokenizer's size (a
    larger value pads the tokenizer with reserved tokens, rounded up to a multiple of 64)."""

    arch: str = "llama"  # a name in tsugiki.factory.archs.TINY_ARCHS
    hidden_size: int = 32
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False
    seed: int = 0
    vocab_size: int | None = None


@dataclass(frozen=True)
class SiblingSet:
    """A base checkpoint and variants of it that share every tensor name and shape."""

    base: Path
    variants: list[Path] = field(default_factory=list)

    @property
    def all(self) -> list[Path]:
        return [self.base, *self.variants]


# --------------------------------------------------------------------------- building


def make_config(spec: TinyLMSpec, tok: PreTrainedTokenizerFast, dtype: torch.dtype):
    config_cls = getattr(transformers, tiny_arch(spec.arch).config_class)
    return config_cls(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        # 1/sqrt(d) instead of the default 0.02, so a few fine-tuning steps move the weights
        # by a fraction of their size (as in real fine-tunes), not by more than their size.
        initializer_range=spec.hidden_size**-0.5,
        dtype=dtype,
    )


def config_json(spec: TinyLMSpec) -> dict:
    """The config.json of a model built from ``spec``, without building it (a plan reads it)."""
    config = make_config(spec, build_char_tokenizer(spec.vocab_size), torch.float32)
    return {**config.to_diff_dict(), "architectures": [tiny_arch(spec.arch).model_class]}


def _new_model(spec: TinyLMSpec, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialised float32 model, weights determined by ``spec.seed`` alone."""
    config = make_config(spec, tok, torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = getattr(transformers, tiny_arch(spec.arch).model_class)(config)
    return model.eval()


def _save(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerFast,
    out_dir: str | Path,
    max_shard_size: int | str | None,
    torch_dtype: torch.dtype,
) -> Path:
    from tsugiki.merging.output_dir import AtomicOutputDir  # lazily: factory models need no merge engine

    with AtomicOutputDir(out_dir, force=True) as tmp:  # a killed build leaves no half-written model
        _save_into(model, tok, tmp, max_shard_size, torch_dtype)
    return Path(out_dir)


def _save_into(model: PreTrainedModel, tok: PreTrainedTokenizerFast, out: Path, max_shard_size: int | str | None,
               torch_dtype: torch.dtype) -> None:
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
    )  # no max_new_tokens: a length limit belongs to an evaluation, not to the model (merges copy this file)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    with hf_progress_bars_off():  # no "Writing model shards" bar per tiny file
        model.save_pretrained(out, **kwargs)
    tok.save_pretrained(out)


def build_tiny_lm(
    out_dir: str | Path,
    spec: TinyLMSpec = TinyLMSpec(),
    *,
    max_shard_size: int | str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> Path:
    """Build a randomly initialised tiny model plus tokenizer and generation config in
    ``out_dir`` (loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer``); returns the dir."""
    tok = build_char_tokenizer(spec.vocab_size)
    return _save(_new_model(spec, tok), tok, out_dir, max_shard_size, torch_dtype)


def build_mismatched(
    out_dir: str | Path,
    base_spec: TinyLMSpec = TinyLMSpec(),
    what: Literal["hidden", "layers", "vocab"] = "hidden",
    **kwargs,
) -> Path:
    """A model that cannot be merged with ``base_spec``'s: wider hidden size (+4 per head),
    two more layers, or 64 more vocabulary entries."""
    base_vocab = len(build_char_tokenizer(base_spec.vocab_size))
    changes = {
        "hidden": {"hidden_size": base_spec.hidden_size + 4 * base_spec.num_heads},
        "layers": {"num_layers": base_spec.num_layers + 2},
        "vocab": {"vocab_size": base_vocab + 64},
    }
    if what not in changes:
        raise ValueError(f"what must be one of {sorted(changes)}, not {what!r}")
    return build_tiny_lm(out_dir, replace(base_spec, **changes[what]), **kwargs)


# --------------------------------------------------------------------------- siblings


def perturb(model: PreTrainedModel, seed: int, scale: float, density: float) -> None:
    """Add a deterministic delta of std ``scale * std(param)`` to every parameter in place;
    with ``density < 1`` only that fraction of entries (chosen at random) changes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            ref = p.std() if p.numel() > 1 else p.new_tensor(0.0)
            if ref == 0:  # e.g. norm weights initialised to ones
                ref = p.abs().mean().clamp_min(1e-3)
            delta = torch.randn(p.shape, generator=gen) * (scale * ref)
            if density < 1.0:
                delta *= torch.rand(p.shape, generator=gen) < density
            p.add_(delta.to(p.dtype))


#: the words of the Japanese siblings' corpus; the evolve data generator ``ja_sentences``
#: (:mod:`tsugiki.evolution.data`) asks about sentences made of the same words
JA_SUBJECTS = ["私", "彼", "先生", "友達", "母", "犬", "猫", "学生"]
JA_PLACES = ["東京", "大阪", "学校", "駅", "店", "家", "公園", "山"]
JA_VERBS = ["行きます", "来ました", "歩きます", "帰ります", "走りました"]


def _corpus(task: int, seed: int, n: int = 64) -> list[str]:
    """A small synthetic text corpus; ``task`` selects its kind (cycling through three)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if task % 3 == 0:  # Japanese sentence templates
            s, p, v = rng.choice(JA_SUBJECTS), rng.choice(JA_PLACES), rng.choice(JA_VERBS)
            out.append(f"{s}は{p}へ{v}。")
        elif task % 3 == 1:  # English arithmetic
            a, b = rng.randrange(10), rng.randrange(10)
            out.append(f"{a}+{b}={a + b}")
        else:  # copying
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 6)))
            out.append(f"copy {w} -> {w}")
    return out


def _finetune(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerFast,
    texts: list[str],
    seed: int,
    steps: int,
    lr: float,
    batch_size: int = 16,
) -> None:
    """A few AdamW steps of next-token prediction on ``texts`` (deterministic for ``seed``)."""
    enc = tok([t + tok.eos_token for t in texts], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    # One thread: CPU reductions then run in a fixed order whatever the machine's core count
    # (bit-identical results), and for a model this small it is also the fastest.
    with torch_threads(1):
        _train(model, enc["input_ids"], enc["attention_mask"], labels, seed, steps, lr, batch_size)


def _train(model, input_ids, attention_mask, labels, seed, steps, lr, batch_size) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, foreach=False)
        model.train()
        for _ in range(steps):
            idx = torch.randperm(len(input_ids))[:batch_size]
            loss = model(
                input_ids=input_ids[idx], attention_mask=attention_mask[idx], labels=labels[idx]
            ).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()


def build_siblings(
    out_root: str | Path,
    n: int = 3,
    spec: TinyLMSpec = TinyLMSpec(),
    *,
    kind: str = "finetuned",
    steps: int = 20,
    lr: float = 3e-3,
    delta_scale: float = 0.02,
    max_shard_size: int | str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> SiblingSet:
    """Build ``out_root/base`` and ``n`` variants ``out_root/variant_{i}`` of it.

    ``kind="perturbed"``: base + a random delta of std ``delta_scale * std(param)`` (seed
    differs per variant; odd-numbered variants get sparse deltas, 30% of entries).
    ``kind="finetuned"``: ``steps`` AdamW steps on a per-variant synthetic corpus
    (0: Japanese sentences, 1: arithmetic ``3+4=7``, 2: copying, then cycling)."""
    if kind not in SIBLING_KINDS:
        raise ValueError(f"kind must be 'finetuned' or 'perturbed', not {kind!r}")
    root = Path(out_root)
    tok = build_char_tokenizer(spec.vocab_size)
    base_model = _new_model(spec, tok)
    pristine = copy.deepcopy(base_model)  # _save may cast the model it is given
    base = _save(base_model, tok, root / "base", max_shard_size, torch_dtype)

    variants = []
    for i in range(n):
        model = copy.deepcopy(pristine)
        vseed = spec.seed * 1000 + i + 1
        if kind == "perturbed":
            perturb(model, vseed, delta_scale, density=0.3 if i % 2 else 1.0)
        else:
            _finetune(model, tok, _corpus(i, vseed), vseed, steps, lr)
        variants.append(_save(model, tok, root / f"variant_{i}", max_shard_size, torch_dtype))
    return SiblingSet(base=base, variants=variants)
