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
