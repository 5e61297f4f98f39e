"""The SDXL stage: evolve block-wise merge weights of two tiny SDXL UNets trained on different data, and
score the merge on held-out prompts with image metrics.

EvoSDXL-JP (Akiba et al. 2024, arXiv:2403.13187) merged SDXL UNets block by block (text encoders and
VAE fixed) and reported FID and HPSv2. Here, at a scale two CPU cores afford:

- sources: one tiny SDXL pipeline (:func:`tsugiki.factory.sdxl.build_tiny_sdxl`) whose VAE is first
  fitted to the drawn world and whose UNet is pretrained on all 18 prompts (the base), then two
  fine-tunes of that UNet on different data (:mod:`tsugiki.demo.sdxl.data`): ``source A`` on
  red/blue/white shapes, ``source B`` on black/brown/gold ones. Text encoders, tokenizers, VAE and
  scheduler are shared, bit for bit.
- baseline: the uniform average of the two UNets (linear merge, equal weights).
- evolved: CMA-ES over task-arithmetic weights (over the base) of both sources per UNet block
  (:class:`tsugiki.evolution.kinds.sdxl.kind.SDXLBlocksProblem` through :func:`tsugiki.evolution.runner.evolve`),
  starting at the uniform average; fitness: the judge's mean probability of the right prompt on the
  *fitness* prompt split. The best is exported as a diffusers pipeline folder.
- metrics on the disjoint *held-out* split (:func:`tsugiki.demo.sdxl.data.items_of`), all through a
  tiny CLIP "judge" trained on the drawings: its top-1 accuracy (headline: is the image's own prompt
  ranked first of all 18?), its mean probability of the right prompt, HPS as HPSv2 computes it
  (:func:`tsugiki.benchmarks.hps.hps_scores`: 100 x cosine of image and prompt) and FID
  (:func:`tsugiki.benchmarks.fid.fid_from_features`) on the judge's image embeddings against drawn
  references. The judge stands in for the Inception and HPSv2 weights, which cannot be loaded offline:
  the numbers are not comparable to published FID or HPS.

Images come from the diffusers pipeline itself (``lightning-4step`` preset: Euler, trailing timesteps,
4 steps, no guidance — EvoSDXL-JP's 4-step setting), the same seeds for every model. Everything is
built under ``ctx.out``: models are reused while their stamp (seed, training budget) matches, the search
resumes from its run dir (restarted when its config changes), and the evaluation always runs again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tsugiki.demo.sdxl import data
from tsugiki.demo.sdxl.models import (
    FITNESS_SEED,
    FULL,
    HELDOUT_SEED,
    PRESET,
    QUICK,
    SOURCES,
    SDXLBudget,
    build_models,
    load_judge,
    load_pipeline,
    write_references,
    zoom,
)
from tsugiki.demo.stage import (
    Figure,
    Row,
    Sample,
    StageContext,
    StageResult,
    Table,
    evolve_config,
    named_sources,
    paired_seed_verdicts,
    seeds_sentence,
)
from tsugiki.errors import EvolutionError
from tsugiki.threads import torch_threads

HEADLINE = "acc"


ROW_NAMES = {"source_a": "source A (red/blue/white)", "source_b": "source B (black/brown/gold)",
             "uniform_average": "uniform average"}


def evolved_name(seed: int) -> str:
    return f"evolved block-wise TA (seed {seed})"


# ----------------------------------------------------------------------------- sampling and scoring
def sample(pipe, prompts: Sequence[str], seeds: Sequence[int]) -> list:
    """One image per (prompt, seed) with the pipeline's own sampler under :data:`PRESET`, in one batch."""
    from tsugiki.diffusion.presets import apply_preset, get_preset

    preset = get_preset(PRESET)
    apply_preset(pipe, preset)
    embeds, pooled = data.encode_prompts(pipe, prompts)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        return pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, generator=generators,
                    **preset.call_kwargs()).images


def split_prompts(split: str, per_prompt: int, seed: int) -> tuple[list[data.Item], list[int]]:
    """Every prompt of ``split`` ``per_prompt`` times (copy-major) and one noise seed per image."""
    items = data.items_of(split=split)
    base = seed + (FITNESS_SEED if split == "fitness" else HELDOUT_SEED)
    return items * per_prompt, [base + k for k in range(len(items) * per_prompt)]


_FITNESS_CACHE: dict[tuple, dict[str, Any]] = {}


def search_fitness(ctx, pairs=None, *, base: str, judge: str, images_per_prompt: int, seed: int) -> float:
    """Evolution fitness (maximised): the judge's mean probability (%) of the right prompt over the
    candidate UNet's images of the fitness prompts. The candidate (``ctx.model``, merged in place by
    the SDXL blocks problem) runs inside the base pipeline's fixed text encoders, VAE and scheduler.
    ``pairs`` (the config's fitness data) must be the fitness split."""
    expected = [i.prompt for i in data.items_of(split="fitness")]
    if pairs is not None and sorted(p.prompt for p in pairs) != sorted(expected):
        raise EvolutionError("search_fitness: the fitness data must be the SDXL stage's fitness prompts")
    # keyed by file times too: a rebuilt model at the same path must not be served from the cache
    files = (Path(base) / "vae" / "diffusion_pytorch_model.safetensors", Path(judge) / "model.safetensors")
    key = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    if key not in _FITNESS_CACHE:
        _FITNESS_CACHE.clear()
        _FITNESS_CACHE[key] = {"pipe": load_pipeline(Path(base)), "judge": load_judge(Path(judge))}
    cached = _FITNESS_CACHE[key]
    pipe = cached["pipe"]
    pipe.unet = ctx.model
    return split_score(pipe, *cached["judge"], "fitness", int(images_per_prompt), int(seed))


def split_score(pipe, judge, tokenizer, split: str, images_per_prompt: int, seed: int) -> float:
    """The search's number: mean judge probability (%) of the right prompt on ``split``'s images."""
    items, seeds = split_prompts(split, images_per_prompt, seed)
    prompts = [i.prompt for i in items]
    return 100.0 * float(np.mean(data.judge_read(judge, tokenizer, sample(pipe, prompts, seeds), prompts).prob))


def _bootstrap(values: Sequence[float], seed: int) -> tuple[float, list[float]]:
    from tsugiki.benchmarks.stats import BootstrapStream

    est = BootstrapStream(seed=seed).mean_estimate(values)
    return est.value, [est.low, est.high]


def evaluate_model(pipeline_dir: Path, out: Path, judge_dir: Path, references: dict[str, Path], budget: SDXLBudget,
                   seed: int) -> dict[str, Any]:
    """Load the saved pipeline, sample the held-out prompts, save images, grid and judge features under
    ``out`` and score them; also its fitness-split score as the search computes it (the overfitting gap)."""
    from tsugiki.benchmarks.fid import fid_from_features
    from tsugiki.benchmarks.hps import hps_scores
    from tsugiki.benchmarks.t2i import image_grid

    judge, tokenizer = load_judge(judge_dir)
    pipe = load_pipeline(pipeline_dir)
    items, seeds = split_prompts("heldout", budget.eval_images, seed)
    prompts = [i.prompt for i in items]
    images = sample(pipe, prompts, seeds)
    shutil.rmtree(out / "images", ignore_errors=True)  # a previous run may have saved more images
    (out / "images").mkdir(parents=True)
    for i, im in enumerate(images):
        im.save(out / "images" / f"{i:05d}.png")
    zoom(image_grid(images, cols=len(data.items_of(split="heldout")))).save(out / "grid.png")
    feats = data.judge_image_features(judge, images)
    np.save(out / "features.npy", feats)
    reading = data.judge_read(judge, tokenizer, images, prompts)
    hits = reading.hits(prompts)
    hps = hps_scores(judge, tokenizer, images, prompts)
    acc, acc_ci = _bootstrap([100.0 * h for h in hits], seed)
    prob, prob_ci = _bootstrap([100.0 * p for p in reading.prob], seed)
    hps_mean, hps_ci = _bootstrap(hps, seed)
    by_palette = {p: 100.0 * float(np.mean([h for h, it in zip(hits, items) if it.colour in data.PALETTES[p]]))
                  for p in data.PALETTES}
    scores = {"metrics": {"acc": acc, "prob": prob, "hps": hps_mean,
                          "fid": fid_from_features(feats, np.load(references["heldout"])),
                          "prob_fitness": split_score(pipe, judge, tokenizer, "fitness", budget.fitness_images, seed)},
              "ci": {"acc": acc_ci, "prob": prob_ci, "hps": hps_ci},
              "extra": {"n_images": len(images), "acc_palette_a": by_palette["a"], "acc_palette_b": by_palette["b"],
                        "prompts": prompts, "seeds": seeds, "judge_top": reading.top, "hits": hits,
                        "prob_per_image": reading.prob,
                        "hps_per_image": hps}}
    (out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    return scores


# ----------------------------------------------------------------------------- the search
def search_config(paths: dict[str, Path], budget: SDXLBudget, seed: int, data_seed: int) -> dict[str, Any]:
    """The block search with CMA-ES seed ``seed``; its fitness images' noise seeds follow ``data_seed`` (the run's
    ``--seed``), the same for every search seed, as the LM searches share their fitness items."""
    def pairs(split: str) -> list[dict[str, str]]:
        return [{"id": f"sdxl/{i.colour}-{i.shape}", "prompt": i.prompt, "answer": f"{i.colour} {i.shape}"}
                for i in data.items_of(split=split)]

    space: dict[str, Any] = {"kind": "sdxl_blocks", "method": "task_arithmetic", "base_model": "base",
                             "models": list(SOURCES), "units": "blocks",
                             "params": {"weight": {"bounds": [0.0, 1.5], "init": 0.5}}}
    if budget.blocks is not None:
        space["blocks"] = list(budget.blocks)
    return {
        "name": "sdxl-blocks",
        "sources": {name: str(paths[name]) for name in ("base", *SOURCES)},
        "space": space,
        "fitness": {"function": "tsugiki.demo.sdxl.stage:search_fitness",
                    "args": {"base": str(paths["base"]), "judge": str(paths["judge"]),
                             "images_per_prompt": budget.fitness_images, "seed": data_seed},
                    "data": {"pairs": pairs("fitness")}},
        "test": {"data": {"pairs": pairs("heldout")}},  # the runner refuses a fitness split that overlaps it
        "search": {"seed": seed, "population": budget.population, "sigma": budget.sigma, "generations": budget.generations,
                   "workers": 1, "threads": 1},
    }


def run_search(config_data: dict[str, Any], run_dir: Path, export_to: Path, progress: bool) -> dict[str, Any]:
    """Run (or resume) the block search and export its best candidate as a pipeline folder."""
    from tsugiki.evolution.config import load_config
    from tsugiki.evolution.runner import evolve_and_export

    config = evolve_config(config_data, run_dir)
    stored = run_dir / "config.yaml"
    if stored.exists() and load_config(stored).fingerprint() != config.fingerprint():
        shutil.rmtree(run_dir)  # another budget's search: start over rather than refuse
        shutil.rmtree(export_to, ignore_errors=True)
    result, _ = evolve_and_export(config, run_dir, export_to, force=True, keep_existing=True, progress=progress,
                                  allow_code=True)  # the demo's own config and code
    return {"run_dir": run_dir, "model": export_to, "best": result.best, "evaluations": result.evaluations,
            "seconds": result.seconds}


def merge_uniform_average(paths: dict[str, Path], out: Path) -> Path:
    """The baseline: a linear merge of the two source UNets with equal weights, as a pipeline folder."""
    from tsugiki.diffusion.merge import merge_sdxl_to_disk
    from tsugiki.merging.execute import MergeOptions
    from tsugiki.merging.recipe import Recipe

    if (out / "model_index.json").exists():
        return out
    recipe = Recipe.from_dict({"merge_method": "linear", "dtype": "float32",
                               "models": [{"model": str(paths[s]), "parameters": {"weight": 1.0}} for s in SOURCES]},
                              source_name="uniform average")
    merge_sdxl_to_disk(recipe, out, MergeOptions(force=True, progress=False),
                       named=named_sources({s: paths[s] for s in SOURCES}, out))
    return out


# ----------------------------------------------------------------------------- the stage
def run_sdxl_stage(ctx: StageContext, *, budget: SDXLBudget | None = None) -> StageResult:
    """Train the sources, search the block-wise merge, evaluate sources, baseline and evolved merge on
    the held-out prompts; everything under ``ctx.out``. One torch thread throughout (restored after)."""
    with torch_threads(1):
        return _run_sdxl_stage(ctx, budget or (QUICK if ctx.quick else FULL))


def _run_sdxl_stage(ctx: StageContext, budget: SDXLBudget) -> StageResult:
    from tsugiki.progress import progress_bar

    t0 = time.perf_counter()
    out = ctx.out
    ctx.say("[sdxl] tiny SDXL pipeline: fitting its VAE, pretraining the UNet, fine-tuning two sources, "
        "training the judge …")
    paths = build_models(out, budget, ctx.seed, progress=ctx.progress)
    references = write_references(out, paths["judge"], budget, ctx.seed)
    seeds = [ctx.seed + k for k in range(budget.seeds)]
    ctx.say(f"[sdxl] block-wise merge search (CMA-ES, {budget.population} x {budget.generations}), search seed(s) "
            f"{', '.join(map(str, seeds))} …")
    searches = {seed: run_search(search_config(paths, budget, seed, ctx.seed), out / f"search-s{seed}",
                                 out / "merged" / f"evolved-s{seed}", ctx.progress) for seed in seeds}
    names = {**ROW_NAMES, **{f"evolved-s{seed}": evolved_name(seed) for seed in seeds}}
    models = {"source_a": paths["source_a"], "source_b": paths["source_b"],
              "uniform_average": merge_uniform_average(paths, out / "merged" / "uniform_average"),
              **{f"evolved-s{seed}": search["model"] for seed, search in searches.items()}}
    roles = {"source_a": "source", "source_b": "source", "uniform_average": "baseline"}

    ctx.say(f"[sdxl] sampling and scoring {len(models)} models on the held-out prompts …")
    rows, figures, samples, hits = [], [], [], {}
    for key in progress_bar(models, desc="sampling held-out", unit="model", disable=not ctx.progress, leave=False):
        s = evaluate_model(models[key], out / "eval" / key, paths["judge"], references, budget, ctx.seed)
        extra = s["extra"]
        hits[names[key]] = [100.0 * h for h in extra["hits"]]
        rows.append(Row(names[key], roles.get(key, "evolved"), s["metrics"], s["ci"],
                        {k: extra[k] for k in ("n_images", "acc_palette_a", "acc_palette_b")}))
        figures.append(Figure(ctx.rel(out / "eval" / key / "grid.png"),
                              f"{names[key]}: held-out prompts (columns) x {budget.eval_images} seeds (rows)"))
        for i in range(len(data.items_of(split="heldout"))):
            samples.append(Sample(names[key], extra["prompts"][i], f"the judge reads: {extra['judge_top'][i]}",
                                  expected=extra["prompts"][i],
                                  image=ctx.rel(out / "eval" / key / "images" / f"{i:05d}.png")))
    figures.insert(0, Figure(ctx.rel(out / "references" / "heldout_grid.png"),
                             "real drawings of the held-out prompts (FID's reference set)"))
    for seed, search in searches.items():
        for name, caption in (("fitness.png", "block search: fitness (judge's probability of the right prompt, %, "
                                              "fitness split) per candidate"),
                              ("ps_heatmap.png", "evolved task-arithmetic weight per source and UNet block")):
            plot = search["run_dir"] / "plots" / name
            if plot.exists():
                figures.append(Figure(ctx.rel(plot), f"{caption} (search seed {seed})"))

    result = StageResult(stage="sdxl", headline=HEADLINE, rows=rows, lower_is_better=False,
                         title="Block-wise SDXL UNet merge (EvoSDXL-JP, tiny)")
    result.seeds = paired_seed_verdicts(rows, hits, ctx.seed)  # same prompts and noise seeds for every model
    result.verdict = seeds_sentence(result.seeds, HEADLINE) + " (paired, per image). " + verdict(rows)
    result.tables = [search_table(search, budget, seed) for seed, search in searches.items()]
    result.figures = figures
    result.samples = samples
    result.notes = _notes(budget, calibration(paths, references))
    result.models = {names[k]: ctx.rel(p) for k, p in models.items()}
    result.seconds = time.perf_counter() - t0
    return result


def calibration(paths: dict[str, Path], references: dict[str, Path]) -> dict[str, float]:
    """What the metrics give real drawings of the held-out prompts: FID between two independent draws
    (FID's floor here) and the judge's top-1 accuracy on them (the ceiling of ``acc``)."""
    from tsugiki.benchmarks.fid import fid_from_features
    from tsugiki.benchmarks.t2i import load_images

    judge, tokenizer = load_judge(paths["judge"])
    images = load_images(references["calibration"].with_suffix(""))
    prompts = [i.prompt for i in data.items_of(split="heldout")] * (len(images) // len(data.items_of(split="heldout")))
    return {"fid_real": fid_from_features(np.load(references["calibration"]), np.load(references["heldout"])),
            "acc_real": 100.0 * float(np.mean(data.judge_accuracy(judge, tokenizer, images, prompts)))}


def verdict(rows: list[Row]) -> str:
    """Plain words: is the best evolved merge's held-out accuracy (over the search seeds) above the baseline's
    and every source's, and do the bootstrap intervals separate them?"""
    evolved = [r for r in rows if r.role == "evolved"]
    ev = max(evolved, key=lambda r: r.metrics[HEADLINE])
    others = [r for r in rows if r.role != "evolved"]
    base = next(r for r in rows if r.role == "baseline")
    best = max(others, key=lambda r: r.metrics[HEADLINE])
    clear = ev.ci[HEADLINE][0] > max(o.ci[HEADLINE][1] for o in others)
    if ev.metrics[HEADLINE] > best.metrics[HEADLINE]:
        head = (f"The best evolved block-wise merge ({ev.model}) has the highest held-out judge accuracy" +
                (", with its 95% interval above every other model's." if clear else
                 ", but the 95% intervals overlap, so this run does not show it is better."))
    elif ev.metrics[HEADLINE] == best.metrics[HEADLINE]:
        head = f"The best evolved block-wise merge only ties the best other model ({best.model}) on held-out judge accuracy."
    else:
        head = f"No evolved block-wise merge has the highest held-out judge accuracy ({best.model} does)."
    return (f"{head} Judge accuracy: evolved {ev.metrics[HEADLINE]:.1f}% vs {base.metrics[HEADLINE]:.1f}% for the "
            f"uniform average and {best.metrics[HEADLINE]:.1f}% for the best other model ({best.model}); FID "
            f"{ev.metrics['fid']:.2f} vs {base.metrics['fid']:.2f} (average). "
            + (f"Best of {len(evolved)} search seeds." if len(evolved) > 1 else "One search seed."))


def search_table(search: dict[str, Any], budget: SDXLBudget, seed: int) -> Table:
    best = search["best"]
    units = sorted({k.split(".weight.")[1] for k in best["params"]}, key=_block_order)
    body = [[u, *(f"{best['params'][f'{m}.weight.{u}']:.3f}" for m in SOURCES)] for u in units]
    blocks = ("all 20 UNet blocks" if budget.blocks is None else
              f"blocks {', '.join(budget.blocks)}; 'rest' = every other tensor")
    title = (f"Evolved merge, search seed {seed}: task-arithmetic weight of each source per UNet block (best of "
             f"{search['evaluations']} candidates, fitness {best['fitness']:.2f})")
    return Table(title, ["block", *SOURCES], body,
                 note=f"CMA-ES, population {budget.population}, {budget.generations} generations, sigma {budget.sigma}, "
                      "weights in [0, 1.5] "
                      f"starting at 0.5 (= the uniform average); searched: {blocks}.")


def _block_order(unit: str) -> int:
    from tsugiki.diffusion.blocks import BLOCKS

    return BLOCKS.index(unit) if unit in BLOCKS else len(BLOCKS)


def _notes(budget: SDXLBudget, cal: dict[str, float]) -> list[str]:
    return [
        "Every number here comes from a tiny CLIP 'judge' trained for "
        f"{budget.judge_steps} steps on the drawn images: FID is the project's Fréchet distance "
        "(tsugiki.benchmarks.fid) on the judge's 32-d image embeddings, not on Inception features; HPS is the "
        "HPSv2 formula (tsugiki.benchmarks.hps, 100 x cosine of image and prompt) with the judge, not the HPSv2 "
        "weights (neither can be loaded offline). They are not comparable to published FID or HPS.",
        f"Calibration on real drawings of the held-out prompts: FID between two independent draws "
        f"{cal['fid_real']:.2f}; judge accuracy {cal['acc_real']:.0f}% (chance: 1 in 18 = 5.6%).",
        "Headline: the judge's top-1 accuracy (CLIP zero-shot reading among all 18 prompts), because it "
        "asks whether the image shows its prompt. FID here mostly measures blur (the generated 16 px images "
        "are far from the crisp drawings whatever the colour) and, on a few dozen images, rewards noise "
        "that spreads the features: a search that optimised it produced noise.",
        f"Images: 16 x 16 px, a 1.6 M-parameter UNet pretrained {budget.base_steps} steps on all prompts and "
        f"fine-tuned {budget.unet_steps} steps per source (v-prediction), sampled with the {PRESET} preset "
        "(same noise seeds for every model).",
        "Fitness and held-out prompts are disjoint (the evolution runner checks): the search never saw a "
        "held-out prompt.",
        f"Held-out: {len(data.items_of(split='heldout'))} prompts x {budget.eval_images} noise seeds per model; "
        "intervals: 95% bootstrap over images (1000 resamples), FID has none. Palette A = red/blue/white prompts "
        "(source A's fine-tuning colours), B = black/brown/gold (details: accuracy per palette). prob_fitness is "
        "the search's own number on the fitness prompts (its gap to held-out prob shows overfitting).",
    ]
