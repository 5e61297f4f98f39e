"""The demo's VLM stage: the seed paper's EvoVLM-JP experiment (Akiba et al. 2024, arXiv:2403.13187,
§4.2) in miniature, on the real Gemma 3 270M, offline.

The seed took LLaVA (a vision tower and projector aligned to an English LM) and grafted a Japanese LM
in place of the English one; Japanese VQA (ROUGE-L on Japanese answers) improved. Here:

1. a LLaVA is built around the base LM with the shipped vision tower and projector, which were aligned to
   the frozen base on English questions about Pillow-drawn shapes (:mod:`tsugiki.demo.vlm.models`);
2. each given Japanese LM (the JA sibling, the PS-evolved LMs of the LM stage) is swapped in with
   `tsugiki vlm swap`'s code (``swap_language_model``): vision side bit for bit, language model replaced;
3. the LLaVA and every graft answer Japanese questions about unseen scenes
   (``問題: <image>\nこの図形は何色ですか？\n答え:``), scored with the benchmarks' ``rouge_ja``
   (``rougeL_ja``: a non-Japanese answer scores 0) against short content references (``赤``, ``円``), and
   with a content accuracy (``word_acc``: the answer names the right colour or shape and no other), so a
   reader sees whether a model looks at the picture.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tsugiki.benchmarks.stats import paired_difference
from tsugiki.demo.stage import (
    Row,
    Sample,
    StageContext,
    StageResult,
    Table,
    named_sources,
    paired_seed_verdicts,
    seeds_sentence,
    store_shared,
)
from tsugiki.demo.vlm import scenes
from tsugiki.demo.vlm.models import EN_TEMPLATE, JA_TEMPLATE, SHIPPED_VISION, build_llava
from tsugiki.evolution.data import Pair
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.progress import progress_bar
from tsugiki.vlm.generate import GenerationSettings, VQAPredictor

# Greedy and no repetition penalty (the seed: 5 beams, penalty 1.5, on 7B models and long answers).
GENERATION = GenerationSettings(num_beams=1, repetition_penalty=1.0, max_new_tokens=8, do_sample=False)
META_FILE = "tsugiki_vlm_stage.json"


@dataclass(frozen=True)
class VlmBudget:
    """How much the stage scores. Scenes give two questions each (colour, shape)."""

    en_eval_scenes: int  # held-out English scenes: does the LLaVA see colour and shape?
    test_scenes: int  # Japanese test scenes (ja_items("test"): 108 in all)


QUICK = VlmBudget(en_eval_scenes=4, test_scenes=4)
DEFAULT = VlmBudget(en_eval_scenes=40, test_scenes=108)
EN_EVAL_SEED = 7  # held-out English scenes: another stream than the alignment's (seed 0)


def _load(model_dir: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from tsugiki.hf_load import from_pretrained

    with hf_progress_bars_off():
        return from_pretrained(LlavaForConditionalGeneration, model_dir).eval(), from_pretrained(AutoProcessor, model_dir)


def english_check(llava: Path, vision: Path, budget: VlmBudget, progress: bool) -> dict:
    """The LLaVA's own English accuracy on held-out scenes (cached in the LLaVA dir), with how its
    vision side (``vision``) was trained."""
    meta = llava / META_FILE
    if meta.is_file():
        record = json.loads(meta.read_text())
        if record.get("en_items") == 2 * budget.en_eval_scenes:
            return record
    held_out = scenes.english_items(budget.en_eval_scenes, EN_EVAL_SEED, prefix="shapes_en_eval")
    model, processor = _load(llava)
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
def graft(llava: Path, lm_dir: Path, out: Path) -> Path:
    """`tsugiki vlm swap LLAVA LM -o OUT`: LLaVA's vision tower and projector, `lm_dir` as language model."""
    from tsugiki.merging.execute import MergeOptions
    from tsugiki.vlm.merge import swap_language_model

    return swap_language_model(llava, lm_dir, out, MergeOptions(force=True, progress=False),
                               named=named_sources({"LLaVA": llava, "language model": lm_dir}, out)).out


def _predict(model, processor, template: str, items: Sequence[Pair], progress: bool) -> list[str]:
    """Greedy answers, cut at the first newline (the prompts are one-line Q/A pairs)."""
    predictor = VQAPredictor(model, processor, template=template, batch_size=16, settings=GENERATION, progress=progress)
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
# said where the demo's other stages score with vLLM: its LLaVA needs torchvision, which tsugiki does not depend on
ENGINE_NOTE = ("The LLaVAs are scored with transformers (engine hf) whatever --engine says: vLLM's LLaVA needs "
               "torchvision, which tsugiki does not depend on (no CPU build of it loads on every machine).")


def run_vlm_stage(ctx: StageContext, *, llava_lm: Path, grafts: dict[str, tuple[str, Path]],
                  vision: Path | None = None) -> StageResult:
    """Build the LLaVA around `llava_lm` with the shipped (or given) vision weights, graft each LM of
    `grafts` (name -> (role, LM dir)) into it, score them all on Japanese VQA. Writes under ``ctx.out``:
    ``llava/``, ``grafts/<name>/``, ``answers/<name>.jsonl``, ``scenes/*.png``."""
    start = time.perf_counter()
    budget = QUICK if ctx.quick else DEFAULT
    if SOURCE_NAME in grafts:
        raise ValueError(f"graft name {SOURCE_NAME!r} is taken by the LLaVA itself")
    for name, (role, _) in grafts.items():
        if role not in ("baseline", "evolved"):  # checked before minutes of training, not after
            raise ValueError(f"graft {name!r}: role must be 'baseline' or 'evolved', not {role!r}")
    ctx.say("[vlm] building the LLaVA around the base LM (shipped vision tower and projector) …")
    vision = Path(vision or SHIPPED_VISION)
    llava = store_shared(build_llava(Path(llava_lm), ctx.out / "llava", vision), ctx.run_dir)
    record = english_check(llava, vision, budget, ctx.progress)
    models = {SOURCE_NAME: ("source", llava)}
    # each graft is written to be scored, then deleted (`tsugiki vlm swap LLAVA LM -o DIR` writes it again):
    # a GB per graft and search seed would not fit a laptop's run dir
    for name, (role, lm_dir) in grafts.items():
        models[name] = (role, ctx.out / "grafts" / name)

    if ctx.engine != "hf":
        ctx.say(f"[vlm] {ENGINE_NOTE}")
    items = scenes.ja_items("test", budget.test_scenes, seed=ctx.seed)
    rows, answers, per_item = [], {}, {}
    ctx.say(f"[vlm] grafting {len(grafts)} Japanese LM(s) into it in turn (vision side bit for bit) and asking "
            f"{len(items)} Japanese questions …")
    for name, (role, path) in progress_bar(models.items(), desc="Japanese VQA", unit="model", disable=not ctx.progress):
        if name in grafts:
            graft(llava, Path(grafts[name][1]), path)
        model, processor = _load(path)
        answers[name] = _predict(model, processor, JA_TEMPLATE, items, ctx.progress)
        del model
        if name in grafts:
            shutil.rmtree(path)
        metrics, ci, per_item[name] = score(answers[name], items)
        _write_answers(ctx.out / "answers" / f"{name}.jsonl", items, answers[name], per_item[name])
        by_kind = {k: word_accuracy(answers[name], items, k) for k in ("colour", "shape")}
        rows.append(Row(name, role, metrics, ci, extra={"word_acc_by_kind": by_kind}))
    for row in rows[1:]:
        diff, se = paired_difference([s["rougeL_ja"] for s in per_item[row.model]], [s["rougeL_ja"] for s in per_item[SOURCE_NAME]])
        row.extra["vs_llava"] = {"diff": diff, "se": se}
    rows[0].extra["english"] = {k: record[k] for k in ("en_accuracy", "en_items", "seconds", "steps")}

    seeds = paired_seed_verdicts(rows, {k: [s["rougeL_ja"] for s in v] for k, v in per_item.items()}, ctx.seed)
    return StageResult(
        stage="vlm", headline="rougeL_ja", rows=rows, seeds=seeds,
        title="Japanese VQA: Japanese LMs grafted into an English-aligned LLaVA (Gemma 3 270M inside)",
        verdict=" ".join([*([seeds_sentence(seeds, "rougeL_ja") + " (paired)."] if seeds else []),
                          verdict(rows, per_item)]), notes=_notes(record, len(items)) + ([ENGINE_NOTE] if ctx.engine != "hf" else []),
        tables=[_english_table(record)],
        samples=_samples(ctx, items, answers, record), seconds=time.perf_counter() - start,
        models={SOURCE_NAME: ctx.rel(llava)})


def _write_answers(path: Path, items: Sequence[Pair], answers: Sequence[str], per_item: Sequence[dict]) -> None:
    from tsugiki.benchmarks.jsonl import write_jsonl

    write_jsonl(path, ({"id": p.id, "question": p.prompt, "prompt": JA_TEMPLATE.format(input=f"<image>\n{p.prompt}"),
                        "reference": p.answer, "answer": a, **s} for p, a, s in zip(items, answers, per_item)))


def verdict(rows: list[Row], per_item: dict[str, list[dict]]) -> str:
    """One or two plain sentences: did the best evolved graft (else the baseline) beat the LLaVA, and
    the best evolved graft the baseline, by how many standard errors of the paired per-item difference."""
    source = rows[0]
    contenders = [r for r in rows if r.role == "evolved"] or [r for r in rows if r.role == "baseline"]
    if not contenders:
        return "Only the LLaVA was scored: nothing was grafted."
    best = max(contenders, key=lambda r: r.metrics["rougeL_ja"])
    out = [_compare(best, source, "the LLaVA", per_item)]
    baseline = next((r for r in rows if r.role == "baseline"), None)
    if best.role == "evolved" and baseline is not None:
        out.append(_compare(best, baseline, f"the plain Japanese graft ({baseline.model})", per_item))
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


def _notes(record: dict, n: int) -> list[str]:
    return [
        "The vision tower and projector were trained on English questions only, the base language model frozen "
        "(shipped weights; `tsugiki demo --rebuild-models` trains them again); the grafts keep them bit for bit "
        "and never saw a Japanese question about an image.",
        f"Generation: greedy, at most {GENERATION.max_new_tokens} new tokens, cut at the first newline, no "
        "repetition penalty (the seed paper used 5 beams and penalty 1.5 on 7B models).",
        f"Chance for content accuracy: {chance_accuracy()['all']:.1f} % (uniform guess of a colour or shape word).",
        f"Intervals: 95% bootstrap of the benchmark code (1000 resamples); SE: paired per-question difference over {n} questions.",
        "rougeL_ja: ROUGE-L (MeCab words) against short content references (赤, 円) with non-Japanese answers scored "
        "0, so a constant or empty answer scores far below a correct one; word_acc (content accuracy; details: per "
        f"question kind, chance {chance_accuracy()['colour']:.1f}% for a colour and {chance_accuracy()['shape']:.1f}% "
        "for a shape): the answer names the right colour or shape and no other (another name of the same one counts: "
        "金 for 金色); vs_llava: the rougeL_ja difference to the LLaVA and its paired SE.",
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
    held_out = scenes.english_items((QUICK if ctx.quick else DEFAULT).en_eval_scenes, EN_EVAL_SEED, prefix="shapes_en_eval")
    by_id = {p.id: p for p in held_out}
    for item_id, question, answer, expected in record["en_samples"][:2 * n_scenes]:
        if item_id in by_id:
            prompt = EN_TEMPLATE.format(input=f"<image>\n{question}")
            out.append(Sample(SOURCE_NAME, prompt, answer, expected, _scene_png(ctx, by_id[item_id])))
    return out
