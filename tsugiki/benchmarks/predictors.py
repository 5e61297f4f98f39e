"""What benchmarks call to get predictions: ``Predictor.predict(items) -> list[str]``.

Any model can be scored through this interface: a file of predictions (``PredictionsFile``), a
Python function (``CallablePredictor``), a Hugging Face causal LM generating greedily from a
prompt template (``TextGenerator``, the MGSM path), or a VLM predictor from ``tsugiki.vlm``
(``vlm_predictor``; the seed's LLaVA prompting and generation settings live there).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from tsugiki.benchmarks.items import Item
from tsugiki.benchmarks.jsonl import read_jsonl
from tsugiki.errors import BenchmarkError


@runtime_checkable
class Predictor(Protocol):
    """``name`` labels the model in results; ``predict`` returns one text per item, in order.
    An optional ``batch_size`` attribute lets the runner call ``predict`` in chunks (progress bars)."""

    name: str

    def predict(self, items: Sequence[Item]) -> list[str]: ...


def check_predictions(predictions, items: Sequence[Item], who: str) -> list[str]:
    predictions = list(predictions)
    if len(predictions) != len(items):
        raise BenchmarkError(f"{who} returned {len(predictions)} predictions for {len(items)} items")
    bad = next((i for i, p in enumerate(predictions) if not isinstance(p, str)), None)
    if bad is not None:
        raise BenchmarkError(f"{who}: prediction for item {items[bad].id} is {type(predictions[bad]).__name__}, not text")
    return predictions


class CallablePredictor:
    """Wraps ``fn(items) -> list[str]``."""

    def __init__(self, fn: Callable[[Sequence[Item]], Sequence[str]], name: str = "callable", batch_size: int | None = None):
        self.fn, self.name, self.batch_size = fn, name, batch_size

    def predict(self, items: Sequence[Item]) -> list[str]:
        return check_predictions(self.fn(items), items, self.name)


class PredictionsFile:
    """Predictions from JSONL lines ``{"id": ..., "prediction": ...}`` (``"response"`` is accepted
    for ``"prediction"``). Without ids on any line, lines are matched to items in order and the
    counts must be equal. With ids, every item needs one; ids the items do not have are an error
    unless ``allow_extra`` (e.g. when the items were limited to the first N)."""

    def __init__(self, path: str | Path, name: str | None = None, allow_extra: bool = False):
        self.path = Path(path)
        self.name = name or self.path.stem
        self.allow_extra = allow_extra
        self._by_id: dict[str, str] = {}
        self._in_order: list[str] = []
        with_ids = 0
        for lineno, row in read_jsonl(self.path):
            keys = [k for k in ("prediction", "response") if k in row]
            if len(keys) != 1:
                raise BenchmarkError(f"{self.path}:{lineno}: needs exactly one of 'prediction' or 'response'")
            text = row[keys[0]]
            if not isinstance(text, str):
                raise BenchmarkError(f"{self.path}:{lineno}: {keys[0]} must be text, got {type(text).__name__}")
            self._in_order.append(text)
            if "id" in row:
                with_ids += 1
                key = str(row["id"])
                if key in self._by_id:
                    raise BenchmarkError(f"{self.path}:{lineno}: id {key} appears twice")
                self._by_id[key] = text
        if with_ids not in (0, len(self._in_order)):
            raise BenchmarkError(f"{self.path}: {with_ids} of {len(self._in_order)} lines have an id; give all or none")
        if not self._in_order:
            raise BenchmarkError(f"{self.path}: no predictions")

    def predict(self, items: Sequence[Item]) -> list[str]:
        if not self._by_id:
            if len(self._in_order) != len(items):
                raise BenchmarkError(f"{self.path}: {len(self._in_order)} predictions for {len(items)} items "
                                     "(lines without ids are matched in order; add ids to score a subset)")
            return list(self._in_order)
        missing = [item.id for item in items if item.id not in self._by_id]
        if missing:
            raise BenchmarkError(f"{self.path}: no prediction for {len(missing)} of {len(items)} items "
                                 f"(ids {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if not self.allow_extra:
            wanted = {item.id for item in items}
            extra = [k for k in self._by_id if k not in wanted]
            if extra:
                raise BenchmarkError(f"{self.path}: {len(extra)} predictions for ids the benchmark does not have "
                                     f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
        return [self._by_id[item.id] for item in items]


_STOP_CRITERIA: dict[tuple, tuple] = {}


def stop_criteria(tokenizer, stop: Sequence[str]):
    """transformers' ``StopStringCriteria`` for ``stop`` (what ``generate(stop_strings=...)`` builds), made
    once per tokenizer backend and stop strings: building it scans the whole vocabulary (~1 s for Gemma's
    262k tokens), and the same generator runs batch after batch, model after model. Empty ``stop``: None."""
    if not stop:
        return None
    from transformers import StoppingCriteriaList
    from transformers.generation.stopping_criteria import StopStringCriteria

    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    key = (id(backend), tuple(stop))
    hit = _STOP_CRITERIA.get(key)
    if hit is None or hit[0] is not backend:  # the entry holds the backend, so its id cannot be reused
        if len(_STOP_CRITERIA) >= 8:
            _STOP_CRITERIA.pop(next(iter(_STOP_CRITERIA)))
        hit = _STOP_CRITERIA[key] = (backend, StopStringCriteria(tokenizer, list(stop)))
    return StoppingCriteriaList([hit[1]])


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` before the earliest stop string (vLLM excludes the stop string from the output)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class TextGenerator:
    """Greedy generation (no sampling, one beam) with a Hugging Face causal LM: each item's
    ``question`` is put into ``template`` (``{input}``), the continuation is cut at the first stop
    string. Prompts are left-padded in batches; the tokenizer adds its BOS as vLLM does. ``threads``
    sets torch's CPU threads while generating (default: leave torch's setting)."""

    def __init__(self, model: str | Path, template: str = "{input}", *, stop: Sequence[str] = (),
                 max_new_tokens: int = 1024, batch_size: int = 8, device: str = "cpu", dtype: str | None = None,
                 name: str | None = None, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from tsugiki.tokenizer_cache import load_tokenizer

        self.name = name or Path(str(model)).name
        self.model_ref = str(model)
        self.template, self.stop, self.max_new_tokens, self.batch_size = template, tuple(stop), max_new_tokens, batch_size
        self.device, self.threads = device, threads
        try:
            self.tokenizer = load_tokenizer(model)
            kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
            self.model = AutoModelForCausalLM.from_pretrained(str(model), **kwargs).to(device).eval()
        except (OSError, ValueError) as e:
            raise BenchmarkError(f"cannot load causal LM {model}: {e}") from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def for_prompt(self, template: str, stop: Sequence[str], max_new_tokens: int) -> "TextGenerator":
        """The same loaded model and tokenizer with another prompt, stop strings and length."""
        clone = copy.copy(self)
        clone.template, clone.stop, clone.max_new_tokens = template, tuple(stop), max_new_tokens
        return clone

    def settings(self) -> dict:
        return {"model": self.model_ref, "template": self.template, "stop": list(self.stop), "max_new_tokens": self.max_new_tokens,
                "do_sample": False, "num_beams": 1}

    def predict(self, items: Sequence[Item]) -> list[str]:
        from tsugiki.threads import torch_threads

        with torch_threads(self.threads):  # e.g. 1 for a tiny model: on a busy machine extra threads only spin
            return self._generate(items)

    def _generate(self, items: Sequence[Item]) -> list[str]:
        import torch

        out: list[str] = []
        for start in range(0, len(items), self.batch_size):
            prompts = [self.template.format(input=item.question) for item in items[start : start + self.batch_size]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                                          stopping_criteria=stop_criteria(self.tokenizer, self.stop),
                                          pad_token_id=self.tokenizer.pad_token_id)
            texts = self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.extend(truncate_at_stop(t, self.stop) for t in texts)
        return out


def vlm_predictor(model: str | Path, **options) -> Predictor:
    """A predictor for VQA items from ``tsugiki.vlm``: ``VLMPredictor.from_pretrained(model, **options)``
    (options: name, device, dtype, batch_size, and generation settings such as max_new_tokens; the
    seed's LLaVA prompt and defaults live there)."""
    try:
        from tsugiki.vlm.predictor import VLMPredictor
    except ImportError:
        raise BenchmarkError("--vlm-model needs tsugiki.vlm.predictor.VLMPredictor, which this build does not "
                             "have; score a predictions file instead") from None
    return VLMPredictor.from_pretrained(model, **options)
