"""The LM stage: evolve merges of a Japanese and a math sibling (PS, DFS, PS+DFS) and score them held out.

Mirrors EvoLLM-JP (Akiba et al. 2024, Table 1) at tiny scale: sources, default-setting baselines (uniform
average, task arithmetic, TIES, DARE-TIES) and the evolved models are all asked the target task — the math
sibling's harder skill asked in Japanese — on a held-out split no search ever saw, and scored with the
benchmark code's MGSM metrics (``acc``; ``acc_ja``: correct *and* answered in Japanese, the headline).
Searches run once per search seed; their fitness is teacher-forced on a disjoint fitness split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsugiki.benchmarks.jsonl import write_jsonl
from tsugiki.benchmarks.results import slug
from tsugiki.demo import lm_data
from tsugiki.demo.lm_models import SHIPPED_BASE, SiblingRecipe, train_sibling
from tsugiki.demo.stage import Figure, Row, Sample, StageContext, StageResult, Table
from tsugiki.demo.world import EN_FORMAT, JA_FORMAT

HEADLINE = "acc_ja"
JA_TEMPLATE = JA_FORMAT.replace("{q}", "{input}")
EN_TEMPLATE = EN_FORMAT.replace("{q}", "{input}")
DEFAULT_DESIGN: lm_data.Design = "steps"


@dataclass(frozen=True)
class LMBudget:
    ja: SiblingRecipe
    math: SiblingRecipe
    fitness_n: int
    validation_n: int
    test_n: int
    population: int
    generations: int
    seeds: tuple[int, ...]
    workers: int = 1  # candidate evaluations in parallel processes (same results as serial)


FULL = LMBudget(ja=SiblingRecipe("ja", steps=250, seed=1), math=SiblingRecipe("math", steps=500, seed=2),
                fitness_n=150, validation_n=60, test_n=500, population=10, generations=10, seeds=(0, 1, 2), workers=2)
QUICK = LMBudget(ja=SiblingRecipe("ja", steps=20, seed=1), math=SiblingRecipe("math", steps=20, seed=2),
                 fitness_n=24, validation_n=16, test_n=40, population=4, generations=2, seeds=(0,))

# Baselines at the settings their papers / mergekit's docs use by default (weights 1, density 0.5).
BASELINES: dict[str, dict[str, Any]] = {
    "uniform average": {"merge_method": "linear", "models": [
        {"model": "ja", "parameters": {"weight": 1.0}}, {"model": "math", "parameters": {"weight": 1.0}}]},
    "task arithmetic": {"merge_method": "task_arithmetic", "base_model": "base", "models": [
        {"model": "ja", "parameters": {"weight": 1.0}}, {"model": "math", "parameters": {"weight": 1.0}}]},
    "TIES": {"merge_method": "ties", "base_model": "base", "models": [
        {"model": "ja", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}}]},
    "DARE-TIES": {"merge_method": "dare_ties", "base_model": "base", "models": [
        {"model": "ja", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "math", "parameters": {"weight": 1.0, "density": 0.5}}], "seed": 0},
}


# ----------------------------------------------------------------------------- data files
def write_data(out: Path, budget: LMBudget, design: lm_data.Design) -> dict[str, Path]:
    """Fitness and validation pairs (teacher forced: the whole Japanese answer after the Japanese prompt)
    and the held-out test questions, as JSONL files the evolve configs and the evaluation read."""
    def forced(split: str, n: int) -> list[dict]:
        return [{"id": p.id, "prompt": JA_FORMAT.format(q=lm_data.question(p.prompt, design)),
                 "answer": lm_data.ja_answer(p.prompt, int(p.answer), design)} for p in lm_data.target_items(split, n)]

    test = [{"id": p.id, "question": lm_data.question(p.prompt, design), "answer": p.answer, "expr": p.prompt}
            for p in lm_data.target_items("test", budget.test_n)]
    return {"fitness": write_jsonl(out / "fitness.jsonl", forced("fitness", budget.fitness_n)),
            "validation": write_jsonl(out / "validation.jsonl", forced("validation", budget.validation_n)),
            "test": write_jsonl(out / "test.jsonl", test)}


# ----------------------------------------------------------------------------- search configs
def _common(data: dict[str, Path], seed: int, budget: LMBudget) -> dict[str, Any]:
    return {
        "fitness": {"function": "teacher_forced_accuracy", "args": {"prob_weight": 0.1, "append_eos": True},
                    "data": {"file": str(data["fitness"])}},
        "validation": {"data": {"file": str(data["validation"])}},
        "search": {"seed": seed, "population": budget.population, "sigma": 0.5, "generations": budget.generations,
                   "workers": budget.workers},
    }


def ps_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: LMBudget) -> dict[str, Any]:
    """DARE-TIES weight and density per model and layer group (the seed's PS)."""
    return {"name": f"lm-ps-s{seed}", "sources": sources,
            "space": {"kind": "ps", "method": "dare_ties", "base_model": "base", "models": ["ja", "math"],
                      "layer_groups": 2, "merge_seed": 0,
                      "params": {"weight": {"bounds": [0.0, 1.5], "init": 0.75},
                                 "density": {"bounds": [0.1, 1.0], "init": 0.6}}},
            **_common(data, seed, budget)}


def dfs_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: LMBudget) -> dict[str, Any]:
    """Which layer of which sibling runs at each of T = M x r steps, with the scaling matrix W."""
    return {"name": f"lm-dfs-s{seed}", "sources": sources,
            "space": {"kind": "dfs", "models": ["ja", "math"], "repeats": 3, "scale_bounds": [0.5, 1.5],
                      "fixed_ends": {"model": "ja", "first": 1, "last": 1}, "init_model": "ja"},
            **_common(data, seed, budget)}


def ps_dfs_config(sources: dict[str, str], data: dict[str, Path], seed: int, budget: LMBudget,
                  ps_recipe: Path) -> dict[str, Any]:
    """DFS over the PS-evolved model and the math sibling (the seed's PS+DFS)."""
    return {"name": f"lm-ps-dfs-s{seed}", "sources": sources,
            "space": {"kind": "ps_dfs", "ps_recipe": str(ps_recipe), "models": ["ps", "math"], "repeats": 3,
                      "scale_bounds": [0.5, 1.5], "fixed_ends": {"model": "ps", "first": 1, "last": 1},
                      "init_model": "ps"},
            **_common(data, seed, budget)}


def run_search(config_data: dict[str, Any], run_dir: Path, export_to: Path, progress: bool) -> dict[str, Any]:
    """Run (or resume) one search and export its best candidate as a HF model dir."""
    from tsugiki.evolution.config import from_data
    from tsugiki.evolution.problems import make_problem
    from tsugiki.evolution.runner import evolve

    config = from_data(config_data, source_name=config_data["name"], base_dir=run_dir.parent)
    result = evolve(config, run_dir, progress=progress)
    if result.best is None:
        raise RuntimeError(f"{run_dir}: no successful candidate")
    if not (export_to / "config.json").exists():
        make_problem(config, run_dir).export_as_evaluated(result.best["params"], export_to, force=True)
    return {"run_dir": run_dir, "model": export_to, "fitness": result.best.get("fitness"),
            "evaluations": result.evaluations, "seconds": result.seconds}


# ----------------------------------------------------------------------------- evaluation
def binomial_se(p_percent: float, n: int) -> float:
    p = p_percent / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def math_form(design: lm_data.Design) -> tuple[str, str]:
    """(template, what it is) of the math sibling's own form of the question, where it learned the skill."""
    if design == "symbolic":
        return "{input}", "bare sum"
    return EN_TEMPLATE, "English prompt"


def evaluate(model_dir: Path, test: list[dict], design: lm_data.Design, *, batch_size: int = 100) -> dict[str, Any]:
    """Held-out MGSM-style scores of one model: the Japanese prompts (``acc``, ``acc_ja``) and, to show the
    math skill without the change of format, the same problems in the math sibling's own form
    (``acc_math``: an English prompt, or the bare sum for the ``symbolic`` design)."""
    from tsugiki.benchmarks.mgsm import score_mgsm
    from tsugiki.benchmarks.predictors import TextGenerator
    from tsugiki.evolution.data import Pair

    gen = TextGenerator(model_dir, JA_TEMPLATE, stop=["\n"], max_new_tokens=32, batch_size=batch_size,
                        name=model_dir.name, threads=1)
    answers = [t["answer"] for t in test]
    ja = gen.predict([Pair(t["question"], t["answer"], t["id"]) for t in test])
    ja_scores = score_mgsm(ja, answers, extraction="sakana", language_filter=True).scores
    template, _ = math_form(design)
    math_gen = gen.for_prompt(template, ["\n"], 32)
    own = math_gen.predict([Pair(t["question"] if design == "symbolic" else t["expr"], t["answer"], t["id"]) for t in test])
    own_scores = score_mgsm(own, answers, extraction="sakana", language_filter=False).scores
    estimates = {"acc_ja": ja_scores["acc_ja"], "acc": ja_scores["acc"], "acc_math": own_scores["acc"]}
    metrics = {k: e.value for k, e in estimates.items()}
    return {"metrics": metrics, "ci": {k: [e.low, e.high] for k, e in estimates.items()},
            "se": {k: binomial_se(v, len(test)) for k, v in metrics.items()}, "n": len(test), "responses": ja}


def merge_baseline(name: str, recipe: dict[str, Any], sources: dict[str, str], out: Path) -> Path:
    from tsugiki.evolution.problems import recipe_with_paths
    from tsugiki.merging.execute import MergeOptions
    from tsugiki.merging.recipe import Recipe
    from tsugiki.merging.to_disk import merge_to_disk

    if (out / "config.json").exists():
        return out
    data = {**recipe_with_paths(recipe, sources), "dtype": "float32"}
    merge_to_disk(Recipe.from_dict(data, source_name=name), out, MergeOptions(force=True, progress=False))
    return out


# ----------------------------------------------------------------------------- the stage
KINDS = ("PS", "DFS", "PS+DFS")


def run_lm_stage(ctx: StageContext, *, base: Path | None = None, design: lm_data.Design = DEFAULT_DESIGN,
                 budget: LMBudget | None = None, seeds: tuple[int, ...] | None = None
                 ) -> tuple[StageResult, dict[str, Path]]:
    """Train the siblings, evaluate sources and baselines, run the searches for each search seed and
    evaluate their best candidates. Returns the stage result and the evolved models' dirs by row name."""
    t0 = time.perf_counter()
    budget = budget or (QUICK if ctx.quick else FULL)
    if seeds is not None:
        budget = dataclasses.replace(budget, seeds=tuple(seeds))
    out = ctx.out
    base = Path(base or SHIPPED_BASE)
    models = out / "models"
    ctx.say(f"[lm] fine-tuning the Japanese and math siblings from the base ({base.name}) …")
    sources = {"base": str(base),
               "ja": str(train_sibling(base, models / "ja", budget.ja, design, progress=ctx.progress)),
               "math": str(train_sibling(base, models / "math", budget.math, design, progress=ctx.progress))}
    data = write_data(out / "data", budget, design)
    test = [json.loads(line) for line in data["test"].read_text(encoding="utf-8").splitlines()]

    candidates: list[tuple[str, str, Path, dict[str, Any]]] = []  # (row name, role, dir, extra)
    for name in ("base", "ja", "math"):
        candidates.append((_SOURCE_NAMES[name], "source", Path(sources[name]), {}))
    for name, recipe in BASELINES.items():
        candidates.append((name, "baseline", merge_baseline(name, recipe, sources, out / "baselines" / slug(name)), {}))

    runs: list[dict[str, Any]] = []
    for seed in budget.seeds:
        ctx.say(f"[lm] search seed {seed}: PS, DFS, PS+DFS (CMA-ES, {budget.population} x {budget.generations}) …")
        ps = run_search(ps_config(sources, data, seed, budget), out / "runs" / f"ps-s{seed}",
                        out / "evolved" / f"ps-s{seed}", ctx.progress)
        dfs = run_search(dfs_config(sources, data, seed, budget), out / "runs" / f"dfs-s{seed}",
                         out / "evolved" / f"dfs-s{seed}", ctx.progress)
        both = run_search(ps_dfs_config(sources, data, seed, budget, ps["run_dir"] / "best.yaml"),
                          out / "runs" / f"ps-dfs-s{seed}", out / "evolved" / f"ps-dfs-s{seed}", ctx.progress)
        for label, run in zip(KINDS, (ps, dfs, both)):
            run.update(kind=label, seed=seed)
            runs.append(run)
            candidates.append((f"evolved {label} (seed {seed})", "evolved", run["model"],
                               {"search_seed": seed, "kind": label, "fitness": run["fitness"]}))

    ctx.say(f"[lm] held-out evaluation of {len(candidates)} models on {len(test)} problems …")
    rows, samples = [], []
    for name, role, path, extra in _progress(candidates, ctx.progress, "held-out"):
        s = evaluate(path, test, design)
        rows.append(Row(name, role, s["metrics"], s["ci"], {**extra, "se": s["se"], "n": s["n"]}))
        for t, r in list(zip(test, s["responses"]))[:3]:
            samples.append(Sample(name, JA_FORMAT.format(q=t["question"]), r,
                                  lm_data.ja_answer(t["expr"], int(t["answer"]), design)))

    result = StageResult(stage="lm", headline=HEADLINE, rows=rows, title="Japanese math LM (EvoLLM-JP, tiny)")
    result.verdict = verdict(rows, budget.seeds)
    result.tables = [heldout_table(rows, budget.seeds, design), search_table(runs)]
    result.figures = _figures(ctx, runs)
    result.samples = samples
    result.notes = _notes(budget, len(test), design)
    result.models = {name: ctx.rel(path) for name, role, path, _ in candidates if role == "evolved"}
    result.seconds = time.perf_counter() - t0
    evolved = {name: path for name, role, path, _ in candidates if role == "evolved"}
    return result, evolved


def search_seeds(seed: int, quick: bool) -> tuple[int, ...]:
    """The search seeds of a demo run with ``--seed seed``: three (one when quick), starting at ``seed``."""
    return tuple(range(seed, seed + len((QUICK if quick else FULL).seeds)))


def vlm_grafts(lm_out: Path, evolved: dict[str, Path], base: Path | None) -> tuple[Path, dict[str, tuple[str, Path]]]:
    """What the VLM stage grafts: its LLaVA is built around the base LM; the Japanese sibling is the
    baseline graft and every PS-evolved LM (same shapes as the base; DFS models have more layers) an
    evolved one."""
    grafts: dict[str, tuple[str, Path]] = {}
    ja = lm_out / "models" / "ja"
    if (ja / "config.json").exists():
        grafts["LLaVA + JA sibling"] = ("baseline", ja)
    for name, path in evolved.items():
        if name.startswith("evolved PS ("):
            grafts[f"LLaVA + {name}"] = ("evolved", path)
    return Path(base or SHIPPED_BASE), grafts


_SOURCE_NAMES = {"base": "base (shipped)", "ja": "JA sibling", "math": "MATH sibling"}


def _progress(items: list, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False, unit="model")


def _best_evolved(rows: list[Row], seed: int) -> Row | None:
    evolved = [r for r in rows if r.role == "evolved" and r.extra.get("search_seed") == seed]
    return max(evolved, key=lambda r: r.metrics[HEADLINE], default=None)


def margin_in_se(best: Row, other: Row) -> float:
    """(best − other) in units of the two scores' combined binomial SE."""
    se = math.hypot(best.extra["se"][HEADLINE], other.extra["se"][HEADLINE])
    diff = best.metrics[HEADLINE] - other.metrics[HEADLINE]
    return diff / se if se > 0 else (math.inf if diff > 0 else 0.0)


def verdict(rows: list[Row], seeds: tuple[int, ...]) -> str:
    """Plain words: in each search seed, does the best evolved model beat every source and baseline on the
    headline metric by ≥ 2 SE (the seed paper's claim, at this scale)?"""
    others = [r for r in rows if r.role != "evolved"]
    best_other = max(others, key=lambda r: r.metrics[HEADLINE])
    parts, wins = [], 0
    for seed in seeds:
        best = _best_evolved(rows, seed)
        if best is None:
            continue
        worst_margin = min(margin_in_se(best, o) for o in others)
        wins += worst_margin >= 2
        parts.append(f"seed {seed}: {best.model} {best.metrics[HEADLINE]:.1f} vs best other "
                     f"{best_other.model} {best_other.metrics[HEADLINE]:.1f} ({worst_margin:+.1f} SE)")
    head = (f"The best evolved model beats every source and baseline by ≥ 2 SE on {HEADLINE} in {wins} of "
            f"{len(parts)} search seeds" + (" — the seed paper's claim holds here." if wins == len(parts) else
                                             " — the seed paper's claim does NOT fully hold at this scale."))
    return head + " " + "; ".join(parts) + "."


def heldout_table(rows: list[Row], seeds: tuple[int, ...], design: lm_data.Design) -> Table:
    """Sources and baselines once, evolved models per search seed: value ± binomial SE (percent)."""
    def cell(r: Row, k: str) -> str:
        return f"{r.metrics[k]:.1f} ± {r.extra['se'][k]:.1f}"

    header = ["model", "role", "acc_ja (headline)", "acc", f"acc_math ({math_form(design)[1]})"]
    body = [[r.model, r.role, cell(r, "acc_ja"), cell(r, "acc"), cell(r, "acc_math")] for r in rows]
    n = rows[0].extra["n"] if rows else 0
    return Table(f"Held-out target task (n = {n}; value ± binomial SE, %)", header, body,
                 note=f"search seeds: {', '.join(map(str, seeds))}; sources and baselines do not depend on the search seed")


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


def _notes(budget: LMBudget, n_test: int, design: lm_data.Design) -> list[str]:
    math_data = ("bare sums such as 3+4-2=5 (a math corpus, no instruction format)" if design == "symbolic"
                 else "three-operand sums asked in English")
    q = JA_FORMAT.format(q=lm_data.question("3+4-2", design))
    return [
        "Sources: a 1.27 M-parameter char-level Llama base (shipped; `tsugiki demo --rebuild-models` trains it again), "
        f"a JA sibling ({budget.ja.steps} steps on Japanese instructions: questions about shapes, two-operand sums) "
        f"and a MATH sibling ({budget.math.steps} steps on {math_data}); design '{design}' "
        f"(answer: {lm_data.ja_answer('3+4-2', 5, design)}).",
        f"Target: three-operand sums asked in Japanese ({q}), {n_test} held-out problems no model was trained on and "
        "no search saw; acc_ja counts an answer only if it is correct and fastText says it is Japanese (the seed's "
        "MGSM-JA rule); acc_math asks the same problems in the math sibling's own form.",
        "Baselines use default settings (weights 1, density 0.5); the evolved models' settings come from CMA-ES. "
        "Fitness: teacher-forced exact match of the whole Japanese answer + 0.1 x its mean token probability on a "
        "disjoint fitness split; the validation curve in each fitness plot is a third split.",
    ]
