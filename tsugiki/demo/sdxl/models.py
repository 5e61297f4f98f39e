"""The SDXL stage's models: its budgets, and the tiny pipelines and CLIP judge it trains and reuses
(a VAE fitted to the drawn world, a UNet pretrained on all prompts, two fine-tunes on different
palettes, the judge), each rebuilt only when its stamp (seed, training budget) changes."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsugiki.demo.sdxl import data

# seeds of the sampled noise: fitness images, held-out images and the drawn references never share one
FITNESS_SEED, HELDOUT_SEED, HELDOUT_REF_SEED, CALIBRATION_SEED = 10_000, 20_000, 40_000, 50_000
SOURCES = {"source_a": "a", "source_b": "b"}  # source name -> palette
PRESET = "lightning-4step"
STAMP_VERSION = 1
GRID_ZOOM = 4  # 16 px images are shown 4x larger (nearest neighbour)


@dataclass(frozen=True)
class SDXLBudget:
    vae_steps: int
    judge_steps: int
    base_steps: int  # UNet pretraining on all 18 prompts
    unet_steps: int  # each source's fine-tuning on its palette
    fitness_images: int  # per fitness prompt, per candidate
    eval_images: int  # per held-out prompt, per model
    ref_images: int  # drawn references per prompt (FID's real set)
    population: int
    generations: int
    sigma: float  # CMA-ES step size in sigmoid space (0.5 moves a weight at 0.5 by about +-0.16)
    blocks: tuple[str, ...] | None  # searched UNet blocks (None: all 20); the others share one "rest" weight
    seeds: int = 1  # searches, with search seeds --seed, --seed + 1, ...


# A small space for a budget of ~50 candidates: BASE (time and pooled-prompt embeddings, conv_in/out), the
# deepest cross-attention block of the encoder (IN08) and of the decoder (OUT02), each with a 10-layer
# transformer, and the middle block; every other tensor shares one "rest" weight per source. (All 12
# cross-attention blocks + BASE, 26 weights, overfitted the fitness split: 27.8 vs 20.3 there, 6.9% vs 19.4%
# held-out accuracy against the uniform average, sigma 1.0.)
SEARCHED_BLOCKS = ("BASE", "IN08", "M00", "OUT02")
# Held-out: 9 prompts x 34 noise seeds = 306 images per model (what a paired per-image comparison needs to
# separate a few points of accuracy; sampling them takes ~5 s per model).
# Two search seeds of 40 candidates (three of 48 fitted the demo's 25 minutes until the VLM stage searched too;
# those lost to the uniform average and source B in 3 of 3 seeds: README).
FULL = SDXLBudget(vae_steps=250, judge_steps=300, base_steps=60, unet_steps=60, fitness_images=4, eval_images=34,
                  ref_images=8, population=8, generations=5, sigma=0.5, blocks=SEARCHED_BLOCKS, seeds=2)
QUICK = SDXLBudget(vae_steps=20, judge_steps=30, base_steps=3, unet_steps=3, fitness_images=1, eval_images=2,
                   ref_images=2, population=4, generations=2, sigma=0.5, blocks=SEARCHED_BLOCKS, seeds=2)


# ----------------------------------------------------------------------------- quiet loading
def _quiet():
    """No per-load progress bars or accelerate notices from diffusers/transformers inside the stage's own bars."""
    from tsugiki.hf_quiet import hf_progress_bars_off

    return hf_progress_bars_off(diffusers=True, errors_only=True)


def load_pipeline(path: Path):
    from diffusers import StableDiffusionXLPipeline

    from tsugiki.hf_load import from_pretrained

    with _quiet():
        pipe = from_pretrained(StableDiffusionXLPipeline, str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_judge(path: Path):
    from transformers import CLIPModel

    from tsugiki.benchmarks.hps import load_clip_tokenizer
    from tsugiki.hf_load import from_pretrained

    with _quiet():
        return from_pretrained(CLIPModel, str(path)).eval().requires_grad_(False), load_clip_tokenizer(path)


# ----------------------------------------------------------------------------- building the models
MODEL_FIELDS = ("vae_steps", "judge_steps", "base_steps", "unet_steps", "ref_images")


def _stamp(seed: int, budget: SDXLBudget) -> dict[str, Any]:
    """What the built models and references depend on (the search settings are the search's config)."""
    return {"version": STAMP_VERSION, "seed": seed, **{k: getattr(budget, k) for k in MODEL_FIELDS}}


def build_models(out: Path, budget: SDXLBudget, seed: int, *, progress: bool = True) -> dict[str, Path]:
    """``out/models/{base, source_a, source_b, judge}``: built unless ``out/models/stamp.json`` matches
    (seed, training budget); a rebuild also drops what depends on the models (references, search, merges)."""
    models = out / "models"
    paths = {name: models / name for name in ("base", *SOURCES, "judge")}
    stamp = json.dumps(_stamp(seed, budget), sort_keys=True)
    stamp_file = models / "stamp.json"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return paths
    for stale in (models, out / "references", *out.glob("search*"), out / "merged", out / "eval"):
        shutil.rmtree(stale, ignore_errors=True)
    from diffusers import EulerDiscreteScheduler

    from tsugiki.factory.sdxl import build_tiny_sdxl

    with _quiet():
        build_tiny_sdxl(models / "untrained", seed=seed)
    pipe = load_pipeline(models / "untrained")
    data.train_vae(pipe.vae, steps=budget.vae_steps, seed=seed, progress=progress)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type=data.PREDICTION_TYPE)
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        tok.model_max_length = data.PROMPT_TOKENS
    timesteps = sampler_timesteps(pipe)
    data.finetune_unet(pipe, data.world_items(), steps=budget.base_steps, seed=seed + 1, per_item=2,
                       timesteps=timesteps, progress=progress, desc="pretraining base UNet")
    with _quiet():
        pipe.save_pretrained(paths["base"])  # the pretrained model both sources start from
    shutil.rmtree(models / "untrained")
    base_unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for i, (name, palette) in enumerate(SOURCES.items()):
        pipe.unet.load_state_dict(base_unet)
        data.finetune_unet(pipe, data.items_of(palette=palette), steps=budget.unet_steps, seed=seed + 2 + i,
                           per_item=4, lr=2e-3, timesteps=timesteps, progress=progress,
                           desc=f"fine-tuning {name} (palette {palette.upper()})")
        shutil.copytree(paths["base"], paths[name])  # text encoders, VAE, scheduler: the base's files
        shutil.rmtree(paths[name] / "unet")
        with _quiet():
            pipe.unet.save_pretrained(paths[name] / "unet")
    _build_judge(paths["judge"], pipe.tokenizer, budget, seed, progress)
    stamp_file.write_text(stamp)
    return paths


def _build_judge(path: Path, tokenizer, budget: SDXLBudget, seed: int, progress: bool) -> None:
    from tsugiki.benchmarks.hps import load_clip_tokenizer

    with _quiet():
        tokenizer.save_pretrained(path)
    tokenizer = load_clip_tokenizer(path)  # train with exactly the tokenizer the scorers load
    judge = data.build_judge(tokenizer, seed)
    data.train_judge(judge, tokenizer, steps=budget.judge_steps, seed=seed, progress=progress)
    with _quiet():
        judge.save_pretrained(path)


def write_references(out: Path, judge_dir: Path, budget: SDXLBudget, seed: int) -> dict[str, Path]:
    """Drawings of the held-out prompts (FID's real set): PNGs and the judge's features (.npy); and an
    independent second draw (``calibration``: what FID and the judge give two sets of real images)."""
    from tsugiki.benchmarks.t2i import image_grid

    judge, _ = load_judge(judge_dir)
    files = {}
    for name, ref_seed in (("heldout", HELDOUT_REF_SEED), ("calibration", CALIBRATION_SEED)):
        target = out / "references" / f"{name}.npy"
        files[name] = target
        if target.exists():
            continue
        items = data.items_of(split="heldout")
        images = data.draw_many(items, budget.ref_images, seed + ref_seed)
        folder = out / "references" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            im.save(folder / f"{i:05d}.png")
        zoom(image_grid(images, cols=len(items))).save(out / "references" / f"{name}_grid.png")
        np.save(target, data.judge_image_features(judge, images))
    return files


def zoom(image):
    from PIL import Image

    return image.resize((image.width * GRID_ZOOM, image.height * GRID_ZOOM), Image.Resampling.NEAREST)


def sampler_timesteps(pipe) -> list[int]:
    """The timesteps :data:`PRESET` samples at (999, 749, 499, 249 for 4 trailing steps)."""
    import diffusers

    from tsugiki.diffusion.presets import get_preset

    preset = get_preset(PRESET)
    scheduler = getattr(diffusers, preset.scheduler).from_config(pipe.scheduler.config, **preset.scheduler_overrides)
    scheduler.set_timesteps(preset.steps)
    return [int(t) for t in scheduler.timesteps]
