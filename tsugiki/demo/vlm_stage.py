"""The demo's VLM stage: the seed paper's EvoVLM-JP experiment (Akiba et al. 2024, arXiv:2403.13187,
§4.2) at tiny scale, offline.

The seed took LLaVA (a vision tower and projector aligned to an English LM) and grafted a Japanese LM
in place of the English one; Japanese VQA (ROUGE-L on Japanese answers) improved. Here:

1. a tiny LLaVA is built around ``llava_lm`` and its vision tower and projector are trained, the
   language model frozen (LLaVA's stage 1), on English questions about Pillow-drawn shapes
   (:mod:`tsugiki.demo.scenes`) in the English instruction format (``world.EN_FORMAT``);
2. each given Japanese LM is swapped in with `tsugiki vlm swap`'s code (``merge_vlm_to_disk``, a
   one-model passthrough recipe with the LLaVA as vision source): vision side bit for bit, language
   model replaced;
3. the LLaVA and every graft answer Japanese questions about unseen scenes in the Japanese format
   (``world.JA_FORMAT``), scored with the benchmarks' ``rouge_ja`` (``rougeL_ja``: a non-Japanese
   answer scores 0; plus plain ``rougeL``).

Prompts follow LLaVA-1.5's layout, the image inside the user turn (``USER: <image>\\n{question}
ASSISTANT:``): here ``Q: <image>\\nWhat colour is it? A: red``. The same string is a
``VQAPredictor`` template (``JA_TEMPLATE``), so an evolution config's ``rougeL_ja`` fitness can take
the scene items as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from tsugiki.demo import scenes
from tsugiki.demo.stage import Row, Sample, StageContext, StageResult, Table
from tsugiki.demo.world import EN_FORMAT, JA_FORMAT
from tsugiki.errors import CheckpointError
from tsugiki.evolution.data import Pair
from tsugiki.hf_quiet import hf_progress_bars_off
from tsugiki.threads import torch_threads
from tsugiki.vlm.generate import GenerationSettings, VQAPredictor

EN_TEMPLATE = EN_FORMAT.format(q="{input}")  # "Q: {input} A: " -> "Q: <image>\n<question> A: "
JA_TEMPLATE = JA_FORMAT.format(q="{input}")
# Greedy and no repetition penalty (the seed: 5 beams, penalty 1.5): a penalty would push the answer
# away from です and 色, which every Japanese question already contains.
GENERATION = GenerationSettings(num_beams=1, repetition_penalty=1.0, max_new_tokens=10, do_sample=False)
# 9 image tokens (48 px, 16 px patches): short prompts keep the answer within the positions tiny LMs
# were trained on; three vision layers, as LLaVA reads the features of the second-to-last one.
VISION = dict(vision_hidden_size=64, vision_layers=3, vision_heads=4, vision_intermediate_size=128, image_size=48, patch_size=16)
CACHE_VERSION = 1  # bump when training changes, so a cached LLaVA is rebuilt
META_FILE = "tsugiki_vlm_stage.json"


@dataclass(frozen=True)
class VlmBudget:
    """How much the stage does. Scenes give two questions each (colour, shape)."""

    train_scenes: int  # English training scenes
    steps: int  # AdamW steps on the vision tower + projector
    batch_size: int
    lr: float
    en_eval_scenes: int  # held-out English scenes: does the LLaVA see colour and shape?
    test_scenes: int  # Japanese test scenes (ja_items("test"): 108 in all)
    warmup: int = 20


QUICK = VlmBudget(train_scenes=48, steps=30, batch_size=16, lr=3e-3, en_eval_scenes=8, test_scenes=6, warmup=5)
DEFAULT = VlmBudget(train_scenes=1000, steps=600, batch_size=32, lr=3e-3, en_eval_scenes=60, test_scenes=108)


# ----------------------------------------------------------------------------- the tiny LLaVA
def lm_spec(lm_dir: Path):
    """The `TinyLMSpec` of a Llama LM dir, so the LLaVA's language model has exactly its shapes."""
    from tsugiki.factory.lm import TinyLMSpec

    try:
        c = json.loads((Path(lm_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{lm_dir}: cannot read config.json: {e}") from None
    if c.get("model_type") != "llama":
        raise CheckpointError(f"{lm_dir}: the VLM stage needs a Llama LM, not {c.get('model_type')!r}")
    return TinyLMSpec(arch="llama", hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
                      num_heads=c["num_attention_heads"], num_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
                      intermediate_size=c["intermediate_size"], max_position_embeddings=c["max_position_embeddings"],
                      tie_word_embeddings=c.get("tie_word_embeddings", False), vocab_size=c["vocab_size"])


def _fingerprint(lm_dir: Path, budget: VlmBudget, seed: int) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, asdict(budget), seed, VISION, EN_TEMPLATE, scenes.EN_QUESTIONS]).encode())
    for f in sorted(Path(lm_dir).glob("*.safetensors")) + [Path(lm_dir) / "config.json"]:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _load(model_dir: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    with hf_progress_bars_off():
        return LlavaForConditionalGeneration.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)


def _english_sets(budget: VlmBudget, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training items, held-out items): one random stream, cut by scene."""
    items = scenes.english_items(budget.train_scenes + budget.en_eval_scenes, seed)
    cut = 2 * budget.train_scenes
    return items[:cut], items[cut:]


def _batch_tensors(processor, template: str, items: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + answer + </s>`` ids with labels on the answer and </s> only, and the
    pixel values, built by the same processor (image-token expansion, BOS) that generation uses."""
    tok = processor.tokenizer
    prompts = processor(text=[template.format(input=f"{processor.image_token}\n{p.prompt}") for p in items],
                        images=[p.image for p in items], return_tensors=None)
    seqs, labels = [], []
    for ids, p in zip(prompts["input_ids"], items):
        answer = tok(p.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(list(ids) + answer)
        labels.append([-100] * len(ids) + answer)
    width = max(map(len, seqs))
    pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows])  # noqa: E731
    return {"input_ids": pad(seqs, tok.pad_token_id), "labels": pad(labels, -100),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "pixel_values": torch.from_numpy(np.stack(prompts["pixel_values"])).float()}


def train_vision(model, processor, items: Sequence[Pair], budget: VlmBudget, *, seed: int, progress: bool = True) -> list[float]:
    """AdamW on the vision tower and projector only (the language model frozen, as in LLaVA's first
    stage), next-token loss on the answers; returns the loss per step. One thread, seeded: the same
    inputs give the same weights."""
    vision = [model.model.vision_tower, model.model.multi_modal_projector]
    model.requires_grad_(False)
    for m in vision:
        m.requires_grad_(True)
    params = [p for m in vision for p in m.parameters()]
    data = _batch_tensors(processor, EN_TEMPLATE, items)
    losses: list[float] = []
    try:
        # one thread: bit-identical whatever the machine; fastest for a model this small
        with torch_threads(1), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            opt = torch.optim.AdamW(params, lr=budget.lr, weight_decay=0.0, foreach=False)
            # warm up, then decay linearly to 10 % (tiny runs are sensitive to a too large final step)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / budget.warmup) * (1.0 - 0.9 * s / budget.steps))
            order = random.Random(seed)
            model.train()
            bar = tqdm(range(budget.steps), desc="align LLaVA (English)", unit="step", disable=not progress, leave=False)
            for _ in bar:
                idx = torch.tensor(order.sample(range(len(items)), min(budget.batch_size, len(items))))
                batch = {k: v[idx] for k, v in data.items()}
                width = int(batch["attention_mask"].sum(1).max())  # drop all-padding columns
                batch = {k: v[:, :width] if k != "pixel_values" else v for k, v in batch.items()}
                loss = model(**batch).loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)  # the frozen LM gives spiky gradients; clipping keeps runs stable
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        model.eval()
        model.requires_grad_(False)
    return losses


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


def build_llava(llava_lm: Path, out: Path, budget: VlmBudget, *, seed: int, progress: bool = True) -> dict:
    """A tiny LLaVA around `llava_lm`, vision side aligned on English, saved as an HF dir in `out`
    (reused when `out` holds one built from the same LM, budget and seed). Returns its training record:
    seconds, losses, English accuracy of the held-out scenes (greedy answers)."""
    from tsugiki.factory.vlm import TinyVLMSpec, build_tiny_vlm
    from tsugiki.merging.writer import AtomicOutputDir

    key = _fingerprint(llava_lm, budget, seed)
    meta = out / META_FILE
    if meta.is_file():
        record = json.loads(meta.read_text())
        if record.get("fingerprint") == key:
            return record
    start = time.perf_counter()
    train, held_out = _english_sets(budget, seed)
    with AtomicOutputDir(out, force=True) as tmp:
        build_tiny_vlm(tmp, TinyVLMSpec(kind="llava", text=lm_spec(llava_lm), seed=seed, **VISION), language_model=llava_lm)
        model, processor = _load(tmp)
        losses = train_vision(model, processor, train, budget, seed=seed, progress=progress)
        with hf_progress_bars_off():
            model.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        answers = _predict(model, processor, EN_TEMPLATE, held_out, progress)
        record = {"fingerprint": key, "seconds": seconds, "steps": budget.steps, "train_items": len(train),
                  "losses": losses, "en_items": len(held_out), "en_accuracy": english_accuracy(answers, held_out),
                  "en_samples": [[p.id, p.prompt, a, p.answer] for p, a in zip(held_out, answers)]}
        (tmp / META_FILE).write_text(json.dumps(record, ensure_ascii=False, indent=1))
    return record


# ----------------------------------------------------------------------------- grafting and scoring
def graft(llava: Path, lm_dir: Path, out: Path) -> Path:
    """`tsugiki vlm swap LLAVA LM -o OUT`: LLaVA's vision tower and projector, `lm_dir` as language model."""
    from tsugiki.merging.execute import MergeOptions
    from tsugiki.vlm.merge import swap_language_model

    return swap_language_model(llava, lm_dir, out, MergeOptions(force=True, progress=False)).out


def _predict(model, processor, template: str, items: Sequence[Pair], progress: bool) -> list[str]:
    predictor = VQAPredictor(model, processor, template=template, batch_size=16, settings=GENERATION, progress=progress)
    return predictor.predict([p.image for p in items], [p.prompt for p in items])


def word_accuracy(answers: Sequence[str], items: Sequence[Pair]) -> float:
    """Percent of Japanese answers that name the right colour / shape word and no other one."""
    ok = [scenes.named_words(a, scenes.vocabulary("ja", scenes.question_kind(p))) == {p.answer.removesuffix("です。")}
          for a, p in zip(answers, items)]
    return 100.0 * sum(ok) / len(ok)


def score(answers: Sequence[str], items: Sequence[Pair]):
    """(metrics, ci, per-item scores) of Japanese answers: the benchmarks' rouge_ja and word accuracy."""
    from tsugiki.benchmarks.rouge import rouge_ja

    result = rouge_ja([p.answer for p in items], list(answers))
    metrics = {"rougeL_ja": result.scores["rougeL_ja"].value, "rougeL": result.scores["rougeL"].value,
               "word_acc": word_accuracy(answers, items)}
    ci = {k: [result.scores[k].low, result.scores[k].high] for k in ("rougeL_ja", "rougeL")}
    return metrics, ci, result.per_item


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean of a - b, its standard error over items) for per-item scores of the same items."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return mean, se


# ----------------------------------------------------------------------------- the stage
SOURCE_NAME = "llava"


def run_vlm_stage(ctx: StageContext, *, llava_lm: Path, grafts: dict[str, tuple[str, Path]]) -> StageResult:
    """Align a tiny LLaVA around `llava_lm` on English, graft each LM of `grafts` (name -> (role, LM dir))
    into it, score them all on Japanese VQA. Writes under ``ctx.out``: ``llava/`` (cached across runs),
    ``grafts/<name>/``, ``answers/<name>.jsonl``, ``scenes/*.png``."""
    start = time.perf_counter()
    budget = QUICK if ctx.quick else DEFAULT
    if SOURCE_NAME in grafts:
        raise ValueError(f"graft name {SOURCE_NAME!r} is taken by the LLaVA itself")
    for name, (role, _) in grafts.items():
        if role not in ("baseline", "evolved"):  # checked before minutes of training, not after
            raise ValueError(f"graft {name!r}: role must be 'baseline' or 'evolved', not {role!r}")
    llava = ctx.out / "llava"
    record = build_llava(Path(llava_lm), llava, budget, seed=ctx.seed, progress=ctx.progress)
    models = {SOURCE_NAME: ("source", llava)}
    for name, (role, lm_dir) in grafts.items():
        models[name] = (role, graft(llava, Path(lm_dir), ctx.out / "grafts" / name))

    items = scenes.ja_items("test", budget.test_scenes, seed=ctx.seed)
    rows, answers, per_item = [], {}, {}
    for name, (role, path) in tqdm(models.items(), desc="Japanese VQA", unit="model", disable=not ctx.progress):
        model, processor = _load(path)
        answers[name] = _predict(model, processor, JA_TEMPLATE, items, ctx.progress)
        metrics, ci, per_item[name] = score(answers[name], items)
        _write_answers(ctx.out / "answers" / f"{name}.jsonl", items, answers[name], per_item[name])
        rows.append(Row(name, role, metrics, ci, extra={"dir": ctx.rel(path)}))
    for row in rows[1:]:
        diff, se = paired_difference([s["rougeL_ja"] for s in per_item[row.model]], [s["rougeL_ja"] for s in per_item[SOURCE_NAME]])
        row.extra["vs_llava"] = {"diff": diff, "se": se}
    rows[0].extra["english"] = {k: record[k] for k in ("en_accuracy", "en_items", "seconds", "steps")}

    return StageResult(
        stage="vlm", headline="rougeL_ja", rows=rows,
        title="Japanese VQA: Japanese LMs grafted into an English-aligned tiny LLaVA",
        verdict=verdict(rows, per_item), notes=_notes(record, len(items)),
        tables=[_scores_table(rows, len(items)), _english_table(record)],
        samples=_samples(ctx, items, answers, record), seconds=time.perf_counter() - start,
        models={name: ctx.rel(path) for name, (_, path) in models.items()})


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


def _scores_table(rows: list[Row], n: int) -> Table:
    body = []
    for r in rows:
        lo, hi = r.ci["rougeL_ja"]
        vs = r.extra.get("vs_llava")
        body.append([r.model, r.role, f"{r.metrics['rougeL_ja']:.1f} [{lo:.1f}, {hi:.1f}]", f"{r.metrics['rougeL']:.1f}",
                     f"{r.metrics['word_acc']:.1f}", "—" if vs is None else f"{vs['diff']:+.1f} ± {vs['se']:.1f}"])
    return Table(f"Japanese VQA on drawn shapes ({n} questions, scenes unseen in training)",
                 ["model", "role", "rougeL_ja [95% CI]", "rougeL", "word acc %", "Δ rougeL_ja vs LLaVA ± SE"], body,
                 note="rougeL_ja: ROUGE-L (MeCab words) with non-Japanese answers scored 0; word acc: the answer names "
                      "the right colour or shape and no other. A wrong word in the right form (三角です。 for 四角です。) "
                      "still gets ROUGE-L 66.7, so word acc says more about seeing.")


def _english_table(record: dict) -> Table:
    acc, chance = record["en_accuracy"], chance_accuracy()
    body = [[k, f"{acc[k]:.1f}", f"{chance[k]:.1f}"] for k in ("colour", "shape", "all") if k in acc]
    return Table(f"English alignment of the LLaVA ({record['steps']} steps on {record['train_items']} items, "
                 f"{record['seconds']:.0f} s; {record['en_items']} held-out questions)",
                 ["question", "accuracy %", "chance %"], body)


def _notes(record: dict, n: int) -> list[str]:
    return [
        "The vision tower and projector were trained on English questions only (language model frozen); the "
        "grafts keep them bit for bit and never saw a Japanese question about an image.",
        f"Generation: greedy, at most {GENERATION.max_new_tokens} new tokens, no repetition penalty (the seed "
        "paper used 5 beams and penalty 1.5, which would penalise です and 色 already in the question).",
        f"Intervals: 95% bootstrap of the benchmark code (1000 resamples); SE: paired per-question difference over {n} questions.",
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
    held_out = _english_sets(QUICK if ctx.quick else DEFAULT, ctx.seed)[1]
    by_id = {p.id: p for p in held_out}
    for item_id, question, answer, expected in record["en_samples"][:2 * n_scenes]:
        if item_id in by_id:
            prompt = EN_TEMPLATE.format(input=f"<image>\n{question}")
            out.append(Sample(SOURCE_NAME, prompt, answer, expected, _scene_png(ctx, by_id[item_id])))
    return out
