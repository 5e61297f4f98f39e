"""Shared fixtures: tiny real Hugging Face checkpoints, built once per test session (~1-2 s)."""

from __future__ import annotations

import pytest
import torch

from tsugiki.factory import (
    SiblingSet,
    TinyLMSpec,
    build_mismatched,
    build_siblings,
    build_tiny_lm,
)

SHARD_SIZE = "100KB"  # the default tiny llama is ~330 KB, so this gives >= 3 shards


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test model is tiny: intra-op threads only add contention (seconds of spinning on a busy
    2-core machine), and the evolution runner evaluates with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_siblings(tmp_path_factory) -> SiblingSet:
    """Llama base + 3 perturbed variants (variant_1 has a sparse delta), fp32, one file each."""
    return build_siblings(
        tmp_path_factory.mktemp("tiny_siblings"), n=3, spec=TinyLMSpec("llama"), kind="perturbed"
    )


@pytest.fixture(scope="session")
def tiny_mistral_siblings(tmp_path_factory) -> SiblingSet:
    """Mistral base + 2 fine-tuned variants (0: Japanese sentences, 1: arithmetic)."""
    return build_siblings(
        tmp_path_factory.mktemp("tiny_mistral_siblings"),
        n=2,
        spec=TinyLMSpec("mistral"),
        kind="finetuned",
    )


@pytest.fixture(scope="session")
def tiny_sharded_lm(tmp_path_factory):
    """Path of a default llama saved in >= 3 shards with model.safetensors.index.json."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_sharded_lm"), max_shard_size=SHARD_SIZE)


@pytest.fixture(scope="session")
def tiny_mismatched_lm(tmp_path_factory):
    """Path of a llama like tiny_siblings.base but with hidden_size 48 (unmergeable with it)."""
    return build_mismatched(tmp_path_factory.mktemp("tiny_mismatched_lm"), TinyLMSpec(), "hidden")


@pytest.fixture(scope="session")
def real_base():
    """The real Gemma 3 270M as a plain HF dir (imported from its GGUF package once into the cache)."""
    from tsugiki.demo.base_model import real_base as get

    return get(progress=False)


def build_tiny_gemma(out, tokenizer_dir, *, seed: int = 0, delta_of=None, delta: float = 0.0):
    """A tiny random Gemma 3 text LM with the real Gemma tokenizer (262k vocabulary, hidden 64, 2 layers:
    one sliding, one full attention), saved as a plain HF dir; ``delta_of``: start from that dir's weights
    plus Gaussian noise of std ``delta`` (a stand-in fine-tune)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if delta_of is not None:
            model = AutoModelForCausalLM.from_pretrained(delta_of, dtype=torch.float32)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * delta)
        else:
            config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
                                      layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, max_position_embeddings=512)
            config.architectures = ["Gemma3ForCausalLM"]
            model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(Path(out))
    tok.save_pretrained(Path(out))
    return Path(out)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory, real_base):
    """A tiny Gemma 3 base and two noisy "fine-tunes" of it, all with the real tokenizer."""
    root = tmp_path_factory.mktemp("tiny_gemma")
    base = build_tiny_gemma(root / "base", real_base)
    return SiblingSet(base, [build_tiny_gemma(root / f"variant_{i}", real_base, seed=i + 1, delta_of=base, delta=0.02)
                             for i in range(2)])
