"""Fitness functions: a registry of built-ins plus any callable named ``module:function`` or
``path/to/file.py:function``.

Every fitness function has the signature ``fn(ctx: EvalContext, data: list[Pair] | None, **args) ->
float`` and is maximised (higher is better). ``ctx`` carries the decoded parameters, the split being
scored (``fitness`` or ``validation``), a per-candidate seed and, for model spaces, the candidate model
(a Hugging Face causal LM, in eval mode) and its tokenizer. A function that raises, or returns NaN or
a non-number, fails its candidate: it gets the worst fitness and the run goes on.

Functions that score items one by one also have a per-item form (``FitnessSpec.items``; for your own
function, an ``items`` attribute with the same signature returning one score per data item, whose mean
is the function's value, and optionally ``item_range(args) -> (low, high)``): ``fitness.estimate`` needs
it (:mod:`tsugiki.evolution.calibrate`). Every built-in with data has one.

Built-ins (no benchmark data needed; teacher forcing, as in the toy feasibility runs that tuned
DARE-TIES with CMA-ES after Akiba et al. 2024, arXiv:2403.13187):

- ``teacher_forced_accuracy``: fraction of pairs whose answer tokens are all the greedy next-token
  predictions given the prompt and the answer so far, plus ``prob_weight`` x the mean per-pair answer
  probability (geometric mean over the answer's tokens); ``prob_weight`` breaks ties between candidates
  that solve the same pairs.
- ``answer_loglik``: mean over pairs of the mean log-probability of the answer tokens.
- ``exact_match``: fraction of pairs whose greedy continuation is the answer (generated; ``stop``,
  ``max_new_tokens``): ``teacher_forced_accuracy`` with ``append_eos`` and no ``prob_weight``, by generation.
- ``neg_sphere``: ``-sum((x - center)^2)`` over the parameters (no model; checks the optimiser).
- ``weighted_sum``: ``sum(weight * f(ctx, data, **args))`` over ``terms: [{function, weight, args}]``.

Benchmark-backed (:mod:`tsugiki.benchmarks`; data items ``{id, question, answer[, image]}``, which
the loader keeps disjoint by id and text from the config's ``test`` set):

- ``mgsm_accuracy``: MGSM-style accuracy (0..1) of greedy generations; args ``extraction``
  (robust | sakana), ``max_new_tokens``, ``template`` (ja | en | "{input}" string), ``stop``,
  ``batch_size``, ``metric`` (acc | acc_ja).
- ``lm_eval``: an lm-evaluation-harness task's score, per doc (:mod:`tsugiki.benchmarks.harness`); args ``tasks``,
  ``include_path`` (a folder of task YAMLs), ``metric``, ``num_fewshot``, ``limit``, ``batch_size``; its items are
  the tasks' docs (``FitnessSpec.pairs``), so it needs no ``data:``.
- ``rougeL_ja``: Japanese ROUGE-L (0..1) of a VLM's VQA answers; args ``template``,
  ``max_new_tokens``, ``num_beams``, ``repetition_penalty``, ``batch_size``, ``language_filter``, ``stop`` (cut
  each answer at the first of these strings).
- ``unet_output_mse``: an SDXL UNet's noise prediction vs a reference UNet's (:mod:`tsugiki.evolution.kinds.sdxl.unet`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from tsugiki.benchmarks import mgsm
from tsugiki.benchmarks.rouge import rouge_ja
from tsugiki.engines import Engine
from tsugiki.engines.hf import HFEngine, truncate_at_stop
from tsugiki.errors import EvolutionError
from tsugiki.evolution.data import Pair
from tsugiki.evolution.kinds.sdxl.unet import unet_output_mse
from tsugiki.registry import Registry
from tsugiki.vlm.generate import GenerationSettings, VQAPredictor

FitnessFn = Callable[..., float]


@dataclass
class EvalContext:
    params: Mapping[str, float]
    split: str = "fitness"
    seed: int = 0
    model: Any = None
    tokenizer: Any = None
    extra: dict = field(default_factory=dict)
    engine: Engine | None = None  # scores text (tsugiki.engines); holds the candidate's weights


@dataclass(frozen=True)
class FitnessSpec:
    """``items``: the function's per-item form, ``items(ctx, data, **args) -> list[float]``, one score per
    data item, whose mean is ``fn``'s value (what :mod:`tsugiki.evolution.estimate` needs); ``item_range``:
    ``item_range(args) -> (low, high)`` bounds every item score can take, ``None`` where unbounded."""

    fn: FitnessFn
    needs_model: bool = True
    doc: str = ""
    items: Callable[..., list[float]] | None = None
    item_range: Callable[[Mapping[str, Any]], tuple[float, float] | None] | None = None
    pairs: Callable[[Mapping[str, Any]], list[Pair]] | None = None  # its own items from its args (no ``data:``)


FITNESS: Registry[FitnessSpec] = Registry("fitness function")


# ------------------------------------------------------------------------------ teacher forcing
def engine_of(ctx: EvalContext) -> Engine:
    """The context's evaluation engine (the run's ``engine:``, with the candidate in it), or an ``hf``
    engine around ``ctx.model`` where the context has none (your own code building a context)."""
    if ctx.engine is None:
        ctx.engine = HFEngine(ctx.model, ctx.tokenizer)
    return ctx.engine


def answer_token_logprobs(ctx: EvalContext, pairs: Sequence[Pair], *, batch_size: int = 64,
                          append_eos: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per pair: (log-probabilities of the answer tokens, whether each is the greedy prediction)."""
    if not pairs:
        raise EvolutionError("no data pairs to score")
    return engine_of(ctx).answer_logprobs([(p.prompt, p.answer) for p in pairs], append_eos=append_eos,
                                          batch_size=batch_size)


def teacher_forced_accuracy(ctx: EvalContext, data: Sequence[Pair], *, prob_weight: float = 0.0,
                            batch_size: int = 64, append_eos: bool = False) -> float:
    scored = answer_token_logprobs(ctx, data, batch_size=batch_size, append_eos=append_eos)
    acc = sum(bool(hit.all()) for _, hit in scored) / len(scored)
    if not prob_weight:
        return acc
    prob = sum(math.exp(float(lp.mean())) for lp, _ in scored) / len(scored)
    return acc + prob_weight * prob


def teacher_forced_items(ctx: EvalContext, data: Sequence[Pair], *, prob_weight: float = 0.0,
                         batch_size: int = 64, append_eos: bool = False) -> list[float]:
    """Per pair: 1 if every answer token is the greedy prediction, plus ``prob_weight`` x its answer probability."""
    scored = answer_token_logprobs(ctx, data, batch_size=batch_size, append_eos=append_eos)
    return [float(bool(hit.all())) + (prob_weight * math.exp(float(lp.mean())) if prob_weight else 0.0)
            for lp, hit in scored]


def answer_loglik(ctx: EvalContext, data: Sequence[Pair], *, batch_size: int = 64, append_eos: bool = False) -> float:
    return sum(answer_loglik_items(ctx, data, batch_size=batch_size, append_eos=append_eos)) / len(data)


def answer_loglik_items(ctx: EvalContext, data: Sequence[Pair], *, batch_size: int = 64,
                        append_eos: bool = False) -> list[float]:
    scored = answer_token_logprobs(ctx, data, batch_size=batch_size, append_eos=append_eos)
    return [float(lp.mean()) for lp, _ in scored]


def neg_sphere(ctx: EvalContext, data: Any = None, *, center: float | Mapping[str, float] = 0.0) -> float:
    c = center if isinstance(center, Mapping) else {k: center for k in ctx.params}
    return -sum((v - float(c.get(k, 0.0))) ** 2 for k, v in ctx.params.items())


def weighted_sum(ctx: EvalContext, data: Any, *, terms: Sequence[Mapping[str, Any]]) -> float:
    """``sum(weight * function(ctx, data, **args))`` over ``terms: [{function, weight, args}]``."""
    total = 0.0
    for term in terms:
        spec = resolve_fitness(term["function"])
        total += float(term.get("weight", 1.0)) * as_fitness(spec.fn(ctx, data, **dict(term.get("args") or {})))
    return total


def weighted_sum_items(ctx: EvalContext, data: Any, *, terms: Sequence[Mapping[str, Any]]) -> list[float]:
    total = [0.0] * len(data)
    for term in terms:
        spec = resolve_fitness(term["function"])
        if spec.items is None:
            raise EvolutionError(f"weighted_sum: {term['function']} scores no items")
        w = float(term.get("weight", 1.0))
        total = [t + w * float(x) for t, x in zip(total, spec.items(ctx, data, **dict(term.get("args") or {})), strict=True)]
    return total


def _weighted_sum_range(args: Mapping[str, Any]) -> tuple[float, float] | None:
    low = high = 0.0
    for term in args.get("terms") or ():
        spec = resolve_fitness(term["function"])
        r = spec.item_range(dict(term.get("args") or {})) if spec.item_range else None
        if r is None:
            return None
        w = float(term.get("weight", 1.0))
        low, high = low + min(w * r[0], w * r[1]), high + max(w * r[0], w * r[1])
    return low, high


def exact_match(ctx: EvalContext, data: Sequence[Pair], *, max_new_tokens: int | None = None,
                stop: Sequence[str] | None = None, batch_size: int = 8) -> float:
    """Fraction of pairs whose greedy continuation of the prompt is exactly the answer (see
    :func:`exact_match_items`): what ``teacher_forced_accuracy`` with ``append_eos`` measures, scored by
    generation, which finished rows leave early (the cheaper route on vLLM: no full-vocabulary logits at
    every prompt position)."""
    return sum(exact_match_items(ctx, data, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size)) / len(data)


def exact_match_items(ctx: EvalContext, data: Sequence[Pair], *, max_new_tokens: int | None = None,
                      stop: Sequence[str] | None = None, batch_size: int = 8) -> list[float]:
    """Per pair: 1 if the greedy continuation, ended by EOS or cut before a ``stop`` string, is the answer
    (with ``stop``, an answer ending in a stop string matches the continuation cut before it), else 0.
    ``max_new_tokens`` (default: the longest answer's tokens plus one) bounds a continuation that misses."""
    if not data:
        raise EvolutionError("exact_match: no items to score")
    engine = engine_of(ctx)
    stop = list(stop or [])
    if max_new_tokens is None:
        max_new_tokens = 1 + max(len(engine.tokenizer(p.answer, add_special_tokens=False)["input_ids"]) for p in data)
    responses = engine.generate([p.prompt for p in data], stop=stop, max_new_tokens=int(max_new_tokens),
                                batch_size=int(batch_size))
    ctx.extra["responses"] = responses
    return [float(p.answer in (r, *(r + s for s in stop))) for r, p in zip(responses, data)]


# ------------------------------------------------------------------------------ benchmark-backed
MGSM_TEMPLATES = {"ja": "JA_ALPACA_COT_TEMPLATE", "en": "EN_ALPACA_COT_TEMPLATE"}


def mgsm_accuracy(ctx: EvalContext, data: Sequence[Pair], *, extraction: str = "robust", max_new_tokens: int = 256,
                  template: str = "ja", stop: Sequence[str] | None = None, batch_size: int = 8,
                  metric: str = "acc") -> float:
    """MGSM-style accuracy in [0, 1] of the candidate causal LM on ``{question, answer}`` items: greedy
    generation with the benchmark's prompt (``template``: ``ja``/``en`` = the seed's Alpaca CoT prompts,
    or any ``{input}`` string) and stop strings (default: the seed's), the number extracted with
    ``extraction`` (``robust`` or ``sakana``) and compared with the gold answer by
    :func:`tsugiki.benchmarks.mgsm.score_mgsm`. ``metric: acc_ja`` also requires a Japanese response."""

    result = _mgsm_scored(ctx, data, extraction, max_new_tokens, template, stop, batch_size, metric)
    return result.scores[metric].value / 100.0


def mgsm_items(ctx: EvalContext, data: Sequence[Pair], *, extraction: str = "robust", max_new_tokens: int = 256,
               template: str = "ja", stop: Sequence[str] | None = None, batch_size: int = 8,
               metric: str = "acc") -> list[float]:
    """Per item: 1.0 if correct (and, for ``acc_ja``, answered in Japanese), else 0.0."""
    result = _mgsm_scored(ctx, data, extraction, max_new_tokens, template, stop, batch_size, metric)
    return [float(item["correct_ja" if metric == "acc_ja" else "correct"]) for item in result.per_item]


def _mgsm_scored(ctx: EvalContext, data: Sequence[Pair], extraction: str, max_new_tokens: int, template: str,
                 stop: Sequence[str] | None, batch_size: int, metric: str) -> mgsm.MgsmResult:
    if extraction not in mgsm.EXTRACTIONS:
        raise EvolutionError(f"mgsm_accuracy: extraction must be one of {', '.join(mgsm.EXTRACTIONS)}, not {extraction!r}")
    if metric not in ("acc", "acc_ja"):
        raise EvolutionError(f"mgsm_accuracy: metric must be acc or acc_ja, not {metric!r}")
    if not data:
        raise EvolutionError("mgsm_accuracy: no items to score")
    text = getattr(mgsm, MGSM_TEMPLATES[template]) if template in MGSM_TEMPLATES else template
    if "{input}" not in text:
        raise EvolutionError(f"mgsm_accuracy: template {template!r} is neither ja, en nor a string with {{input}}")
    responses = engine_of(ctx).generate([text.format(input=p.prompt) for p in data],
                                        stop=mgsm.SEED_STOP_STRINGS if stop is None else list(stop),
                                        max_new_tokens=int(max_new_tokens), batch_size=int(batch_size))
    ctx.extra["responses"] = responses
    return mgsm.score_mgsm(responses, [p.answer for p in data], extraction=extraction, language_filter=metric == "acc_ja")


def rougeL_ja(ctx: EvalContext, data: Sequence[Pair], *, template: str = "ja-shisa-vqa", max_new_tokens: int = 64,
              num_beams: int = 1, repetition_penalty: float = 1.0, batch_size: int = 4,
              language_filter: bool = True, stop: Sequence[str] = ()) -> float:
    """Japanese ROUGE-L in [0, 1] of the candidate VLM's answers on VQA items (``{question, answer,
    image}``), scored by :func:`tsugiki.benchmarks.rouge.rouge_ja` (``rougeL_ja``: a pair counts only
    when the answer is Japanese; ``language_filter: false`` gives plain ``rougeL``). Answers come from
    :class:`tsugiki.vlm.generate.VQAPredictor` with ``template`` and the given generation settings
    (the seed used 5 beams, repetition penalty 1.5, 512 tokens; the defaults here are cheaper), each cut at
    the first of the ``stop`` strings it contains."""

    result = _rouge_scored(ctx, data, template, max_new_tokens, num_beams, repetition_penalty, batch_size, language_filter,
                           stop)
    return (result.rougeL_ja if language_filter else result.rougeL) / 100.0


def rougeL_ja_items(ctx: EvalContext, data: Sequence[Pair], *, template: str = "ja-shisa-vqa", max_new_tokens: int = 64,
                    num_beams: int = 1, repetition_penalty: float = 1.0, batch_size: int = 4,
                    language_filter: bool = True, stop: Sequence[str] = ()) -> list[float]:
    """Per item: its ROUGE-L F in [0, 1] (0 where ``language_filter`` drops a non-Japanese answer)."""
    result = _rouge_scored(ctx, data, template, max_new_tokens, num_beams, repetition_penalty, batch_size, language_filter,
                           stop)
    return [item["rougeL_ja" if language_filter else "rougeL"] / 100.0 for item in result.per_item]


def _rouge_scored(ctx: EvalContext, data: Sequence[Pair], template: str, max_new_tokens: int, num_beams: int,
                  repetition_penalty: float, batch_size: int, language_filter: bool, stop: Sequence[str] = ()):
    if not data:
        raise EvolutionError("rougeL_ja: no items to score")
    processor = ctx.extra.get("processor")
    if processor is None:
        raise EvolutionError("rougeL_ja needs a VLM candidate with its processor (a VLM PS space)")
    settings = GenerationSettings(num_beams=int(num_beams), repetition_penalty=float(repetition_penalty),
                                  max_new_tokens=int(max_new_tokens), do_sample=False)
    predictor = VQAPredictor(ctx.model, processor, template=template, batch_size=int(batch_size), settings=settings,
                             progress=False)
    answers = [truncate_at_stop(a, list(stop)).strip() for a in predictor.predict([p.load_image() for p in data], [p.prompt for p in data])]
    ctx.extra["responses"] = answers
    return rouge_ja([p.answer for p in data], answers, language_filter=language_filter)


# ------------------------------------------------------------------------------ lm-evaluation-harness
def lm_eval(ctx: EvalContext, data: Sequence[Pair], *, tasks: Sequence[str] | str, include_path: str | None = None,
            metric: str | None = None, num_fewshot: int | None = None, limit: int | None = None,
            batch_size: int = 8) -> float:
    """The mean per-doc score of lm-eval ``tasks`` (its registry, or the YAMLs in ``include_path``) answered by
    the candidate in the run's engine: lm-eval's own requests and metric (``metric``, a score name as
    ``tsugiki eval`` reports it, default each task's first; it must average over docs). The items are the tasks'
    docs (the first ``limit`` of each), ids ``lm-eval:TASK/INDEX``; with several tasks, every doc weighs the same."""
    return math.fsum(lm_eval_items(ctx, data, tasks=tasks, include_path=include_path, metric=metric,
                                   num_fewshot=num_fewshot, limit=limit, batch_size=batch_size)) / len(data)


def lm_eval_items(ctx: EvalContext, data: Sequence[Pair], *, tasks: Sequence[str] | str, include_path: str | None = None,
                  metric: str | None = None, num_fewshot: int | None = None, limit: int | None = None,
                  batch_size: int = 8) -> list[float]:
    """Per doc of ``data`` (items of :func:`lm_eval_pairs`): its score, from one lm-eval run over just those docs."""
    from tsugiki.benchmarks import harness

    names = _task_names(tasks)
    if not data:
        raise EvolutionError("lm_eval: no items to score")
    wanted: dict[str, list[int]] = {}
    keys = []
    for p in data:
        task, _, index = (p.id or "").removeprefix(harness.PREFIX).rpartition("/")
        if task not in names or not index.isdigit():
            raise EvolutionError(f"lm_eval: item {p.id!r} is not a doc of {', '.join(names)}")
        wanted.setdefault(task, []).append(int(index))
        keys.append((task, int(index)))
    every = harness.task_docs(names, include_path, limit)
    if len(data) < len(every) and harness.task_fewshot(names, include_path, num_fewshot):
        raise EvolutionError("lm_eval: few-shot tasks score only on all their docs (lm-eval draws each doc's examples "
                             "from one stream per task, so a subset would change them): no fitness.estimate here")
    scores = harness.doc_scores(engine_of(ctx), wanted, metric=metric, include_path=include_path,
                                num_fewshot=num_fewshot, batch_size=int(batch_size))
    return [scores[k] for k in keys]


def lm_eval_pairs(args: Mapping[str, Any]) -> list[Pair]:
    """The docs an ``lm_eval`` fitness scores, as items (prompt: lm-eval's text of the doc, answer: its target)."""
    from tsugiki.benchmarks import harness

    docs = harness.task_docs(_task_names(args.get("tasks")), args.get("include_path"), args.get("limit"))
    return [Pair(text, target, f"{harness.PREFIX}{task}/{i}") for task, i, text, target in docs]


def _task_names(tasks: Any) -> tuple[str, ...]:
    from tsugiki.benchmarks.harness import task_name

    names = (tasks,) if isinstance(tasks, str) else tuple(tasks) if isinstance(tasks, (list, tuple)) else ()
    if not names or not all(isinstance(t, str) and t for t in names):
        raise EvolutionError(f"lm_eval: tasks must be a task name or a list of them, not {tasks!r}")
    return tuple(task_name(t) for t in names)  # lm-eval:TASK written as tsugiki eval takes it, or TASK


_LM_EVAL_UNIT = ("acc", "acc_norm", "exact_match")  # lm-eval metrics whose per-doc scores lie in [0, 1]


def _lm_eval_range(args: Mapping[str, Any]) -> tuple[float, float] | None:
    metric = str(args.get("metric") or "").partition(",")[0]
    return (0.0, 1.0) if metric in _LM_EVAL_UNIT else None


def _unit(args: Mapping[str, Any]) -> tuple[float, float]:
    return 0.0, 1.0


# every built-in, registered here in one list (no module registers a fitness function when imported)
FITNESS.register("mgsm_accuracy", FitnessSpec(mgsm_accuracy, True, "MGSM-style accuracy of greedy generations (0..1)",
                                              mgsm_items, _unit))
FITNESS.register("rougeL_ja", FitnessSpec(rougeL_ja, True, "Japanese ROUGE-L of a VLM's VQA answers (0..1)",
                                          rougeL_ja_items, _unit))
FITNESS.register("teacher_forced_accuracy", FitnessSpec(
    teacher_forced_accuracy, True, "exact match + prob_weight x mean answer probability", teacher_forced_items,
    lambda args: (0.0, 1.0 + max(float(args.get("prob_weight", 0.0)), 0.0))))
FITNESS.register("exact_match", FitnessSpec(exact_match, True, "greedy continuation equals the answer (0..1)",
                                            exact_match_items, _unit))
FITNESS.register("answer_loglik", FitnessSpec(answer_loglik, True, "mean log-probability of the answer tokens",
                                              answer_loglik_items, None))
FITNESS.register("lm_eval", FitnessSpec(lm_eval, True, "an lm-evaluation-harness task's per-doc mean score",
                                        lm_eval_items, _lm_eval_range, pairs=lm_eval_pairs))
FITNESS.register("neg_sphere", FitnessSpec(neg_sphere, False, "-sum((x - center)^2); no model"))
FITNESS.register("weighted_sum", FitnessSpec(weighted_sum, True, "weighted sum of other fitness functions",
                                             weighted_sum_items, _weighted_sum_range))
FITNESS.register("unet_output_mse", FitnessSpec(unet_output_mse, True, "-MSE of the UNet's noise prediction vs a reference UNet"))


# ------------------------------------------------------------------------------ lookup
def names_code(name: str) -> bool:
    """Whether a fitness name is code to import (``module:function``, ``file.py:function``) rather
    than a registered name."""
    return ":" in name


def function_refs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, name) of every fitness function an evolve config's data names: the fitness and
    validation functions and their ``weighted_sum`` terms."""
    out = []
    for section in ("fitness", "validation"):
        d = data.get(section) or {}
        fn = d.get("function")
        if isinstance(fn, str):
            out.append((f"{section}.function", fn))
        terms = (d.get("args") or {}).get("terms") if fn == "weighted_sum" else None
        for i, term in enumerate(terms if isinstance(terms, list) else []):
            name = term.get("function") if isinstance(term, Mapping) else None
            if isinstance(name, str):
                out.append((f"{section}.args.terms[{i}].function", name))
    return out


def code_refs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The :func:`function_refs` that name code (``module:function``, ``file.py:function``)."""
    return [(key, name) for key, name in function_refs(data) if names_code(name)]


def resolve_fitness(name: str) -> FitnessSpec:
    """A registered name, ``package.module:function`` or ``/abs/path/file.py:function``."""
    if ":" not in name:
        return FITNESS.get(name)
    target, _, attr = name.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        mod_name = "tsugiki_fitness_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise EvolutionError(f"fitness function {name!r}: no file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise EvolutionError(f"fitness function {name!r}: cannot import {target!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise EvolutionError(f"fitness function {name!r}: {target!r} has no callable {attr!r}")
    return FitnessSpec(fn, needs_model=getattr(fn, "needs_model", True), doc=(fn.__doc__ or "").strip(),
                       items=getattr(fn, "items", None), item_range=getattr(fn, "item_range", None),
                       pairs=getattr(fn, "pairs", None))


def as_fitness(value: Any) -> float:
    """A fitness function's return value as a finite float; raises ValueError otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fitness function returned {type(value).__name__}, not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"fitness is {value}")
    return value
