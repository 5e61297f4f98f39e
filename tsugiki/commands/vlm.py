"""`tsugiki vlm swap|ask`: LLaVA-family grafting helpers (`tsugiki vlm tiny` is an alias of `tsugiki tiny vlm`).
(Merging a recipe with a VLM source is plain `tsugiki merge`.)"""

from __future__ import annotations

import argparse

from tsugiki.commands import tiny
from tsugiki.merging.recipe_schema import FLOAT_DTYPES

VOCAB_CHOICES = {"error": "error", "embed-slice": "embed_slice"}


def add_vocab_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", choices=list(VOCAB_CHOICES), default="error",
                        help="when a source's vocabulary size differs from the VLM's: error (default), or embed-slice: "
                             "merge the shared first rows of embedding/lm_head and keep the VLM's rows beyond")


def cmd_swap(args: argparse.Namespace) -> int:
    from tsugiki.merging.checkpoint import local_path
    from tsugiki.merging.execute import MergeOptions, parse_dtype
    from tsugiki.merging.output_dir import check_output
    from tsugiki.vlm.merge import swap_language_model

    check_output(args.output, force=args.force, sources=filter(None, map(local_path, (args.vlm, args.llm))))
    options = MergeOptions(out_dtype=parse_dtype(args.dtype), allow_pickle=args.allow_pickle, force=args.force,
                           progress=not args.quiet)
    result = swap_language_model(args.vlm, args.llm, args.output, options, vocab=VOCAB_CHOICES[args.vocab])
    print(f"swapped {args.llm} into {args.vlm}: {result.tensors} tensors in {result.seconds:.2f}s → {result.out}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from PIL import Image

    from tsugiki.errors import TsugikiError
    from tsugiki.vlm.generate import GenerationSettings, VQAPredictor

    images = []
    for path in args.images:
        try:
            images.append(Image.open(path).convert("RGB"))
        except OSError as e:
            raise TsugikiError(f"{path}: cannot open image: {e}") from None
    settings = GenerationSettings(num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    predictor = VQAPredictor.from_pretrained(args.model, device=args.device, template=args.template,
                                             batch_size=args.batch_size, settings=settings, progress=not args.quiet)
    for path, answer in zip(args.images, predictor.predict(images, [args.question] * len(images))):
        print(f"{path}\t{answer}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    vlm = sub.add_parser("vlm", help="LLaVA-family models: swap the language model, ask about images, tiny models",
                         description="Merging a recipe whose sources include a LLaVA-family model is `tsugiki merge`.")
    verbs = vlm.add_subparsers(dest="vlm_command", required=True, metavar="VERB", help="swap, ask or tiny")

    s = verbs.add_parser("swap", help="replace a VLM's language model with a standalone LLM (vision tower kept)",
                         description="Write a model dir with VLM's vision tower and projector bit for bit and LLM as its "
                                     "language model (hidden size and layer count must match; see --vocab).")
    s.add_argument("vlm", help="LLaVA / LLaVA-NeXT model directory or hub id")
    s.add_argument("llm", help="causal LM with the same hidden size and layer count")
    s.add_argument("-o", "--output", required=True, help="output model directory")
    s.add_argument("--dtype", choices=FLOAT_DTYPES, help="language-model dtype (vision is copied as is)")
    s.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    s.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) checkpoints")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_vocab_argument(s)
    s.set_defaults(func=cmd_swap)

    a = verbs.add_parser("ask", help="answer a question about images (seed's Japanese VQA settings)",
                         description="Ask a LLaVA-family model one question about each image; prints one answer per "
                                     "image (beam search with the seed's Japanese VQA settings by default).")
    a.add_argument("model", help="LLaVA-family model directory")
    a.add_argument("images", nargs="+", help="image files")
    a.add_argument("--question", required=True, help="the question, asked about each image")
    a.add_argument("--template", default="ja-shisa-vqa", help="prompt template name or a string with {input}")
    a.add_argument("--beams", type=int, default=5, help="beam width (default 5, the seed's)")
    a.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    a.add_argument("--batch-size", type=int, default=4, help="images per generate() call (default 4)")
    a.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, cuda:1, ...)")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    a.set_defaults(func=cmd_ask)

    tiny.VLM.add_alias(verbs, "vlm tiny", "tiny vlm")
