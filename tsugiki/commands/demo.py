"""`tsugiki demo`."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_demo(args: argparse.Namespace) -> int:
    from tsugiki.demo import run_demo

    run_demo(Path(args.output), seed=args.seed, force=args.force)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="run the main job on the embedded default models")
    d.add_argument("-o", "--output", default="tsugiki-demo", help="run directory (default: ./tsugiki-demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="replace an existing run directory")
    d.set_defaults(func=cmd_demo)
