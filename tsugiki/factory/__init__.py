"""Tiny models in real Hugging Face formats, built offline in seconds, for tests and the demo.

The names below are imported on first use: ``factory.lm`` and ``factory.tokenizer`` load torch and
transformers, and ``factory.archs`` (the architecture names the CLI and configs offer) must stay free
of them.
"""

import importlib

_HOMES = {
    "SiblingSet": "lm",
    "TinyLMSpec": "lm",
    "build_char_tokenizer": "tokenizer",
    "build_mismatched": "lm",
    "build_siblings": "lm",
    "build_tiny_lm": "lm",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
