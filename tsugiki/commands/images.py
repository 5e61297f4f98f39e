"""Image-model verbs: `score fid` and `eval t2i`.

The CLI wires them in: `add_score_fid_parser(score_subparsers)` under the `score` verb, ``T2I`` as the
`t2i` sub-verb of `eval` (tsugiki.commands.bench), and `register(subparsers)` for the old top-level
spellings `eval-t2i` (of `eval t2i`, left out of the list of verbs) and `tiny-sdxl` (of `tiny sdxl`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsugiki.benchmarks.specs import FID_RESIZE_MODES
from tsugiki.commands import tiny
from tsugiki.commands.verbs import Verb
from tsugiki.merging.recipe_schema import FLOAT_DTYPES


def cmd_score_fid(args: argparse.Namespace) -> int:
    from tsugiki.benchmarks.fid import fid_from_features, load_features

    value = fid_from_features(load_features(args.features_a), load_features(args.features_b))
    print(json.dumps({"fid": value}))
    return 0


def add_score_fid_parser(score_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = score_sub.add_parser("fid", help="FID between two saved feature arrays (N x D .npy)",
                             description="Fréchet distance (float64) between the Gaussians fitted to two feature sets; "
                                         "prints {\"fid\": ...}.")
    p.add_argument("features_a", help="first .npy array (N x D, N >= 2)")
    p.add_argument("features_b", help="second .npy array (M x D, M >= 2)")
    p.set_defaults(func=cmd_score_fid)
    return p


def cmd_eval_t2i(args: argparse.Namespace) -> int:
    from tsugiki.benchmarks.t2i import T2IOptions, evaluate_t2i, load_prompts
    from tsugiki.fileio import check_writable_dir

    check_writable_dir(args.output, "run folder")
    options = T2IOptions(preset=args.preset, steps=args.steps, guidance_scale=args.guidance, height=args.height,
                         width=args.width, seed=args.seed, device=args.device, dtype=args.dtype,
                         inception_weights=args.inception_weights, download_inception=args.download_inception,
                         fid_ref=args.fid_ref, resize=args.resize, hps_weights=args.hps_weights,
                         clip_tokenizer=args.clip_tokenizer, allow_pickle=args.allow_pickle, progress=not args.quiet)
    report = evaluate_t2i(args.pipeline, load_prompts(args.prompts, args.limit), Path(args.output), options)
    report.pop("hps_per_image", None)
    print(json.dumps(report, ensure_ascii=False))
    return 0


def _t2i_arguments(p: argparse.ArgumentParser) -> None:
    from tsugiki.diffusion.presets import PRESETS

    p.add_argument("pipeline", help="diffusers SDXL pipeline folder")
    p.add_argument("--prompts", required=True, help="prompt file: .txt (one per line), .jsonl (prompt/caption), .json list")
    p.add_argument("-o", "--output", required=True, help="run folder (images/, grid.png, report.json)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--preset", choices=PRESETS.names(), help="sampling preset (scheduler, steps, guidance)")
    p.add_argument("--steps", type=int, help="inference steps (overrides the preset)")
    p.add_argument("--guidance", type=float, help="guidance scale (overrides the preset)")
    p.add_argument("--height", type=int, help="image height in pixels (default: the preset's, else the pipeline's)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the preset's, else the pipeline's)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, help="pipeline dtype (default: as saved)")
    p.add_argument("--fid-ref", help="reference for FID: features .npy (N x 2048) or a folder of images")
    p.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth (or .safetensors)")
    p.add_argument("--download-inception", action="store_true", help="download the FID Inception weights if not cached")
    p.add_argument("--resize", choices=FID_RESIZE_MODES, default="clean", help="FID resize convention (default: clean)")
    p.add_argument("--hps-weights", help="HPS v2/v2.1 checkpoint (open_clip ViT-H-14 state dict)")
    p.add_argument("--clip-tokenizer", help="local CLIP tokenizer folder for HPS")
    p.add_argument("--allow-pickle", action="store_true", help="allow .pt/.pth weight files (loaded with weights_only=True)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


T2I = Verb("generate images for prompts with an SDXL pipeline; report FID and HPSv2",
           "Generate one image per prompt, save them with a grid PNG, and score FID (against reference features or "
           "images) and HPSv2.", _t2i_arguments, cmd_eval_t2i)


def register(sub: argparse._SubParsersAction) -> None:
    T2I.add_alias(sub, "eval-t2i", "eval t2i", listed=False)
    tiny.SDXL.add_alias(sub, "tiny-sdxl", "tiny sdxl")
