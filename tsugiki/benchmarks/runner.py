"""Run one benchmark for one predictor: load items, predict, score, return a ``BenchmarkResult``.
Used by both ``pytest benchmarks/`` and ``tsugiki eval``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from tsugiki.benchmarks.predictors import Predictor, TextGenerator, check_predictions
from tsugiki.benchmarks.results import BenchmarkResult
from tsugiki.benchmarks.specs import BENCHMARKS, METRICS, BenchmarkSpec
from tsugiki.engines import Engine
from tsugiki.errors import BenchmarkError


def get_spec(benchmark: str | BenchmarkSpec) -> BenchmarkSpec:
    return BENCHMARKS.get(benchmark) if isinstance(benchmark, str) else benchmark


def resolve_source(spec: BenchmarkSpec, dataset_dir: str | Path | None) -> Path | None:
    """Where ``spec``'s data comes from under ``dataset_dir``: a folder named after the benchmark
    (``ja-vg-vqa-500``), its title (``JA-VG-VQA-500``) or, for MGSM, ``mgsm/``. ``None`` means the
    default: the hub for the VQA sets, the vendored copy for MGSM."""
    if dataset_dir is None:
        return None
    root = Path(dataset_dir)
    if not root.is_dir():
        raise BenchmarkError(f"dataset dir {root} is not a folder")
    names = [spec.name, spec.title] + (["mgsm"] if spec.kind == "math" else [])
    for name in names:
        if (root / name).exists():
            return root / name
    if spec.kind == "math":
        return None  # MGSM ships with the package
    raise BenchmarkError(f"{spec.title}: none of {', '.join(str(root / n) for n in names)} exists")


def text_generator(spec: BenchmarkSpec, model: str | Path, *, max_new_tokens: int | None = None, batch_size: int = 8,
                   device: str = "cpu", dtype: str | None = None, name: str | None = None,
                   threads: int | None = None, engine: str | Engine = "hf") -> TextGenerator:
    """A greedy generator with ``spec``'s prompt and stop strings (for the math benchmarks), on ``engine`` (a
    name, or an engine already holding ``model``)."""
    if spec.prompt is None:
        raise BenchmarkError(f"{spec.name} is not a text-generation benchmark; use a VLM or a predictions file")
    return TextGenerator(model, spec.prompt, stop=spec.stop, max_new_tokens=max_new_tokens or spec.max_new_tokens,
                         batch_size=batch_size, device=device, dtype=dtype, name=name, threads=threads, engine=engine)


def _predict(predictor: Predictor, items: Sequence, progress: bool, desc: str) -> list[str]:
    step = getattr(predictor, "batch_size", None) or len(items)
    if not progress or step >= len(items):
        return check_predictions(predictor.predict(items), items, predictor.name)
    from tsugiki.progress import progress_bar

    out: list[str] = []
    with progress_bar(total=len(items), desc=desc, unit="item") as bar:
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            out.extend(check_predictions(predictor.predict(chunk), chunk, predictor.name))
            bar.update(len(chunk))
    return out


def evaluate(benchmark: str | BenchmarkSpec, predictor: Predictor, *, source: str | Path | None = None,
             limit: int | None = None, metric_options: dict | None = None, progress: bool = False) -> BenchmarkResult:
    """Score ``predictor`` on ``benchmark`` (data from ``source``, default the spec's); ``limit``
    keeps the first N items; ``metric_options`` override the spec's (e.g. ``extraction``)."""
    spec = get_spec(benchmark)
    items = spec.load(source)
    if limit is not None:
        if limit < 1:
            raise BenchmarkError(f"limit must be at least 1, not {limit}")
        items = items[:limit]
    predictions = _predict(predictor, items, progress, f"{predictor.name} / {spec.name}")
    metric = METRICS.get(spec.metric)
    options = {**spec.metric_options, **(metric_options or {})}
    scores, per_item = metric.fn(items, predictions, **options)
    scores = {k: scores[k] for k in metric.scores if k in scores}
    rows = [{"id": item.id, "question": item.question, "reference": item.answer, "prediction": pred, **extra}
            for item, pred, extra in zip(items, predictions, per_item)]
    settings = {"source": str(source) if source is not None else (spec.hub_id if spec.kind == "vqa" else "packaged"),
                "limit": limit, **options}
    if hasattr(predictor, "settings"):
        settings["generation"] = predictor.settings()
    primary = spec.primary if spec.primary in scores else next(iter(scores))  # e.g. acc when the filter is off
    return BenchmarkResult(model=predictor.name, benchmark=spec.name, title=spec.title, version=spec.version,
                           metric=spec.metric, primary=primary, higher_is_better=spec.higher_is_better,
                           scores=scores, n=len(items), settings=settings,
                           created=datetime.now(timezone.utc).isoformat(timespec="seconds"), items=rows)
