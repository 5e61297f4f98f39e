"""`tsugiki import-gguf`: a llama.cpp GGUF file → a Hugging Face model dir."""

from __future__ import annotations

import argparse

from tsugiki.merging.recipe_schema import FLOAT_DTYPES


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from tsugiki.merging.gguf import import_gguf

    result = import_gguf(args.file, args.output, dtype=args.dtype, force=args.force)
    print(f"imported {result.tensors} tensors ({result.bytes_written / 1e6:.1f} MB, {args.dtype}) from {args.file} "
          f"(sha256 {result.sha256[:12]}…) in {result.seconds:.1f}s → {result.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "import-gguf", help="convert a GGUF file (llama.cpp) into a Hugging Face model dir",
        description="Dequantize a GGUF file exactly as transformers' from_pretrained(..., gguf_file=...) does and "
                    "write a plain Hugging Face model dir: safetensors weights, config.json, the tokenizer converted "
                    "from the GGUF vocabulary, generation_config.json and a model card with the file's SHA-256. "
                    "(A merge recipe may also name the .gguf file directly.)")
    g.add_argument("file", help="GGUF file")
    g.add_argument("-o", "--output", required=True, help="output model directory")
    g.add_argument("--dtype", default="float32", choices=FLOAT_DTYPES,
                   help="dtype of the written weights (default: float32, what the dequantized values are)")
    g.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    g.set_defaults(func=cmd_import_gguf)
