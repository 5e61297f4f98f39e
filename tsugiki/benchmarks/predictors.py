"""What benchmarks call to get predictions: ``Predictor.predict(items) -> list[str]``.

Any model can be scored through this interface: a file of predictions (``PredictionsFile``), a
Python function (``CallablePredictor``), a Hugging Face causal LM generating greedily from a
prompt template through an evaluation engine (``TextGenerator``, the MGSM path), or a VLM predictor from ``tsugiki.vlm``
(``vlm_predictor``; the seed's LLaVA prompting and generation settings live there).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from tsugiki.benchmarks.items import Item
from tsugiki.benchmarks.jsonl import read_jsonl
from tsugiki.engines import Engine, EngineError, EngineOptions, open_engine
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


class TextGenerator:
    """Greedy generation (no sampling, one beam) with a causal LM through an evaluation engine
    (:mod:`tsugiki.engines`: ``hf`` transformers, ``vllm``): each item's ``question`` is put into
    ``template`` (``{input}``), the continuation is cut before the first stop string. The tokenizer adds
    its BOS. ``threads`` sets torch's CPU threads while generating (default: leave torch's setting). ``engine``:
    an engine name, or an engine already holding ``model``."""

    def __init__(self, model: str | Path, template: str = "{input}", *, stop: Sequence[str] = (),
                 max_new_tokens: int = 1024, batch_size: int = 8, device: str = "cpu", dtype: str | None = None,
                 name: str | None = None, threads: int | None = None, engine: str | Engine = "hf",
                 engine_options: EngineOptions | None = None):
        self.name = name or Path(str(model)).name
        self.model_ref = str(model)
        self.template, self.stop, self.max_new_tokens, self.batch_size = template, tuple(stop), max_new_tokens, batch_size
        self.threads = threads
        if isinstance(engine, Engine):  # already holding ``model`` (a ResidentEngine's)
            self.engine = engine
            return
        options = engine_options or EngineOptions(dtype=dtype, device=device, batch_size=batch_size)
        try:
            self.engine = open_engine(engine, model, options)
        except EngineError as e:
            raise BenchmarkError(str(e)) from None

    def for_prompt(self, template: str, stop: Sequence[str], max_new_tokens: int) -> "TextGenerator":
        """The same engine (loaded model and tokenizer) with another prompt, stop strings and length."""
        clone = copy.copy(self)
        clone.template, clone.stop, clone.max_new_tokens = template, tuple(stop), max_new_tokens
        return clone

    def settings(self) -> dict:
        return {"model": self.model_ref, "template": self.template, "stop": list(self.stop), "max_new_tokens": self.max_new_tokens,
                "do_sample": False, "num_beams": 1, **self.engine.describe()}

    def predict(self, items: Sequence[Item]) -> list[str]:
        from tsugiki.threads import torch_threads

        prompts = [self.template.format(input=item.question) for item in items]
        with torch_threads(self.threads):  # e.g. 1 for a tiny model: on a busy machine extra threads only spin
            return self.engine.generate(prompts, stop=self.stop, max_new_tokens=self.max_new_tokens)


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
