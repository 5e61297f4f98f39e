"""`tsugiki merge`, `tsugiki inspect`, `tsugiki extract-lora`; `tsugiki tiny-models` (an alias of `tsugiki tiny lm`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tsugiki.commands import tiny
from tsugiki.commands.vlm import add_vocab_argument
from tsugiki.merging.recipe_schema import FLOAT_DTYPES


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("B")
    try:
        return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 500M, 2G)") from None


def cmd_merge(args: argparse.Namespace) -> int:
    from tsugiki.merging.checkpoint import local_path
    from tsugiki.merging.execute import MergeOptions, parse_dtype
    from tsugiki.merging.output_dir import check_output
    from tsugiki.merging.recipe import load_recipe
    from tsugiki.merging.refs import split_lora_ref

    from tsugiki.commands.vlm import VOCAB_CHOICES
    from tsugiki.families import merge

    recipe = load_recipe(args.recipe)
    options = MergeOptions(out_dtype=parse_dtype(args.dtype), device=args.device, allow_pickle=args.allow_pickle,
                           force=args.force, max_shard_bytes=args.max_shard_size, seed=args.seed,
                           progress=not args.quiet)
    base_dir = Path(args.recipe).resolve().parent
    parts = [part for r in recipe.model_refs() for part in split_lora_ref(r) if part]  # a model and its adapter
    local = [p for p in (local_path(r, base_dir=base_dir) for r in parts) if p]
    check_output(args.output, force=args.force, sources=local)  # before any source is opened or downloaded
    # the recipe's sources decide the family (tsugiki.families); each ignores the other families' options
    result = merge(recipe, args.output, options, base_dir=base_dir, vocab=VOCAB_CHOICES[args.vocab],
                   components_from=args.components_from, single_file=args.single_file)
    print(f"merged {result.tensors} tensors ({result.bytes_written / 1e6:.1f} MB) in {result.seconds:.2f}s → {result.out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from tsugiki.merging.architecture import architecture_for, describe
    from tsugiki.merging.checkpoint import Checkpoint, resolve_model_ref

    with Checkpoint(resolve_model_ref(args.model), allow_pickle=args.allow_pickle) as ckpt:
        names = ckpt.names()
        config = ckpt.config()
        print(f"{args.model}")
        print(describe(architecture_for(config, names, args.model), names, config))
    return 0


def cmd_extract_lora(args: argparse.Namespace) -> int:
    from tsugiki.merging.extract_lora import ERRORS_FILE, extract_lora_to_disk
    from tsugiki.tables import Table, terminal

    errors = extract_lora_to_disk(args.model, args.base, args.rank, args.output, embeddings=args.embeddings,
                                  force=args.force, allow_pickle=args.allow_pickle)
    rows = [[e.module, e.kind, e.rank or "", f"{e.rel_error:.3e}", f"{e.max_abs_error:.3e}"] for e in errors]
    lines, _ = terminal(Table(["module", "kind", "rank", "rel. error (Frobenius)", "max abs error"], rows), 160, first_width=48)
    print("\n".join(lines))
    worst = max((e.rel_error for e in errors), default=0.0)
    print(f"rank {args.rank} LoRA of {args.model} from {args.base} → {args.output} (worst relative error {worst:.3e}; "
          f"per module: {ERRORS_FILE})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("merge", help="merge models from a recipe (mergekit-compatible YAML)",
                       description="Merge models tensor by tensor from a recipe and write a Hugging Face model dir.")
    m.add_argument("recipe", help="recipe YAML file")
    m.add_argument("-o", "--output", required=True, help="output model directory")
    m.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    m.add_argument("--dtype", choices=FLOAT_DTYPES, help="output dtype (overrides the recipe)")
    m.add_argument("--device", default="cpu", help="device the kernels run on (cpu, cuda, cuda:1, ...)")
    m.add_argument("--seed", type=int, help="seed for randomized methods (overrides the recipe's seed)")
    m.add_argument("--max-shard-size", type=_size, help="largest output shard, e.g. 2G (default 5G)")
    m.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) checkpoints")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_vocab_argument(m)
    m.add_argument("--components-from", metavar="REF",
                   help="SDXL: pipeline whose VAE and scheduler are copied (default: base_model, else the first model)")
    m.add_argument("--single-file", action="store_true",
                   help="SDXL: also write the merged UNet in the original single-file layout")
    m.set_defaults(func=cmd_merge)

    i = sub.add_parser("inspect", help="describe a checkpoint's architecture and tensors",
                       description="Print what tsugiki sees in a checkpoint: its architecture (known or inferred), "
                                   "layer count and each tensor group with dtypes and shapes. Reads headers only.")
    i.add_argument("model", help="model directory, weights file or hub id")
    i.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) checkpoints")
    i.set_defaults(func=cmd_inspect)

    x = sub.add_parser("extract-lora", help="extract a LoRA adapter from a fine-tune and its base (mergekit-extract-lora)",
                       description="Write a peft LoRA adapter of rank RANK that turns BASE into (approximately) MODEL: "
                                   "a truncated SVD of each linear layer's task vector; embeddings, the LM head and "
                                   "norms are stored whole unless --embeddings. Prints each module's reconstruction "
                                   "error and writes them to OUTPUT/extract_lora_errors.json.")
    x.add_argument("--model", required=True, help="the fine-tuned model (dir, hub id, or MODEL+ADAPTER)")
    x.add_argument("--base", required=True, help="its base model")
    x.add_argument("--rank", type=int, required=True, help="the adapter's rank (mergekit's --max-rank)")
    x.add_argument("-o", "--output", required=True, help="the adapter folder to write")
    x.add_argument("--embeddings", action="store_true",
                   help="extract embeddings and the LM head as LoRA too (mergekit's --embed-lora)")
    x.add_argument("--force", action="store_true", help="replace OUTPUT if it exists (one tsugiki wrote)")
    x.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) checkpoints")
    x.set_defaults(func=cmd_extract_lora)

    tiny.LM.add_alias(sub, "tiny-models", "tiny lm")
