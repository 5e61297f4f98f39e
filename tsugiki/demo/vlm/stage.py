"""The demo's VLM stage: the seed paper's EvoVLM-JP experiment (Akiba et al. 2024, arXiv:2403.13187,
§4.2) in miniature, on the real Gemma 3 270M, offline.

The seed took LLaVA-1.6-Mistral (a vision tower and projector aligned to Mistral, whose weights LLaVA tuned as
it learned to see) and merged its language model with a Japanese Mistral inside the LLaVA, evolving the merge
on Japanese VQA; the result answered Japanese questions about images better than either. Here:

1. a LLaVA is built around the base LM with the shipped weights: vision tower, projector and the LoRA its
   language model learned with them, on English questions about Pillow-drawn shapes
   (:mod:`tsugiki.demo.vlm.models`);
2. baselines: the JA sibling grafted in place of the LLaVA's LM (`tsugiki vlm swap`: vision side bit for bit),
   and task arithmetic of the two language models inside the LLaVA;
3. the evolved models: the PS search (:mod:`tsugiki.demo.vlm.search`) in each search seed;
4. every model answers Japanese questions about unseen scenes (``問題: <image>\nこの図形は何色ですか？\n答え:``),
   scored with the benchmarks' ``rouge_ja`` (``rougeL_ja``: a non-Japanese answer scores 0) against short
   content references (``赤``, ``円``), and with a content accuracy (``word_acc``: the answer names the right
   colour or shape and no other), so a reader sees whether a model looks at the picture.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from tsugiki.benchmarks.results import slug
from tsugiki.benchmarks.stats import paired_difference
from tsugiki.demo.stage import (
    Row,
    Sample,
    StageContext,
    StageResult,
    Table,
    baseline_recipe,
    paired_seed_verdicts,
    run_search,
    seeds_sentence,
    store_shared,
)
from tsugiki.demo.vlm import scenes
from tsugiki.demo.vlm.models import EN_TEMPLATE, JA_TEMPLATE, SHIPPED_LLAVA, build_llava
from tsugiki.demo.vlm.search import BASELINES, BATCH, DEFAULT, GENERATION, QUICK, VlmBudget, ps_config, write_data
from tsugiki.evolution.data import Pair
from tsugiki.evolution.problems import KeptProblem
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.progress import progress_bar
from tsugiki.vlm.generate import VQAPredictor
from tsugiki.vlm.inmemory import VlmLanguageModelMerger

META_FILE = "tsugiki_vlm_stage.json"
EN_EVAL_SEED = 7  # held-out English scenes: another stream than the alignment's (seed 0)


def _load(model_dir: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from tsugiki.hf_load import from_pretrained

    with hf_progress_bars_off():
        return from_pretrained(LlavaForConditionalGeneration, model_dir).eval(), from_pretrained(AutoProcessor, model_dir)


def english_check(llava: Path, vision: Path, budget: VlmBudget, progress: bool, loaded=None) -> dict:
    """The LLaVA's own English accuracy on held-out scenes (cached in the LLaVA dir), with how its
    vision side (``vision``) was trained; ``loaded``: the LLaVA's (model, processor) when already in memory."""
    meta = llava / META_FILE
    if meta.is_file():
        record = json.loads(meta.read_text())
        if record.get("en_items") == 2 * budget.en_eval_scenes:
            return record
    held_out = scenes.english_items(budget.en_eval_scenes, EN_EVAL_SEED, prefix="shapes_en_eval")
    model, processor = loaded or _load(llava)
    answers = _predict(model, processor, EN_TEMPLATE, held_out, progress)
    vision = json.loads((vision / "training.json").read_text())
    record = {"en_items": len(held_out), "en_accuracy": english_accuracy(answers, held_out),
              "steps": vision["recipe"]["steps"], "seconds": vision["seconds"],
              "train_items": 2 * vision["recipe"]["train_scenes"],
              "en_samples": [[p.id, p.prompt, a, p.answer] for p, a in zip(held_out, answers)]}
    meta.write_text(json.dumps(record, ensure_ascii=False, indent=1))
    return record


def english_accuracy(answers: Sequence[str], items: Sequence[Pair]) -> dict[str, float]:
    """Exact-match accuracy in percent (case and a final period ignored), per question kind and overall."""
    hits: dict[str, list[bool]] = {"colour": [], "shape": []}
    for a, p in zip(answers, items):
        hits[scenes.question_kind(p)].append(a.strip().rstrip(".").lower() == p.answer.lower())
    out = {k: 100.0 * sum(v) / len(v) for k, v in hits.items() if v}
    out["all"] = 100.0 * sum(sum(v) for v in hits.values()) / len(answers)
    return out


def chance_accuracy() -> dict[str, float]:
    """Accuracy of guessing uniformly (each question kind asked equally often)."""
    c, s = 100.0 / len(scenes.vocabulary("en", "colour")), 100.0 / len(scenes.vocabulary("en", "shape"))
    return {"colour": c, "shape": s, "all": (c + s) / 2}


# ----------------------------------------------------------------------------- grafting and scoring
def _predict(model, processor, template: str, items: Sequence[Pair], progress: bool) -> list[str]:
    """Greedy answers, cut at the first newline (the prompts are one-line Q/A pairs)."""
    predictor = VQAPredictor(model, processor, template=template, batch_size=BATCH, settings=GENERATION, progress=progress)
    return [a.split("\n")[0].strip() for a in predictor.predict([p.image for p in items], [p.prompt for p in items])]


def word_accuracy(answers: Sequence[str], items: Sequence[Pair], kind: str | None = None) -> float:
    """Percent of Japanese answers that name the right colour / shape word and no other one (``kind``: only
    the colour or only the shape questions). Other names of the same colour or shape count (金 for 金色)."""
    ok = [scenes.named_words(a, scenes.vocabulary("ja", scenes.question_kind(p))) == {p.answer}
          for a, p in zip(answers, items) if kind is None or scenes.question_kind(p) == kind]
    return 100.0 * sum(ok) / len(ok) if ok else float("nan")


def score(answers: Sequence[str], items: Sequence[Pair]):
    """(metrics, ci, per-item scores) of Japanese answers: the benchmarks' rouge_ja and word accuracy."""
    from tsugiki.benchmarks.rouge import rouge_ja

    result = rouge_ja([p.answer for p in items], list(answers))
    metrics = {"rougeL_ja": result.scores["rougeL_ja"].value, "rougeL": result.scores["rougeL"].value,
               "word_acc": word_accuracy(answers, items)}
    ci = {k: [result.scores[k].low, result.scores[k].high] for k in ("rougeL_ja", "rougeL")}
    return metrics, ci, result.per_item


# ----------------------------------------------------------------------------- the stage
SOURCE_NAME = "llava"
JA_GRAFT = "LLaVA + JA sibling (graft)"
# said where the demo's other stages score with vLLM: its LLaVA needs torchvision, which tsugiki does not depend on
ENGINE_NOTE = ("The LLaVAs are scored with transformers (engine hf) whatever --engine says: vLLM's LLaVA needs "
               "torchvision, which tsugiki does not depend on (no CPU build of it loads on every machine).")


@dataclass
class Candidate:
    """A model the stage scores: the LLaVA itself (``recipe`` None), or a merge recipe of its language model
    (``llava``, ``ja``, ``base``: a dict, or a recipe file naming them by path) that is merged into the loaded
    LLaVA in place to be scored; its file stays in the run dir (a GB per model would not fit a laptop's)."""

    name: str
    role: str
    recipe: dict[str, Any] | Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# the JA sibling in place of the LLaVA's language model: what `tsugiki vlm swap LLAVA JA -o DIR` writes
JA_GRAFT_RECIPE = {"merge_method": "linear", "models": [{"model": "ja", "parameters": {"weight": 1.0}}]}


def run_vlm_stage(ctx: StageContext, *, base: Path, ja: Path, weights: Path | None = None,
                  budget: VlmBudget | None = None, seeds: tuple[int, ...] | None = None) -> StageResult:
    """Build the LLaVA around ``base`` with the shipped (or given) LLaVA weights, run the PS search of its
    language model with the JA sibling ``ja`` in each search seed, and score the LLaVA, the baselines and the
    evolved models on Japanese VQA. Writes under ``ctx.out``: ``llava/``, ``data/``, ``runs/ps-s<seed>/``,
    ``baselines/*.yaml``, ``answers/<name>.jsonl``, ``scenes/*.png``."""
    start = time.perf_counter()
    budget = budget or (QUICK if ctx.quick else DEFAULT)
    if seeds is not None:
        budget = replace(budget, seeds=tuple(seeds))
    weights = Path(weights or SHIPPED_LLAVA)
    ctx.say("[vlm] building the LLaVA around the base LM (shipped vision tower, projector and LM LoRA) …")
    llava = store_shared(build_llava(Path(base), ctx.out / "llava", weights), ctx.run_dir)
    sources = {"llava": str(llava), "ja": str(ja), "base": str(base)}
    models = [Candidate(SOURCE_NAME, "source"), Candidate(JA_GRAFT, "baseline", JA_GRAFT_RECIPE)]
    for name, recipe in BASELINES.items():
        models.append(Candidate(name, "baseline", baseline_recipe(name, recipe, sources, ctx.out / "baselines" / f"{slug(name)}.yaml")))

    data = write_data(ctx.out / "data", budget)
    with KeptProblem() as kept:  # the searches of every seed share one loaded LLaVA and its sources
        for seed in budget.seeds:
            ctx.say(f"[vlm] search seed {seed}: PS of the LLaVA's LM with the JA sibling (CMA-ES, population "
                    f"{budget.population}, {budget.generations} generations, {2 * budget.fitness_scenes} fitness questions) …")
            run = run_search(ps_config(sources, data, seed, budget), ctx.out / "runs" / f"ps-s{seed}",
                             ctx.out / "runs" / f"ps-s{seed}" / "model", ctx.progress, export=False, keep=kept)
            models.append(Candidate(f"evolved PS (seed {seed})", "evolved", run["run_dir"] / "best.yaml",
                                    {"search_seed": seed, "fitness": run["fitness"], "evaluations": run["evaluations"],
                                     "search_seconds": round(run["seconds"], 1)}))

    if ctx.engine != "hf":
        ctx.say(f"[vlm] {ENGINE_NOTE}")
    items = scenes.ja_items("test", budget.test_scenes, seed=ctx.seed)
    rows, answers, per_item = [], {}, {}
    ctx.say(f"[vlm] asking {len(models)} LLaVAs {len(items)} Japanese questions about unseen pictures (each merge "
            "made in place in one loaded LLaVA) …")
    model, processor = _load(llava)
    record = english_check(llava, weights, budget, ctx.progress, loaded=(model, processor))  # before any merge
    merger = VlmLanguageModelMerger(model, sources)
    for c in progress_bar(models, desc="Japanese VQA", unit="model", disable=not ctx.progress):
        if c.recipe is not None:
            merger.apply(_short_names(c.recipe, sources))
        answers[c.name] = _predict(model, processor, JA_TEMPLATE, items, ctx.progress)
        metrics, ci, per_item[c.name] = score(answers[c.name], items)
        _write_answers(ctx.out / "answers" / f"{slug(c.name)}.jsonl", items, answers[c.name], per_item[c.name])
        rows.append(Row(c.name, c.role, metrics, ci,
                        extra={**c.extra, "content_vs_chance": content_vs_chance(answers[c.name], items)}))
    del model, merger
    for row in rows[1:]:
        diff, se = paired_difference([s["rougeL_ja"] for s in per_item[row.model]], [s["rougeL_ja"] for s in per_item[SOURCE_NAME]])
        row.extra["vs_llava"] = {"diff": diff, "se": se}
    rows[0].extra["english"] = {k: record[k] for k in ("en_accuracy", "en_items", "seconds", "steps")}

    seeds = paired_seed_verdicts(rows, {k: [s["rougeL_ja"] for s in v] for k, v in per_item.items()}, ctx.seed)
    return StageResult(
        stage="vlm", headline="rougeL_ja", rows=rows, seeds=seeds,
        title="Japanese VQA: an English-aligned LLaVA's LM merged with a Japanese LM (Gemma 3 270M inside)",
        verdict=" ".join([*([seeds_sentence(seeds, "rougeL_ja") + " (paired)."] if seeds else []),
                          verdict(rows, per_item)]),
        notes=_notes(record, len(items), budget) + ([ENGINE_NOTE] if ctx.engine != "hf" else []),
        tables=[_english_table(record), _content_table(rows)],
        samples=_samples(ctx, items, answers, record), seconds=time.perf_counter() - start,
        models={SOURCE_NAME: ctx.rel(llava)},
        recipes={c.name: ctx.rel(c.recipe) for c in models if isinstance(c.recipe, Path)})


def _short_names(recipe: dict[str, Any] | Path, sources: dict[str, str]):
    """``recipe`` (a dict in short names, or a file naming the sources by path) with the short names the
    merger knows its sources by."""
    from tsugiki.merging.checkpoint import resolve_model_ref
    from tsugiki.merging.recipe import Recipe, load_recipe

    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe, source_name="VLM stage")
    names = {Path(p).resolve(): name for name, p in sources.items()}
    return load_recipe(recipe).map_refs(lambda ref: names[Path(resolve_model_ref(ref, base_dir=recipe.parent)).resolve()])


def search_seeds(seed: int, quick: bool) -> tuple[int, ...]:
    """The search seeds of a demo run with ``--seed seed``: as many as the budget has, starting at ``seed``."""
    return tuple(range(seed, seed + len((QUICK if quick else DEFAULT).seeds)))


def content_vs_chance(answers: Sequence[str], items: Sequence[Pair]) -> dict[str, dict[str, float]]:
    """Per question kind: content accuracy, chance, and the margin in standard errors of the accuracy
    (binomial, ``sqrt(p (1 - p) / n)`` at chance ``p``): how clearly a model reads that property off the picture."""
    chance = chance_accuracy()
    out = {}
    for kind in ("colour", "shape"):
        n = sum(scenes.question_kind(p) == kind for p in items)
        if not n:
            continue
        acc, p = word_accuracy(answers, items, kind), chance[kind] / 100.0
        out[kind] = {"acc": acc, "chance": chance[kind], "se_above_chance": (acc / 100.0 - p) / math.sqrt(p * (1 - p) / n)}
    return out


def _write_answers(path: Path, items: Sequence[Pair], answers: Sequence[str], per_item: Sequence[dict]) -> None:
    from tsugiki.benchmarks.jsonl import write_jsonl

    write_jsonl(path, ({"id": p.id, "question": p.prompt, "prompt": JA_TEMPLATE.format(input=f"<image>\n{p.prompt}"),
                        "reference": p.answer, "answer": a, **s} for p, a, s in zip(items, answers, per_item)))


def verdict(rows: list[Row], per_item: dict[str, list[dict]]) -> str:
    """Plain sentences: did the best evolved model (else the best baseline) beat the LLaVA and the JA graft, by
    how many standard errors of the paired per-item difference, and does it read colour and shape off the
    picture (content accuracy against chance)."""
    source = rows[0]
    contenders = [r for r in rows if r.role == "evolved"] or [r for r in rows if r.role == "baseline"]
    if not contenders:
        return "Only the LLaVA was scored: nothing was merged or grafted."
    best = max(contenders, key=lambda r: r.metrics["rougeL_ja"])
    out = [_compare(best, source, "the LLaVA", per_item)]
    graft_row = next((r for r in rows if r.model == JA_GRAFT), None)
    if graft_row is not None and graft_row is not best:
        out.append(_compare(best, graft_row, f"the plain Japanese graft ({graft_row.model})", per_item))
    content = best.extra.get("content_vs_chance", {})
    if content:
        out.append(f"{best.model}'s content accuracy: " + "; ".join(
            f"{k} {v['acc']:.1f} % vs chance {v['chance']:.1f} % ({v['se_above_chance']:+.1f} SE)" for k, v in content.items()) + ".")
    return " ".join(out)


def _compare(a: Row, b: Row, b_label: str, per_item: dict[str, list[dict]]) -> str:
    diff, se = paired_difference([s["rougeL_ja"] for s in per_item[a.model]], [s["rougeL_ja"] for s in per_item[b.model]])
    va, vb, n = a.metrics["rougeL_ja"], b.metrics["rougeL_ja"], len(per_item[a.model])
    scores = f"rougeL_ja {va:.1f} vs {vb:.1f} on {n} Japanese questions"
    if se == 0 or math.isnan(se):
        same = "the same score" if diff == 0 else f"a difference of {diff:+.1f} points"
        return f"{a.model} and {b_label} have {same} on every question ({scores})."
    z = diff / se
    if z >= 2:
        return f"{a.model} beat {b_label}: {scores}, {diff:+.1f} points = {z:.1f} SE of the paired difference."
    if z <= -2:
        return f"{a.model} scored below {b_label}: {scores}, {diff:+.1f} points = {z:.1f} SE of the paired difference."
    return (f"{a.model} did not clearly beat {b_label}: {scores}, {diff:+.1f} points = {z:.1f} SE of the paired "
            f"difference (under 2 SE).")


def _english_table(record: dict) -> Table:
    acc, chance = record["en_accuracy"], chance_accuracy()
    body = [[k, f"{acc[k]:.1f}", f"{chance[k]:.1f}"] for k in ("colour", "shape", "all") if k in acc]
    return Table(f"English alignment of the LLaVA ({record['steps']} steps on {record['train_items']} items, "
                 f"{record['seconds']:.0f} s; {record['en_items']} held-out questions)",
                 ["question", "accuracy %", "chance %"], body)


def _content_table(rows: list[Row]) -> Table:
    body = []
    for r in rows:
        c = r.extra.get("content_vs_chance", {})
        body.append([r.model, *(f"{c[k]['acc']:.1f} ({c[k]['se_above_chance']:+.1f} SE)" if k in c else "–"
                                for k in ("colour", "shape"))])
    chance = chance_accuracy()
    return Table(f"Content accuracy on the Japanese questions, % (chance: colour {chance['colour']:.1f}, shape "
                 f"{chance['shape']:.1f}; margin over chance in binomial SE)", ["model", "colour", "shape"], body)


def _notes(record: dict, n: int, budget: VlmBudget) -> list[str]:
    return [
        "The LLaVA (shipped weights; `tsugiki demo --rebuild-models` trains them again) learned English questions "
        "only: the vision tower and projector, and a LoRA on its language model, trained together. Every model here "
        "keeps that vision side bit for bit and none saw a Japanese question about an image, except the searches' "
        f"fitness: rougeL_ja on {2 * budget.fitness_scenes} Japanese questions about fitness scenes (drawn apart "
        "from the test scenes).",
        f"Search (each seed): DARE-TIES of the LLaVA's LM and the JA sibling over the base, weight and density per "
        f"model and layer group ({budget.layer_groups} group(s)), CMA-ES population {budget.population}, {budget.generations} generations.",
        f"Generation: greedy, at most {GENERATION.max_new_tokens} new tokens, cut at the first newline, no "
        "repetition penalty (the seed paper used 5 beams and penalty 1.5 on 7B models).",
        f"Intervals: 95% bootstrap of the benchmark code (1000 resamples); SE: paired per-question difference over {n} questions.",
        "rougeL_ja: ROUGE-L (MeCab words) against short content references (赤, 円) with non-Japanese answers scored "
        "0, so a constant or empty answer scores far below a correct one; word_acc (content accuracy; details: per "
        f"question kind, chance {chance_accuracy()['colour']:.1f}% for a colour and {chance_accuracy()['shape']:.1f}% "
        "for a shape): the answer names the right colour or shape and no other (another name of the same one counts: "
        "金 for 金色); vs_llava: the rougeL_ja difference to the LLaVA and its paired SE.",
        "Kept in the run dir: the LLaVA, each baseline's recipe and each search's run (best.yaml); "
        "`tsugiki merge RECIPE -o DIR` writes any of them as a LLaVA dir.",
    ]


def _scene_png(ctx: StageContext, item: Pair) -> str:
    path = ctx.out / "scenes" / (item.id.rsplit("/", 1)[0].replace("/", "-") + ".png")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        item.image.save(path)
    return ctx.rel(path)


def _samples(ctx: StageContext, items: list[Pair], answers: dict[str, list[str]], record: dict, n_scenes: int = 2) -> list[Sample]:
    out = []
    for i, p in enumerate(items[:2 * n_scenes]):
        image = _scene_png(ctx, p)
        prompt = JA_TEMPLATE.format(input=f"<image>\n{p.prompt}")
        out += [Sample(name, prompt, a[i], p.answer, image) for name, a in answers.items()]
    held_out = scenes.english_items(record["en_items"] // 2, EN_EVAL_SEED, prefix="shapes_en_eval")
    by_id = {p.id: p for p in held_out}
    for item_id, question, answer, expected in record["en_samples"][:2 * n_scenes]:
        if item_id in by_id:
            prompt = EN_TEMPLATE.format(input=f"<image>\n{question}")
            out.append(Sample(SOURCE_NAME, prompt, answer, expected, _scene_png(ctx, by_id[item_id])))
    return out
