"""Every load of a Hugging Face model, tokenizer, processor, config, pipeline, adapter or vLLM engine goes
through here, so that no code from a model folder ever runs.

A model folder can name its own Python files: an ``auto_map`` in config.json, tokenizer_config.json or a
processor config (transformers imports ``modeling_*.py`` / ``tokenization_*.py`` from the folder), or a
component in a diffusers pipeline's model_index.json whose module is a ``.py`` file in the folder. Left to
itself, transformers *asks on stdin* whether to run such code. Here a local folder that names code is refused
first, in one line naming the file and key (:func:`check_no_code`); then the load passes
``trust_remote_code=False`` wherever the class takes it, so a hub id that needs code is refused by the library
instead of prompting (and that refusal is one line too). A merge ships no code, so :func:`drop_auto_map`
removes ``auto_map`` from the configs it writes. tests/test_remote_code.py fails on a ``from_pretrained`` or
``LLM`` call outside this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tsugiki.errors import CheckpointError

# the files whose auto_map transformers (and diffusers' AutoModel) import code from
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                "video_preprocessor_config.json")
REFUSAL = "tsugiki never runs code from a model folder"


def _auto_map(file: Path) -> str | None:
    """The modules ``file``'s ``auto_map`` names ("modeling_x.py, ..."), or None when it names none."""
    try:
        raw = file.read_bytes()
    except OSError:  # absent (or unreadable: the loader reports it)
        return None
    if b'"auto_map"' not in raw:  # most files: no parse (a Gemma tokenizer_config.json is megabytes)
        return None
    try:
        data = json.loads(raw)
    except ValueError:  # the loader reports invalid JSON, and runs nothing from it
        return None
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if not auto_map:
        return None
    refs = auto_map.values() if isinstance(auto_map, dict) else auto_map  # old tokenizers: a list
    flat = [r for ref in refs for r in (ref if isinstance(ref, (list, tuple)) else [ref]) if isinstance(r, str)]
    return ", ".join(dict.fromkeys(r.rsplit(".", 1)[0] + ".py" for r in flat)) or "?"


def code_named(path: str | Path) -> str | None:
    """Why loading the local folder ``path`` would run code from it (one line), or None (also for a hub id)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    for name in CODE_CONFIGS:
        modules = _auto_map(folder / name)
        if modules:
            return f"{folder / name}: auto_map names the model's own code ({modules}); {REFUSAL}"
    index = folder / "model_index.json"
    try:
        components = json.loads(index.read_text()) if index.is_file() else {}
    except ValueError:
        return None
    for key, value in components.items() if isinstance(components, dict) else ():
        if not (isinstance(value, list) and value and isinstance(value[0], str)):
            continue
        code = f"{value[0]}.py" if key == "_class_name" else f"{key}/{value[0]}.py"
        if (folder / code).is_file():
            return f"{index}: {key} names the pipeline's own code ({code}); {REFUSAL}"
        if key != "_class_name" and (why := code_named(folder / key)):
            return why
    return None


def check_no_code(path: str | Path) -> None:
    """Refuse (CheckpointError, one line) a local model folder that names its own code."""
    why = code_named(path)
    if why:
        raise CheckpointError(why)


def _takes_trust_flag(cls) -> bool:
    # transformers' classes all take it (its Auto* act on it); diffusers takes it on pipelines only (its
    # models pass unknown keywords on to their config); peft has no remote code
    module = getattr(cls, "__module__", "")
    return module.startswith(("transformers.", "diffusers.pipelines."))


def from_pretrained(cls, path: str | Path, **kwargs) -> Any:
    """``cls.from_pretrained(path, **kwargs)`` after :func:`check_no_code`, with ``trust_remote_code=False``
    where ``cls`` takes it; transformers' refusal of code (a hub id's) becomes one line too."""
    check_no_code(path)
    if not _takes_trust_flag(cls):
        return cls.from_pretrained(path, **kwargs)
    try:
        return cls.from_pretrained(path, **kwargs, trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code=True" not in str(e):
            raise
        raise CheckpointError(f"{path}: needs its own code to load ({cls.__name__}); {REFUSAL}") from None


def with_adapter(model: Any, adapter: str | Path) -> Any:
    """peft's ``PeftModel.from_pretrained(model, adapter)`` after :func:`check_no_code`."""
    from peft import PeftModel

    check_no_code(adapter)
    return PeftModel.from_pretrained(model, adapter)


def vllm_llm(**kwargs) -> Any:
    """``vllm.LLM(**kwargs)`` with ``trust_remote_code=False``, after :func:`check_no_code` on its model
    (and tokenizer) folder."""
    import vllm

    for key in ("model", "tokenizer"):
        if kwargs.get(key) is not None:
            check_no_code(kwargs[key])
    return vllm.LLM(**{**kwargs, "trust_remote_code": False})


def drop_auto_map(out: Path) -> dict[str, str]:
    """Remove ``auto_map`` from the config files written in ``out`` and its folders (a merge ships no code, so
    its configs name none); returns {file relative to ``out``: the modules its auto_map named}."""
    dropped = {}
    for file in sorted(f for name in CODE_CONFIGS for f in (out / name, *out.glob(f"*/{name}"))):
        modules = _auto_map(file)
        if modules:
            data = json.loads(file.read_text())
            del data["auto_map"]
            file.unlink()  # a new file: never written through a link into a source
            file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            dropped[file.relative_to(out).as_posix()] = modules
    return dropped
