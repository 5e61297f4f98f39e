"""One engine kept across several model dirs: starting vLLM costs ~20 s on a 270 M model on 2 cores, swapping a
model's weights in ~1 s. A dir whose config, tokenizer and tensor shapes match the running model's is swapped
in from its safetensors files; any other (a DFS model with more layers, another family) restarts the engine on
it. What the demo's held-out evaluation, ``--mgsm-ja`` and ``tsugiki eval`` with several models use."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from tsugiki.engines import open_engine
from tsugiki.engines.base import Engine, EngineOptions, checkpoint_shapes

# config.json keys that say how a file was written, not what the model computes
_BOOKKEEPING = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    """transformers' defaults for every config (``return_dict: true``, ...): a dir that writes them out and one
    that leaves them to the default (peft's merged models do) hold the same model."""
    from transformers import PretrainedConfig

    return json.loads(PretrainedConfig().to_json_string(use_diff=False))


def _identity(model_dir: str) -> tuple[Any, ...] | None:
    """What must match for a swap to equal a fresh start: the config, the tokenizer files, the tensor shapes."""
    from tsugiki.tokenizer_cache import fingerprint

    shapes = checkpoint_shapes(model_dir)
    config = Path(model_dir) / "config.json"
    if shapes is None or not config.is_file():
        return None  # a hub id or an unusual dir: always a fresh start
    defaults = _defaults()
    cfg = {k: v for k, v in json.loads(config.read_text(encoding="utf-8")).items()
           if k not in _BOOKKEEPING and not (k in defaults and defaults[k] == v)}
    return json.dumps(cfg, sort_keys=True), fingerprint(model_dir), tuple(sorted(shapes.items()))


class ResidentEngine:
    """``load(model_dir)`` returns engine ``name`` holding that model, swapping it in where it can."""

    def __init__(self, name: str, options: EngineOptions | None = None):
        self.name, self.options = name, options or EngineOptions()
        self.engine: Engine | None = None
        self.current: str | None = None
        self._identity: tuple[Any, ...] | None = None
        self.starts = self.swaps = 0

    def load(self, model_dir: str | Path) -> Engine:
        ref = str(model_dir)
        if self.engine is not None and ref == self.current:
            return self.engine
        identity = _identity(ref)
        if self.engine is not None and identity is not None and identity == self._identity:
            from safetensors import safe_open

            tensors = []
            for f in sorted(Path(ref).glob("*.safetensors")):
                with safe_open(str(f), "pt") as h:
                    tensors += [(k, h.get_tensor(k)) for k in h.keys()]
            self.engine.load_weights(tensors)
            self.swaps += 1
        else:
            self.close()
            self.engine = open_engine(self.name, ref, self.options)
            self.starts += 1
        self.current, self._identity = ref, identity
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.current, self._identity = None, None, None
