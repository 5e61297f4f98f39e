"""`tsugiki tiny lm|vlm|sdxl`: tiny models in the real Hugging Face / diffusers formats, built offline in
seconds, for trying merges, grafts and evolution. The old spellings `tsugiki tiny-models`, `tsugiki vlm tiny`
and `tsugiki tiny-sdxl` stay as aliases (``LM``, ``VLM``, ``SDXL`` below, added where those verbs were)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tsugiki.commands.verbs import Verb
from tsugiki.factory.archs import SIBLING_KINDS, llava_text_arch_names, tiny_arch_names


def cmd_lm(args: argparse.Namespace) -> int:
    from tsugiki.factory.lm import TinyLMSpec, build_siblings
    from tsugiki.fileio import check_writable_dir

    check_writable_dir(args.output)
    siblings = build_siblings(Path(args.output), n=args.n, spec=TinyLMSpec(arch=args.arch, seed=args.seed), kind=args.kind)
    print(f"base: {siblings.base}")
    for v in siblings.variants:
        print(f"variant: {v}")
    return 0


def _lm_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("-o", "--output", required=True, help="folder to create them in")
    t.add_argument("--arch", default="llama", choices=tiny_arch_names(), help="architecture (default llama)")
    t.add_argument("--kind", default="finetuned", choices=SIBLING_KINDS,
                   help="finetuned: each sibling trained briefly on its own data; perturbed: random weight deltas")
    t.add_argument("-n", type=int, default=2, help="number of variants besides the base")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and the fine-tuning data")


def cmd_vlm(args: argparse.Namespace) -> int:
    from tsugiki.factory.lm import TinyLMSpec
    from tsugiki.factory.vlm import build_graft_set
    from tsugiki.fileio import check_writable_dir

    check_writable_dir(args.output)
    s = build_graft_set(Path(args.output), TinyLMSpec(arch=args.arch, seed=args.seed))
    for label, path in [("llava", s.llava), ("llava_next", s.llava_next), ("llm base", s.llms.base)] + \
            [("llm variant", v) for v in s.llms.variants]:
        print(f"{label}: {path}")
    return 0


def _vlm_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("-o", "--output", required=True, help="folder to create them in")
    t.add_argument("--arch", default="mistral", choices=llava_text_arch_names(), help="language-model architecture")
    t.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def cmd_sdxl(args: argparse.Namespace) -> int:
    from tsugiki.factory.sdxl import build_tiny_sdxl, export_single_file
    from tsugiki.fileio import check_writable_dir

    out = Path(args.output)
    check_writable_dir(out)
    for i in range(args.n):
        path = build_tiny_sdxl(out / f"sdxl_{i}", seed=args.seed, unet_seed=args.seed + i)
        print(f"pipeline: {path}")
        if args.single_file:
            print(f"single file: {export_single_file(path, out / f'sdxl_{i}.safetensors')}")
    return 0


def _sdxl_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("-o", "--output", required=True, help="folder to create them in")
    t.add_argument("-n", type=int, default=2, help="number of pipelines (same text encoders/VAE, different UNets)")
    t.add_argument("--seed", type=int, default=0, help="seed of the shared parts; UNet i uses seed + i")
    t.add_argument("--single-file", action="store_true", help="also export each in the original single-file layout")


LM = Verb("build tiny mergeable sibling LMs (real HF format) offline",
          "Build a tiny base LM and N siblings that share every tensor name and shape, in the real Hugging Face "
          "format, offline: for trying merges and evolution.", _lm_arguments, cmd_lm)
VLM = Verb("build tiny LLaVA, LLaVA-NeXT and sibling LLMs (graftable) offline",
           "Build a tiny LLaVA, a LLaVA-NeXT and sibling LLMs whose language models can be grafted into them; "
           "random weights, offline, for trying the VLM commands.", _vlm_arguments, cmd_vlm)
SDXL = Verb("build tiny SDXL pipelines (real diffusers format) offline",
            "Build tiny SDXL pipelines in the real diffusers layout (shared text encoders and VAE, different UNets), "
            "random weights, offline: for trying SDXL merges.", _sdxl_arguments, cmd_sdxl)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tiny", help="build tiny models (real formats) offline to try merges on: lm, vlm, sdxl",
                       description="Tiny models in the real Hugging Face / diffusers formats, built offline in "
                                   "seconds: sibling LMs, LLaVA models with graftable LLMs, SDXL pipelines.")
    kinds = t.add_subparsers(dest="tiny_command", required=True, metavar="KIND", help="lm, vlm or sdxl")
    LM.add(kinds, "lm")
    VLM.add(kinds, "vlm")
    SDXL.add(kinds, "sdxl")
