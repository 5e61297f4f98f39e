"""A LLaVA-family checkpoint seen as two parts: a standalone causal LM, and a vision side.

`VlmCheckpoint` validates a LLaVA / LLaVA-NeXT checkpoint (config, key layout, every vision tensor the
model class expects) and exposes its language model through `LanguageModelView`, a `TensorSource`
under standalone-LLM names with a standalone-LLM config, so the merge engine's planner, kernels and
architecture specs apply unchanged. `RowSlice` narrows vocabulary tensors for the `embed_slice` mode.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from tsugiki.errors import CheckpointError
from tsugiki.merging.checkpoint import Checkpoint
from tsugiki.merging.tensors import TensorInfo, TensorSource
from tsugiki.vlm.keymap import KeyMap, Layout, load_keymap

LLAVA = load_keymap("llava")


def read_config(model_dir: Path) -> dict | None:
    path = Path(model_dir) / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None


def is_multimodal_config(config: dict | None) -> bool:
    """A composite model config (LLaVA or any other vision-language family)."""
    return bool(config) and ("vision_config" in config or "text_config" in config or config.get("model_type") in LLAVA.model_types)


def check_llava_config(config: dict | None, label: str) -> str:
    """The model_type of a LLaVA-family config, or an error saying what the model is instead."""
    if config is None:
        raise CheckpointError(f"{label}: no config.json, cannot tell whether it is a LLaVA-family model")
    model_type = config.get("model_type")
    if model_type not in LLAVA.model_types:
        supported = ", ".join(sorted(LLAVA.model_types))
        raise CheckpointError(f"{label}: not a LLaVA-family model (model_type {model_type!r}; supported: {supported})")
    if not isinstance(config.get("text_config"), dict) or not isinstance(config.get("vision_config"), dict):
        raise CheckpointError(f"{label}: config.json lacks text_config or vision_config")
    return model_type


def standalone_text_config(config: dict, label: str) -> dict:
    """The VLM's text_config as a standalone causal LM's config.json would read (defaults filled in:
    llava-hf configs omit values equal to the defaults, e.g. Mistral's 32 layers)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    text = dict(config["text_config"])
    model_type = text.get("model_type", "llama")  # transformers' LlavaConfig defaults to llama
    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"{label}: text_config model_type {model_type!r} is not a causal LM transformers knows")
    text.pop("model_type", None)
    full = CONFIG_MAPPING[model_type](**text).to_dict()
    full["model_type"] = model_type
    full["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    return full


def expected_vision_names(config: dict, keymap: KeyMap, layout: Layout) -> list[str]:
    """Every vision-side tensor the transformers class for `config` has, named in `layout`
    (built on the meta device: no memory, no weights)."""
    import transformers

    cls = getattr(transformers, keymap.model_types[config["model_type"]])
    cfg = cls.config_class.from_dict(config)
    with torch.device("meta"):
        module = cls(cfg)
    module_layout = keymap.layouts["module"]
    out = []
    for name in module.state_dict():
        if module_layout.is_vision(name):
            # the two layouts list their vision prefixes in the same order
            i = next(k for k, p in enumerate(module_layout.vision) if name.startswith(p))
            out.append(layout.vision[i] + name[len(module_layout.vision[i]):])
    return out


class LanguageModelView:
    """A VLM's language model as a standalone causal LM (`TensorSource`): names translated by the
    key map, reads passed through to the checkpoint (zero-copy views stay zero-copy)."""

    def __init__(self, checkpoint: Checkpoint, names: Mapping[str, str], config: dict):
        self.checkpoint = checkpoint
        self.label = f"{checkpoint.label} (language model)"
        self._names = dict(names)  # standalone name -> checkpoint name
        self._config = config

    def names(self) -> list[str]:
        return list(self._names)

    def _inner(self, name: str) -> str:
        try:
            return self._names[name]
        except KeyError:
            raise CheckpointError(f"{self.label}: tensor {name!r} not found") from None

    def info(self, name: str) -> TensorInfo:
        return replace(self.checkpoint.info(self._inner(name)), name=name)

    def read(self, name: str) -> torch.Tensor:
        return self.checkpoint.read(self._inner(name))

    def view(self, name: str) -> torch.Tensor:
        return self.checkpoint.view(self._inner(name))

    def release(self, name: str) -> None:
        self.checkpoint.release(self._inner(name))

    def config(self) -> dict:
        return self._config

    @property
    def model_dir(self) -> Path:
        return self.checkpoint.model_dir

    def close(self) -> None:
        self.checkpoint.close()


class VlmCheckpoint:
    """A validated LLaVA-family checkpoint: its layout, language-model and vision tensor names."""

    def __init__(self, checkpoint: Checkpoint, keymap: KeyMap = LLAVA):
        self.checkpoint = checkpoint
        self.label = checkpoint.label
        self.config = checkpoint.config()
        self.model_type = check_llava_config(self.config, self.label)
        names = checkpoint.names()
        self.layout = keymap.detect(names, self.label)
        self.lm_names: dict[str, str] = {}  # standalone name -> checkpoint name
        self.vision_names: list[str] = []
        for name in names:
            llm = self.layout.to_llm(name)
            if llm is not None:
                self.lm_names[llm] = name
            elif self.layout.is_vision(name):
                self.vision_names.append(name)
            else:
                raise CheckpointError(f"{self.label}: tensor {name!r} is neither language model nor vision side "
                                      f"({self.layout.name} layout)")
        have = {keymap.canonical_vision(n) for n in self.vision_names}
        missing = [n for n in expected_vision_names(self.config, keymap, self.layout) if keymap.canonical_vision(n) not in have]
        if missing:
            raise CheckpointError(f"{self.label}: vision tensor {missing[0]!r} missing "
                                  f"({len(missing)} of the {self.model_type} vision tower/projector tensors absent)")
        self.text_config = standalone_text_config(self.config, self.label)

    def language_model(self) -> LanguageModelView:
        return LanguageModelView(self.checkpoint, self.lm_names, self.text_config)

    @property
    def model_dir(self) -> Path:
        return self.checkpoint.model_dir


class RowSlice:
    """A TensorSource whose vocabulary tensors (`rows`: name -> kept rows) show only their first rows."""

    def __init__(self, source: TensorSource, rows: Mapping[str, int]):
        self.source = source
        self.label = source.label
        self.rows = dict(rows)

    def names(self) -> list[str]:
        return self.source.names()

    def info(self, name: str) -> TensorInfo:
        info = self.source.info(name)
        n = self.rows.get(name)
        if n is None:
            return info
        row_bytes = info.nbytes // info.shape[0]
        return replace(info, shape=(n, *info.shape[1:]), nbytes=n * row_bytes)

    def read(self, name: str) -> torch.Tensor:
        return self._cut(name, self.source.read(name))

    def view(self, name: str) -> torch.Tensor:
        return self._cut(name, self.source.view(name))

    def _cut(self, name: str, t: torch.Tensor) -> torch.Tensor:
        n = self.rows.get(name)
        return t if n is None else t[:n]

    def release(self, name: str) -> None:
        self.source.release(name)

    def config(self) -> dict | None:
        get = getattr(self.source, "config", None)
        return get() if callable(get) else None
