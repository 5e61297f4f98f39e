"""Load each Hugging Face tokenizer once per process.

Gemma's tokenizer (262k tokens) takes ~5 s to load on this project's 2-core machine, and a demo or a search
loads the same files dozens of times (every source, merge and candidate dir carries a copy). Tokenizers
here are keyed by the SHA-256 of their files, so two dirs with byte-identical tokenizer files share one
load, and a changed file is a new key. Each caller gets its own shallow copy whose Python-side state
(padding side, special tokens) is private; the Rust backend is shared, which is safe because the
``__call__`` path sets its padding and truncation on every call.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from tsugiki.hf_load import check_no_code, from_pretrained

# The files a tokenizer is built from (whichever exist); config.json is left out: it only names the class
# when tokenizer_config.json does not, and it differs between models that share a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
                   "chat_template.json")
_CACHE: dict[str, Any] = {}
MAX_CACHED = 4


def fingerprint(path: str | Path) -> str | None:
    """SHA-256 over the tokenizer files of the local dir ``path`` (names and bytes); None when ``path``
    is not a local dir holding any of them (a hub id: no caching)."""
    d = Path(path)
    if not d.is_dir():
        return None
    h, found = hashlib.sha256(), False
    for name in TOKENIZER_FILES:
        f = d / name
        if f.is_file():
            found = True
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest() if found else None


def private_copy(tokenizer):
    """A shallow copy of ``tokenizer`` with its own containers (special tokens, added-token maps), so
    setting ``pad_token`` or ``padding_side`` on it leaves the original as it was."""
    out = copy.copy(tokenizer)
    for k, v in vars(tokenizer).items():
        if isinstance(v, (dict, list, set)):
            setattr(out, k, copy.copy(v))
    return out


def load_tokenizer(path: str | Path, **kwargs):
    """``AutoTokenizer.from_pretrained(path, **kwargs)``, loaded once per set of identical tokenizer files
    (see the module doc); always a private copy. A folder naming its own code is refused (tsugiki.hf_load)."""
    from transformers import AutoTokenizer

    check_no_code(path)  # also when cached: config.json, not fingerprinted, may name a tokenizer's code
    key = fingerprint(path)
    if key is None:
        return from_pretrained(AutoTokenizer, str(path), **kwargs)
    key += repr(sorted(kwargs.items()))
    if key not in _CACHE:
        if len(_CACHE) >= MAX_CACHED:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = from_pretrained(AutoTokenizer, str(path), **kwargs)
    return private_copy(_CACHE[key])
