"""The LM stage: evolve merges of a Japanese and a math sibling of Gemma 3 270M and score them held out.

Mirrors EvoLLM-JP (Akiba et al. 2024, Table 1) in miniature on a real pretrained base: sources (the base,
a JA sibling and a MATH sibling, LoRA fine-tunes shipped as adapters and materialised as plain HF dirs),
default-setting baselines (uniform average, task arithmetic, TIES, DARE-TIES) and the models evolved in
PS, DFS and PS+DFS are all asked the target task — two-step arithmetic word problems asked in Japanese
(:mod:`tsugiki.demo.lm.word_problems`) — on held-out problems whose numbers and wording no training and no
search saw, and scored with the benchmark code's MGSM metrics (``acc``; ``acc_ja``: correct *and*
answered in Japanese, the headline). Search fitness is the seed's: acc_ja of greedy answers on a disjoint
fitness split, with a validation split scored for each generation's best.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tsugiki.benchmarks import stats
from tsugiki.benchmarks.results import slug
from tsugiki.demo.lm import word_problems as wp
from tsugiki.demo.lm.search import (
    BASELINES,
    EN_TEMPLATE,
    ENGINE_MAX_LEN,
    FULL,
    HEADLINE,
    JA_TEMPLATE,
    MAX_NEW_TOKENS,
    QUICK,
    TF_SCALE,
    LMBudget,
    dfs_config,
    ps_config,
    ps_dfs_config,
    write_data,
)
from tsugiki.demo.stage import (
    Figure,
    Row,
    Sample,
    SeedVerdict,
    StageContext,
    StageResult,
    Table,
    baseline_recipe,
    merge_recipe,
    run_search,
    seeds_sentence,
    store_shared,
)
from tsugiki.engines import EngineOptions
from tsugiki.engines.resident import ResidentEngine
from tsugiki.evolution.problems import KeptProblem
from tsugiki.fileio import atomic_write


# ----------------------------------------------------------------------------- evaluation
def evaluate(model_dir: Path, test: list[dict], *, batch_size: int = 25, english: bool = True,
             engine: ResidentEngine | None = None) -> dict[str, Any]:
    """Held-out MGSM-style scores of one model (greedy, up to the first newline): the Japanese problems
    (``acc``, ``acc_ja``) and, with ``english``, to show the math skill without the change of language, the
    same numbers asked in the MATH sibling's own form, an English word problem (``acc_en``). ``engine``: the
    resident engine to score with (default: a transformers one for this model alone)."""
    from tsugiki.benchmarks.mgsm import score_mgsm
    from tsugiki.benchmarks.predictors import TextGenerator
    from tsugiki.evolution.data import Pair
    from tsugiki.hf_quiet import hf_progress_bars_off

    engine = engine or ResidentEngine("hf", EngineOptions(batch_size=batch_size))
    with hf_progress_bars_off(errors_only=True):
        gen = TextGenerator(model_dir, JA_TEMPLATE, stop=["\n"], max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size,
                            name=model_dir.name, threads=2, engine=engine.load(model_dir))
    answers = [t["answer"] for t in test]
    ja = gen.predict([Pair(t["question"], t["answer"], t["id"]) for t in test])
    ja_scores = score_mgsm(ja, answers, extraction="sakana", language_filter=True).scores
    estimates = {"acc_ja": ja_scores["acc_ja"], "acc": ja_scores["acc"]}
    en = []
    if english:
        en = gen.for_prompt(EN_TEMPLATE, ["\n"], MAX_NEW_TOKENS).predict(
            [Pair(t["en_question"], t["answer"], t["id"]) for t in test])
        estimates["acc_en"] = score_mgsm(en, answers, extraction="sakana", language_filter=False).scores["acc"]
    metrics = {k: e.value for k, e in estimates.items()}
    return {"metrics": metrics, "ci": {k: [e.low, e.high] for k, e in estimates.items()},
            "se": {k: stats.binomial_se(v, len(test)) for k, v in metrics.items()}, "n": len(test), "responses": ja,
            "en_responses": en}


@dataclass
class Scored:
    """A model the stage scores: a dir kept in the run dir, or (``build`` set) a transient one, made from its
    ``recipe`` only when it must be scored and deleted when the stage ends (the recipe stays: the run dir
    keeps what every model is, not a GB of weights per baseline and non-PS search)."""

    name: str
    role: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    recipe: Path | None = None
    build: Callable[[], Any] | None = None

    def ready(self) -> Path:
        if self.build is not None and not (self.path / "config.json").exists():
            self.build()
        return self.path


# ----------------------------------------------------------------------------- the stage
KINDS = ("PS", "DFS", "PS+DFS")


def prepare_sources(ctx: StageContext, *, adapters: Path | None = None,
                    names: tuple[str, ...] = ("ja", "math")) -> dict[str, str]:
    """The real base (imported from the GGUF package once) and the siblings ``names`` materialised from their
    adapters (the shipped ones, or those ``--rebuild-models`` trained again) as plain HF dirs in
    ``ctx.out/models`` (reused when there)."""
    from tsugiki.demo.base_model import real_base
    from tsugiki.demo.lm.siblings import SHIPPED_ADAPTERS, materialise

    adapters = Path(adapters or SHIPPED_ADAPTERS)
    ctx.say("[lm] the real base: Gemma 3 270M from its GGUF package (imported once, then cached) …")
    base = real_base(progress=ctx.progress)
    ctx.say(f"[lm] materialising the {' and '.join(n.upper() for n in names)} sibling(s) (base + LoRA adapter from "
            f"{adapters}) …")
    models = ctx.out / "models"
    return {"base": str(base), **{n: str(store_shared(materialise(base, adapters / n, models / n), ctx.run_dir))
                                  for n in names}}


def run_lm_stage(ctx: StageContext, *, adapters: Path | None = None, budget: LMBudget | None = None,
                 seeds: tuple[int, ...] | None = None, mgsm_ja: bool = False,
                 dfs: bool = False) -> tuple[StageResult, dict[str, Path]]:
    """Materialise the siblings, evaluate sources and baselines, run the searches for each search seed and
    evaluate their best candidates; with ``mgsm_ja``, also score the sources and each seed's best evolved
    model on the real MGSM-JA (:func:`mgsm_ja_table`); with ``dfs``, the DFS and PS+DFS searches too (the
    default budget runs PS only). Returns the stage result and the evolved models' dirs by row name."""
    t0 = time.perf_counter()
    budget = dataclasses.replace(budget or (QUICK if ctx.quick else FULL), engine=ctx.engine)
    if seeds is not None:
        budget = dataclasses.replace(budget, seeds=tuple(seeds))
    if dfs:
        budget = dataclasses.replace(budget, spaces=KINDS)
    out = ctx.out
    sources = prepare_sources(ctx, adapters=adapters)
    data = write_data(out / "data", budget)
    test = [json.loads(line) for line in data["test"].read_text(encoding="utf-8").splitlines()]

    candidates = [Scored(_SOURCE_NAMES[name], "source", Path(sources[name])) for name in ("base", "ja", "math")]
    transient = out / "transient"  # models built from their recipes to be scored, deleted at the end
    for name, recipe in BASELINES.items():
        path = baseline_recipe(name, recipe, sources, out / "baselines" / f"{slug(name)}.yaml")
        candidates.append(Scored(name, "baseline", transient / slug(name), recipe=path,
                                 build=functools.partial(merge_recipe, path, transient / slug(name), sources)))

    runs: list[dict[str, Any]] = []
    with KeptProblem() as kept:  # the PS searches of every seed share one loaded problem (models, engine)
        for seed in budget.seeds:
            ctx.say(f"[lm] search seed {seed}: {', '.join(budget.spaces)} (CMA-ES, population {budget.population}, "
                    f"{budget.generations} generations) …")
            done: dict[str, dict[str, Any]] = {}
            # models are built from their recipes when scored, and deleted after; the PS model is kept when the
            # PS+DFS search reads it
            if "PS" in budget.spaces:
                keep_ps = "PS+DFS" in budget.spaces
                done["PS"] = run_search(ps_config(sources, data, seed, budget), out / "runs" / f"ps-s{seed}",
                                        (out / "evolved" if keep_ps else transient) / f"ps-s{seed}", ctx.progress,
                                        keep=kept, export=keep_ps)
                if "DFS" in budget.spaces:
                    kept.close()  # the DFS searches load models of their own
                if keep_ps:
                    store_shared(done["PS"]["model"], ctx.run_dir)
            if "DFS" in budget.spaces:
                done["DFS"] = run_search(dfs_config(sources, data, seed, budget), out / "runs" / f"dfs-s{seed}",
                                         transient / f"dfs-s{seed}", ctx.progress, export=False)
            if "PS+DFS" in budget.spaces:
                done["PS+DFS"] = run_search(ps_dfs_config(sources, data, seed, budget, done["PS"]["model"]),
                                            out / "runs" / f"ps-dfs-s{seed}", transient / f"ps-dfs-s{seed}", ctx.progress,
                                            export=False)
            for label, run in done.items():
                run.update(kind=label, seed=seed)
                runs.append(run)
                candidates.append(Scored(f"evolved {label} (seed {seed})", "evolved", run["model"],
                                         {"search_seed": seed, "kind": label, "fitness": run["fitness"]},
                                         recipe=run["run_dir"] / "best.yaml", build=run["build"]))

    ctx.say(f"[lm] held-out evaluation of {len(candidates)} models on {len(test)} problems (Japanese and English, "
            f"engine {budget.engine}) …")
    rows, samples = [], []
    resident = ResidentEngine(budget.engine, engine_options(budget))
    for c in _progress(candidates, ctx.progress, "held-out"):
        s = _cached_evaluation(c, test, out / "eval" / f"{slug(c.name)}.json", budget.eval_batch, resident)
        rows.append(Row(c.name, c.role, s["metrics"], s["ci"], {**c.extra, "se": s["se"], "n": s["n"]}))
        for t, r in list(zip(test, s["responses"]))[:3]:
            samples.append(Sample(c.name, wp.JA_PROMPT.format(q=t["question"]), r, t["answer"]))

    result = StageResult(stage="lm", headline=HEADLINE, rows=rows, title="Japanese math LM (EvoLLM-JP in miniature, Gemma 3 270M)")
    result.seeds = seed_verdicts(rows, budget.seeds)
    result.verdict = verdict(rows, result.seeds)
    result.tables = [search_table(runs)]
    if mgsm_ja:
        by_name = {c.name: c for c in candidates}
        chosen = [r.model for r in rows if r.role == "source"]
        chosen += [best.model for seed in budget.seeds if (best := _best_evolved(rows, seed)) is not None]
        ctx.say(f"[lm] the real MGSM-JA (250 problems, free generation) for {len(chosen)} models (minutes each) …")
        result.tables.append(mgsm_ja_table([(m, by_name[m]) for m in chosen], out / "mgsm-ja", ctx.progress,
                                           engine=resident))
    resident.close()
    shutil.rmtree(transient, ignore_errors=True)  # every transient model was built under it
    result.figures = _figures(ctx, runs)
    result.samples = samples
    result.notes = _notes(budget, len(test))
    result.models = {c.name: ctx.rel(c.path) for c in candidates if c.role == "evolved" and c.build is None}
    result.recipes = {c.name: ctx.rel(c.recipe) for c in candidates if c.build is not None}
    result.seconds = time.perf_counter() - t0
    return result, {c.name: c.path for c in candidates if c.role == "evolved" and c.build is None}


def engine_options(budget: LMBudget) -> EngineOptions:
    return EngineOptions(batch_size=budget.eval_batch, max_model_len=ENGINE_MAX_LEN if budget.engine == "vllm" else None)


def _cached_evaluation(model: Scored, test: list[dict], path: Path, batch_size: int,
                       engine: ResidentEngine) -> dict[str, Any]:
    """:func:`evaluate`, kept in the run dir so that a resumed demo does not score a model twice (an engine other
    than ``hf`` is part of the key: its scores differ in the last digits, and vLLM's default dtype is bfloat16)."""
    english = model.role == "source"
    key = {"model": str(model.recipe or model.path), "test": [t["id"] for t in test], "english": english,
           **({} if engine.name == "hf" else {"engine": engine.name})}
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["scores"]
    scores = evaluate(model.ready(), test, batch_size=batch_size, english=english, engine=engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"key": key, "scores": scores}, ensure_ascii=False))
    return scores


# The real MGSM-JA: the seed's prompt and stop strings, greedy; 256 new tokens instead of the seed's 1024 (a
# 270 M model that has not stopped by then is looping; 1024 would take ~4x as long on 2 cores).
MGSM_MAX_NEW_TOKENS = 256
MGSM_BATCH = 25


def mgsm_ja_table(models: list[tuple[str, Path | Scored]], out: Path, progress: bool = False, *,
                  limit: int | None = None, engine: ResidentEngine | None = None) -> Table:
    """Score each (row name, model dir) on the vendored MGSM-JA with the benchmark code (`tsugiki eval
    mgsm-ja`'s path: the seed's Japanese CoT prompt, free greedy generation, the seed's ``sakana``
    extraction) and tabulate acc_ja and acc with their 95% bootstrap intervals and the time each took.
    Responses and scores are kept in ``out/<row>.json``, so a resumed run does not score a model twice."""
    from tsugiki.benchmarks.runner import evaluate as run_benchmark
    from tsugiki.benchmarks.runner import get_spec, text_generator

    spec = get_spec("mgsm-ja")
    engine = engine or ResidentEngine("hf", EngineOptions(batch_size=MGSM_BATCH))
    body, n = [], 0
    for name, model in models:
        model = model if isinstance(model, Scored) else Scored(name, "", Path(model))
        cache = out / f"{slug(name)}.json"
        key = {"model": str(model.recipe or model.path), "max_new_tokens": MGSM_MAX_NEW_TOKENS, "limit": limit,
               **({} if engine.name == "hf" else {"engine": engine.name})}
        record = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
        if record.get("key") != key:
            t0 = time.perf_counter()
            path = model.ready()
            gen = text_generator(spec, path, max_new_tokens=MGSM_MAX_NEW_TOKENS, batch_size=MGSM_BATCH, name=name,
                                 threads=2, engine=engine.load(path))
            res = run_benchmark(spec, gen, limit=limit, metric_options={"extraction": "sakana"}, progress=progress)
            record = {"key": key, "seconds": round(time.perf_counter() - t0, 1), "n": res.n,
                      "scores": {k: [e.value, e.low, e.high] for k, e in res.scores.items()},
                      "responses": [r["prediction"] for r in res.items]}
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(cache, json.dumps(record, ensure_ascii=False))
        n = record["n"]
        cells = [f"{v:.1f} [{lo:.1f}, {hi:.1f}]" for v, lo, hi in (record["scores"][k] for k in ("acc_ja", "acc"))]
        body.append([name, *cells, f"{record['seconds']:.0f}"])
    return Table(f"The real MGSM-JA ({n} problems; value [95% bootstrap CI], %)",
                 ["model", "acc_ja", "acc", "seconds"], body,
                 note=f"The seed's Japanese chain-of-thought prompt and stop strings, greedy, at most "
                      f"{MGSM_MAX_NEW_TOKENS} new tokens (the seed: 1024), the seed's answer extraction; the "
                      "vendored MGSM-JA test set (`tsugiki eval mgsm-ja` scores the same way).")


def search_seeds(seed: int, quick: bool) -> tuple[int, ...]:
    """The search seeds of a demo run with ``--seed seed``: as many as the budget has, starting at ``seed``."""
    return tuple(range(seed, seed + len((QUICK if quick else FULL).seeds)))


_SOURCE_NAMES = {"base": "base (Gemma 3 270M)", "ja": "JA sibling", "math": "MATH sibling"}


def _progress(items: list, enabled: bool, desc: str):
    from tsugiki.progress import progress_bar

    return progress_bar(items, desc=desc, disable=not enabled, leave=False, unit="model")


def _best_evolved(rows: list[Row], seed: int) -> Row | None:
    evolved = [r for r in rows if r.role == "evolved" and r.extra.get("search_seed") == seed]
    return max(evolved, key=lambda r: r.metrics[HEADLINE], default=None)


def margin_in_se(best: Row, other: Row) -> float:
    """(best − other) on the headline in units of the two scores' combined binomial SE."""
    return stats.margin_in_se(best.metrics[HEADLINE], best.extra["se"][HEADLINE], other.metrics[HEADLINE],
                              other.extra["se"][HEADLINE])


def seed_verdicts(rows: list[Row], seeds: tuple[int, ...]) -> list[SeedVerdict]:
    """Per search seed: its best evolved model's margin over every source and baseline on the headline, in
    units of the two held-out scores' combined binomial SE."""
    others = [r for r in rows if r.role != "evolved"]
    return [SeedVerdict(seed, best.model, {o.model: margin_in_se(best, o) for o in others}, "binomial SE")
            for seed in seeds if (best := _best_evolved(rows, seed)) is not None]


def verdict(rows: list[Row], seeds: list[SeedVerdict]) -> str:
    """Plain words: in each search seed, does the best evolved model beat every source and baseline on the
    headline metric by ≥ 2 SE (the seed paper's claim, at this scale)?"""
    by_model = {r.model: r for r in rows}
    best_other = max((r for r in rows if r.role != "evolved"), key=lambda r: r.metrics[HEADLINE])
    parts = [f"seed {s.seed}: {s.model} {by_model[s.model].metrics[HEADLINE]:.1f} vs best other "
             f"{best_other.model} {best_other.metrics[HEADLINE]:.1f} ({min(s.margins.values(), default=math.nan):+.1f} SE)"
             for s in seeds]
    holds = all(s.won for s in seeds)
    return (seeds_sentence(seeds, HEADLINE) + (" — the seed paper's claim holds here." if holds else
                                              " — the seed paper's claim does NOT fully hold at this scale.")
            + " " + "; ".join(parts) + ".")


def search_table(runs: list[dict[str, Any]]) -> Table:
    body = [[r["kind"], str(r["seed"]), f"{r['fitness']:.3f}" if r["fitness"] is not None else "—",
             str(r["evaluations"]), f"{r['seconds']:.0f}"] for r in runs]
    return Table("Searches (CMA-ES)", ["space", "seed", "best fitness", "evaluations", "seconds"], body)


def _figures(ctx: StageContext, runs: list[dict[str, Any]]) -> list[Figure]:
    """Each search's plots (fitness and validation curves; the PS heatmap or the DFS path and W)."""
    figs = []
    for run in runs:
        for png, what in (("fitness.png", "fitness (search) and validation curves"),
                          ("ps_heatmap.png", "PS parameters per model and layer group"),
                          ("dfs_path.png", "DFS inference path and scaling matrix W")):
            p = Path(run["run_dir"]) / "plots" / png
            if p.exists():
                figs.append(Figure(ctx.rel(p), f"{run['kind']} seed {run['seed']}: {what}"))
    return figs


def _notes(budget: LMBudget, n_test: int) -> list[str]:
    from tsugiki.demo.lm.siblings import JA, MATH

    example = wp.target_items("test", 1)[0]
    return [
        "Sources: google/gemma-3-270m (the pretrained base, from a Q4_K_M GGUF, dequantised; Gemma terms of use "
        f"apply), a JA sibling (LoRA r={JA.rank}, {JA.steps} steps on Japanese instructions: facts, descriptive "
        "questions, one-step sums; never a word problem) and a MATH sibling "
        f"(LoRA r={MATH.rank}, {MATH.steps} steps on English two-step word problems with worked answers).",
        f"Target: two-step word problems asked in Japanese (e.g. {example.prompt}), {n_test} held-out problems "
        "whose numbers and templates no training and no search saw; acc_ja counts an answer only if it is correct "
        "and fastText says it is Japanese (the seed's MGSM-JA rule); acc_en asks the same numbers as English "
        "word problems (the MATH sibling's own form).",
        f"Held-out scores: value ± binomial SE (%), n = {n_test}; evolved rows name their search seed "
        f"({', '.join(map(str, budget.seeds))}); sources and baselines do not depend on it.",
        "Baselines use default settings (weights 1, density 0.5); the evolved models' settings come from CMA-ES "
        f"(population {budget.population}; PS {budget.generations} generations"
        + (f", DFS and PS+DFS {budget.dfs_generations or budget.generations}). " if "DFS" in budget.spaces else "). ")
        + _fitness_note(budget),
    ] + ([] if "DFS" in budget.spaces else [
        "DFS and PS+DFS are not searched in this run (tsugiki demo --dfs adds them): at this scale no layer path "
        "measured so far answers these problems (acc_ja 0 for every path with acc_ja as fitness; with the worked "
        "answer's log-likelihood as fitness, 30 paths, none above the JA sibling's own: 1.0 % held out), and they run "
        "on transformers."])


def _fitness_note(budget: LMBudget) -> str:
    dfs = ("" if budget.dfs_fitness != "loglik" or "DFS" not in budget.spaces else
           f" DFS and PS+DFS fitness: the mean log-probability of the worked Japanese answer and EOS, teacher-forced, "
           f"on {budget.fitness_n} fitness problems (acc_ja gives every path 0: no signal).")
    return _ps_fitness_note(budget) + dfs


def _ps_fitness_note(budget: LMBudget) -> str:
    if budget.fitness == "teacher_forced":
        return (f"Fitness: teacher-forced exact match (every answer token and EOS the argmax, so greedy decoding would "
                f"write it) of the reference ` a + b = c, c - d = e。答えは e です。` on "
                f"{TF_SCALE * budget.fitness_n} problems of a disjoint fitness split, plus 0.1 × the mean answer-token "
                f"probability; the validation curve in each fitness plot is a third split ({TF_SCALE * budget.validation_n} "
                "problems).")
    return (f"Fitness, as in the seed: acc_ja of greedy answers on {budget.fitness_n} problems of a disjoint fitness "
            f"split (other numbers, other wording); the validation curve in each fitness plot is a third split "
            f"({budget.validation_n} problems).")
