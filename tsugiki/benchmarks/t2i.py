"""`tsugiki eval t2i`: generate images for a prompt set with a diffusers SDXL pipeline, then score them.

Scores (each optional, each needs its own local weights):
- FID against reference features (`.npy`, N x 2048) or a folder of reference images, with the FID
  InceptionV3 (`tsugiki.benchmarks.fid`);
- HPSv2, the mean of 100 x cos(image, prompt) (`tsugiki.benchmarks.hps`).

Outputs in the run folder: `images/00000.png ...`, `grid.png`, `features.npy` (when FID ran), and
`report.json` (the returned dict).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tsugiki.errors import TsugikiError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Prompts from a UTF-8 file: `.txt` (one per line), `.jsonl` (objects with "prompt" or "caption"),
    or `.json` (a list of strings). Blank lines are skipped; an empty set is an error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TsugikiError(f"{p}: prompt file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TsugikiError(f"{p}: cannot read prompts: {e}") from None
    if p.suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append(row["prompt"] if "prompt" in row else row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise TsugikiError(f"{p}:{i}: expected a JSON object with a 'prompt' or 'caption' string") from None
    elif p.suffix == ".json":
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as e:
            raise TsugikiError(f"{p}: invalid JSON: {e}") from None
        if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
            raise TsugikiError(f"{p}: expected a JSON list of prompt strings")
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    prompts = prompts[:limit] if limit is not None else prompts
    if not prompts:
        raise TsugikiError(f"{p}: no prompts")
    return prompts


def image_grid(images: Sequence, cols: int | None = None):
    """One PIL image with the images in rows of `cols` (default: a near-square grid)."""
    from PIL import Image

    if not images:
        raise TsugikiError("image grid: no images")
    cols = cols or math.ceil(math.sqrt(len(images)))
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, math.ceil(len(images) / cols) * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return grid


def load_images(folder: str | Path) -> list:
    from PIL import Image

    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TsugikiError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [Image.open(f).convert("RGB") for f in files]


@dataclass
class T2IOptions:
    preset: str | None = None  # a tsugiki.diffusion.presets name; None keeps the pipeline's scheduler
    steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None  # float16 / bfloat16 / float32 for the pipeline (default: as saved, float32)
    inception_weights: str | None = None
    download_inception: bool = False
    fid_ref: str | None = None
    resize: str = "clean"
    hps_weights: str | None = None
    clip_tokenizer: str | None = None
    allow_pickle: bool = False
    progress: bool = True


def generate(pipeline_dir: str | Path, prompts: Sequence[str], options: T2IOptions) -> tuple[list, dict[str, Any]]:
    """Images for the prompts (one each, seed + i) and the sampling settings used."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from tsugiki.progress import progress_bar

    from tsugiki.diffusion.presets import apply_preset, get_preset
    from tsugiki.hf_load import from_pretrained

    dtypes = {None: None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if options.dtype not in dtypes:
        raise TsugikiError(f"unknown dtype {options.dtype!r} (use float32, float16 or bfloat16)")
    try:
        pipe = from_pretrained(StableDiffusionXLPipeline, str(pipeline_dir), torch_dtype=dtypes[options.dtype]).to(options.device)
    except (OSError, ValueError) as e:
        raise TsugikiError(f"{pipeline_dir}: cannot load an SDXL pipeline ({e})") from None
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = {}
    if options.preset:
        preset = get_preset(options.preset)
        apply_preset(pipe, preset)
        kwargs.update(preset.call_kwargs())
    if options.steps is not None:
        kwargs["num_inference_steps"] = options.steps
    if options.guidance_scale is not None:
        kwargs["guidance_scale"] = options.guidance_scale
    for key in ("height", "width"):
        if getattr(options, key) is not None:
            kwargs[key] = getattr(options, key)
    images = []
    for i, prompt in enumerate(progress_bar(prompts, desc="generating", unit="img", disable=not options.progress)):
        g = torch.Generator("cpu").manual_seed(options.seed + i)
        images.append(pipe(prompt, generator=g, **kwargs).images[0])
    settings = {"scheduler": type(pipe.scheduler).__name__, **kwargs, "seed": options.seed}
    return images, settings


def score_images(images: Sequence, prompts: Sequence[str], options: T2IOptions, out: Path | None = None) -> dict[str, Any]:
    import numpy as np

    report: dict[str, Any] = {}
    if options.fid_ref is not None:
        from tsugiki.benchmarks import fid  # fid and hps import torch and transformers: only when asked for

        weights = options.inception_weights
        if weights is None and options.download_inception:
            weights = fid.download_inception_weights()
        model = fid.load_inception(weights, allow_pickle=options.allow_pickle, device=options.device)
        feats = fid.inception_features(model, images, mode=options.resize, progress=options.progress)
        ref_path = Path(options.fid_ref)
        ref = (fid.load_features(ref_path) if ref_path.suffix == ".npy" else
               fid.inception_features(model, load_images(ref_path), mode=options.resize, progress=options.progress))
        report["fid"] = fid.fid_from_features(feats, ref)
        report["fid_resize"] = options.resize
        report["fid_n"] = [len(feats), len(ref)]
        if out is not None:
            np.save(out / "features.npy", feats)
    if options.hps_weights is not None:
        from tsugiki.benchmarks import hps

        if options.clip_tokenizer is None:
            raise TsugikiError("HPS needs --clip-tokenizer (a local CLIP tokenizer folder, e.g. openai/clip-vit-large-patch14's)")
        model = hps.load_hps_model(options.hps_weights, allow_pickle=options.allow_pickle, device=options.device)
        scores = hps.hps_scores(model, hps.load_clip_tokenizer(options.clip_tokenizer), images, prompts)
        report["hps"] = float(np.mean(scores))
        report["hps_per_image"] = scores
    return report


def evaluate_t2i(pipeline_dir: str | Path, prompts: Sequence[str], out: str | Path,
                 options: T2IOptions = T2IOptions()) -> dict[str, Any]:
    """Generate, save images and grid, score; writes and returns the report."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, settings = generate(pipeline_dir, prompts, options)
    for i, im in enumerate(images):
        im.save(out / "images" / f"{i:05d}.png")
    image_grid(images).save(out / "grid.png")
    report = {"pipeline": str(pipeline_dir), "n": len(images), "sampling": settings,
              **score_images(images, prompts, options, out)}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
