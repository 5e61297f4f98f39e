"""The interface every evaluation engine implements (see :mod:`tsugiki.engines`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tsugiki.errors import TsugikiError


class EngineError(TsugikiError):
    """An engine that cannot be started or used as asked (not installed, bad option, failed swap)."""


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs. ``dtype``: the compute dtype (None: the engine's default: ``hf`` float32, ``vllm``
    its own ``auto``, which runs float32 checkpoints in bfloat16); ``device``: where an ``hf`` model lives;
    ``batch_size``: prompts per forward pass (``hf``; vLLM schedules its own batches); ``max_model_len``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``kv_cache_gib`` (the KV cache on CPU),
    ``enforce_eager``: vLLM's settings of the same names (None: vLLM's defaults)."""

    dtype: str | None = None
    device: str = "cpu"
    batch_size: int = 8
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    kv_cache_gib: int | None = None
    enforce_eager: bool | None = None
    seed: int = 0


AnswerScores = tuple  # (log-probabilities of the answer tokens: float tensor, greedy hits: bool tensor)


class Engine:
    """The interface every engine implements (see :mod:`tsugiki.engines`); ``tokenizer``: the model's (a
    transformers tokenizer), for callers that count tokens."""

    name = ""
    tokenizer: Any = None

    def generate(self, prompts: Sequence[str], *, stop: Sequence[str] = (), max_new_tokens: int = 256,
                 batch_size: int | None = None) -> list[str]:
        raise NotImplementedError

    def answer_logprobs(self, pairs: Sequence[tuple[str, str]], *, append_eos: bool = False,
                        batch_size: int | None = None) -> list[AnswerScores]:
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        raise NotImplementedError

    def load_model(self, model: Any) -> None:
        """Make ``model``'s (a transformers causal LM in memory) weights the engine's."""
        self.load_weights(model.state_dict().items())

    def describe(self) -> dict[str, Any]:
        """What results should record about how they were made (engine, version, dtype)."""
        return {"engine": self.name}

    def close(self) -> None:
        """Free the engine's memory (its model, caches); it cannot be used afterwards."""


def checkpoint_shapes(ref: str) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape from a local model dir's safetensors headers (None for a hub id)."""
    from safetensors import safe_open

    files = sorted(Path(ref).glob("*.safetensors")) if Path(ref).is_dir() else []
    if not files:
        return None
    shapes = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            shapes.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
    return shapes
