"""Which (model, benchmark) pairs to evaluate, from the options that ``pytest benchmarks/`` and
``tsugiki eval`` share: ``--model`` (causal LMs, for the math benchmarks), ``--vlm-model`` (for
the VQA benchmarks), ``--predictions`` (folders of ``<benchmark>.jsonl`` files), ``--dataset-dir``.

Each option value is ``PATH`` or ``LABEL=PATH``; the label names the leaderboard row (default:
the folder's name).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tsugiki.benchmarks import harness, runner
from tsugiki.benchmarks.predictors import PredictionsFile, Predictor, TextGenerator, vlm_predictor
from tsugiki.benchmarks.results import BenchmarkResult
from tsugiki.benchmarks.runner import resolve_source, text_generator
from tsugiki.benchmarks.specs import BENCHMARKS, BenchmarkSpec
from tsugiki.engines import EngineError, EngineOptions
from tsugiki.engines.resident import ResidentEngine
from tsugiki.errors import BenchmarkError
from tsugiki.hf_load import check_no_code

EMBEDDED_MODEL = "tiny-llama"  # the label of the tiny random LM the default run builds


@dataclass(frozen=True)
class Case:
    """One model on one benchmark: a built-in one scored from a predictor's answers, or an lm-eval task
    (``lm-eval:TASK``) that lm-eval runs with the model's engine (``harness_run``)."""

    model: str
    benchmark: str
    source: Path | None
    predictor: Callable[[], Predictor] | None = field(default=None, compare=False, repr=False)  # built on first use
    harness_run: Callable[[int | None], BenchmarkResult] | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.model}-{self.benchmark}"

    def evaluate(self, *, limit: int | None = None, extraction: str | None = None,
                 progress: bool = False) -> BenchmarkResult:
        """Score the case (``extraction``: MGSM's answer extraction, for the benchmarks that use it)."""
        if self.harness_run is not None:
            return self.harness_run(limit)
        options = {"extraction": extraction} if extraction and BENCHMARKS.get(self.benchmark).metric == "mgsm" else None
        return runner.evaluate(self.benchmark, self.predictor(), source=self.source, limit=limit,
                               metric_options=options, progress=progress)


def labelled(value: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (label: the path's last part)."""
    label, sep, path = value.partition("=")
    if not sep or not label or "/" in label:
        label, path = "", value
    p = Path(path).expanduser()
    return label or p.resolve().name, p


def model_source(option: str, value: str) -> tuple[str, Path]:
    """:func:`labelled` for a model to load, refused in one line (before anything loads) when its path is
    neither a folder nor a hub id."""
    from tsugiki.merging.checkpoint import HUB_ID

    label, path = labelled(value)
    if not path.is_dir() and (path.exists() or not HUB_ID.match(str(path))):
        raise BenchmarkError(f"{option} {value}: {'not a folder' if path.exists() else 'no such folder'} (and not a hub id)")
    return label, path


@dataclass
class GenerationOptions:
    max_new_tokens: int | None = None  # None: the benchmark's (the seed's 1024 for MGSM)
    batch_size: int = 8
    device: str = "cpu"
    dtype: str | None = None
    threads: int | None = None  # torch CPU threads while generating (None: torch's default)
    engine: str = "hf"  # what generates text for the causal LMs (tsugiki.engines): hf or vllm


class _LazyGenerators:
    """One engine for all the causal LMs (:class:`~tsugiki.engines.resident.ResidentEngine`: a model with the
    running one's shapes is swapped in, not loaded again), re-prompted per benchmark."""

    def __init__(self, gen: GenerationOptions):
        self.gen = gen
        self.resident = ResidentEngine(gen.engine, EngineOptions(dtype=gen.dtype, device=gen.device,
                                                                 batch_size=gen.batch_size))

    def engine(self, path: Path):
        try:
            return self.resident.load(path)
        except EngineError as e:
            raise BenchmarkError(str(e)) from None

    def get(self, spec: BenchmarkSpec, path: Path, label: str) -> TextGenerator:
        return text_generator(spec, path, max_new_tokens=self.gen.max_new_tokens, batch_size=self.gen.batch_size,
                              name=label, threads=self.gen.threads, engine=self.engine(path))

    def harness(self, task: str, path: Path, label: str, include_path: str | None, limit: int | None) -> BenchmarkResult:
        """lm-eval's run of ``task`` with the model at ``path`` in the resident engine."""
        from tsugiki.threads import torch_threads

        engine = self.engine(path)
        with torch_threads(self.gen.threads):
            out = harness.evaluate_tasks(engine, [task], include_path=include_path, limit=limit,
                                         batch_size=self.gen.batch_size)
        settings = {"limit": limit, "include_path": include_path, "generation": engine.describe()}
        results = harness.to_results(out, label, settings)
        return next(r for r in results if r.benchmark == harness.PREFIX + task)


def select_cases(benchmarks: Sequence[str] | None = None, *, models: Sequence[str] = (), vlm_models: Sequence[str] = (),
                 predictions: Sequence[str] = (), dataset_dir: str | Path | None = None, limit: int | None = None,
                 generation: GenerationOptions | None = None, lm_eval_include: str | Path | None = None) -> list[Case]:
    """All cases: every model on every selected benchmark of its kind, every predictions folder on
    the selected benchmarks it has a file for (all of them when ``benchmarks`` names them); every causal LM
    on every ``lm-eval:TASK`` named (lm-eval's registry, or the YAMLs in ``lm_eval_include``)."""
    explicit = benchmarks is not None and len(benchmarks) > 0
    tasks = [harness.task_name(b) for b in benchmarks or () if harness.is_task(b)]
    builtin = [b for b in benchmarks or () if not harness.is_task(b)]
    specs = [BENCHMARKS.get(b) for b in builtin] if explicit else [BENCHMARKS.get(b) for b in BENCHMARKS.names()]
    include = str(Path(lm_eval_include).resolve()) if lm_eval_include is not None else None
    if include is not None and not Path(include).is_dir():
        raise BenchmarkError(f"--lm-eval-include {lm_eval_include}: not a folder")
    if tasks:
        harness.check_tasks(tasks, include)  # a misnamed task fails before any model loads
    if not (models or vlm_models or predictions):
        raise BenchmarkError("nothing to evaluate: give --model, --vlm-model or --predictions")
    sources = {}
    cases: list[Case] = []
    gen = generation or GenerationOptions()
    generators = _LazyGenerators(gen)
    vlm_options = {"device": gen.device, "dtype": gen.dtype, "batch_size": gen.batch_size,
                   "max_new_tokens": gen.max_new_tokens}

    def source(spec: BenchmarkSpec) -> Path | None:
        if spec.name not in sources:
            sources[spec.name] = resolve_source(spec, dataset_dir)
        return sources[spec.name]

    lms = [model_source("--model", v) for v in models]  # every model is checked before any is evaluated
    vlms = [model_source("--vlm-model", v) for v in vlm_models]
    for label, path in lms:
        check_no_code(path)  # before anything is evaluated
        for spec in (s for s in specs if s.kind == "math"):
            cases.append(Case(label, spec.name, source(spec), lambda s=spec, p=path, l=label: generators.get(s, p, l)))
        for task in tasks:
            cases.append(Case(label, harness.PREFIX + task, None, harness_run=lambda n, t=task, p=path, l=label:
                              generators.harness(t, p, l, include, n)))
    if vlm_models and gen.engine != "hf":  # vLLM's LLaVA needs torchvision, which does not load on every machine
        print(f"note: VLMs are scored with transformers (engine hf); --engine {gen.engine} applies to the causal LMs",
              file=sys.stderr)
    for label, path in vlms:
        check_no_code(path)
        for spec in (s for s in specs if s.kind == "vqa"):
            cases.append(Case(label, spec.name, source(spec),
                              lambda p=path, l=label: vlm_predictor(p, **vlm_options, name=l)))
    for value in predictions:
        label, path = labelled(value)
        if path.is_file():
            files = {path.stem: path}
            label = label if "=" in value else path.resolve().parent.name
        elif path.is_dir():
            files = {f.stem: f for f in path.glob("*.jsonl")}
        else:
            raise BenchmarkError(f"--predictions {path}: no such file or folder")
        for stem in files:
            if stem not in BENCHMARKS:
                BENCHMARKS.get(stem)  # did-you-mean error for a misnamed file
        for spec in specs:
            if spec.name not in files:
                if explicit:
                    raise BenchmarkError(f"{path}: no {spec.name}.jsonl")
                continue
            f = files[spec.name]
            cases.append(Case(label, spec.name, source(spec),
                              lambda f=f, l=label: PredictionsFile(f, name=l, allow_extra=limit is not None)))
    if not cases:
        raise BenchmarkError("no benchmark matches the given models/predictions")
    ids = [c.id for c in cases]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup:
        raise BenchmarkError(f"two sources evaluate {dup}; give them different labels (LABEL=PATH)")
    return cases


def build_embedded_model(folder: str | Path) -> Path:
    """The default run's model: a tiny random Llama (char tokenizer, real HF format) built offline."""
    from tsugiki.factory import TinyLMSpec, build_tiny_lm

    return build_tiny_lm(Path(folder) / EMBEDDED_MODEL, TinyLMSpec(max_position_embeddings=2048))


def parse_min_scores(values: Sequence[str]) -> dict[tuple[str, str | None], float]:
    """``BENCH=VALUE`` (a threshold on the benchmark's primary score) or ``BENCH.SCORE=VALUE``."""
    out: dict[tuple[str, str | None], float] = {}
    for value in values:
        key, sep, number = value.partition("=")
        bench, _, score = key.strip().partition(".")
        if not sep or not bench:
            raise BenchmarkError(f"--min-score {value!r}: expected BENCHMARK=VALUE or BENCHMARK.SCORE=VALUE")
        spec = None if harness.is_task(bench) else BENCHMARKS.get(bench)  # an lm-eval task's scores are lm-eval's
        if score and spec is not None:
            from tsugiki.benchmarks.specs import METRICS

            if score not in METRICS.get(spec.metric).scores:
                raise BenchmarkError(f"--min-score {value!r}: {bench} has no score {score!r} "
                                     f"(has {', '.join(METRICS.get(spec.metric).scores)})")
        try:
            out[(bench, score or None)] = float(number)
        except ValueError:
            raise BenchmarkError(f"--min-score {value!r}: {number!r} is not a number") from None
    return out


def check_thresholds(result, thresholds: dict[tuple[str, str | None], float]) -> list[str]:
    """Messages for each threshold ``result`` misses (empty when it passes). For a lower-is-better
    score the threshold is a maximum. Benchmarks without a threshold always pass ("runs and reports")."""
    failures = []
    for (bench, score), minimum in thresholds.items():
        if bench != result.benchmark:
            continue
        name = score or result.primary
        if name not in result.scores:
            continue
        est = result.scores[name]
        missed = est.value < minimum if result.higher_is_better else est.value > minimum
        if missed:
            side = "below the minimum" if result.higher_is_better else "above the maximum"
            failures.append(f"{result.model} / {bench}: {name} = {est.value:.2f} "
                            f"(95% CI {est.low:.2f}–{est.high:.2f}, n={result.n}) is {side} {minimum:g}")
    return failures
