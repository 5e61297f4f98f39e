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
        seqs, starts = answer_sequences(self.tokenizer, pairs, append_eos=append_eos)
        return self.sequence_logprobs(seqs, starts, batch_size=batch_size)

    def sequence_logprobs(self, seqs: Sequence[Sequence[int]], starts: Sequence[int], *,
                          batch_size: int | None = None) -> list[AnswerScores]:
        """Teacher-forced scores of token ids: for each sequence, the log-probability of every token from
        ``starts[i]`` on given the tokens before it, and whether it is the greedy choice (what
        :meth:`answer_logprobs` scores once it has tokenized, and what lm-eval's loglikelihood asks)."""
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


def check_sequences(seqs: Sequence[Sequence[int]], starts: Sequence[int]) -> None:
    """Refuse sequences with nothing to score (each needs a token before its first scored one)."""
    if len(seqs) != len(starts):
        raise EngineError(f"{len(seqs)} sequences but {len(starts)} start positions")
    for s, st in zip(seqs, starts):
        if not 0 < st < len(s):
            raise EngineError(f"a sequence of {len(s)} tokens cannot be scored from position {st}")


def answer_sequences(tokenizer, pairs: Sequence[tuple[str, str]], *, append_eos: bool = False
                     ) -> tuple[list[list[int]], list[int]]:
    """Token ids of ``prompt + answer`` per pair (the prompt with the tokenizer's special tokens, the answer
    without, EOS appended with ``append_eos``) and where each answer starts: what every engine scores."""
    if not pairs:
        raise EngineError("no (prompt, answer) pairs to score")
    seqs, starts = [], []
    for prompt_text, answer_text in pairs:
        prompt = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
        answer = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
        if append_eos and tokenizer.eos_token_id is not None:
            answer = answer + [tokenizer.eos_token_id]
        if not answer:
            raise EngineError(f"answer {answer_text!r} has no tokens")
        seqs.append(list(prompt) + list(answer))
        starts.append(len(prompt))
    return seqs, starts


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
