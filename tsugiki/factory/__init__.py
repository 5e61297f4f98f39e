"""Tiny models in real Hugging Face formats, built offline in seconds, for tests and the demo."""

from tsugiki.factory.lm import (
    SiblingSet,
    TinyLMSpec,
    build_mismatched,
    build_siblings,
    build_tiny_lm,
)
from tsugiki.factory.tokenizer import build_char_tokenizer

__all__ = [
    "SiblingSet",
    "TinyLMSpec",
    "build_char_tokenizer",
    "build_mismatched",
    "build_siblings",
    "build_tiny_lm",
]
