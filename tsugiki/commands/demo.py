"""`tsugiki demo`: the seed paper's three experiments at tiny scale, offline, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_demo(args: argparse.Namespace) -> int:
    from tsugiki.demo.run import STAGES, run_demo

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else STAGES
    out = run_demo(Path(args.output), quick=args.quick, seed=args.seed, force=args.force, stages=stages,
                   rebuild_models=args.rebuild_models, progress=not args.no_progress)
    return 1 if out["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo", help="evolve merges of tiny LMs, a tiny LLaVA and tiny SDXL UNets end to end and report (offline)",
        description="The main job on the embedded default models: LM merges evolved in PS, DFS and PS+DFS and "
                    "scored held out against their sources and standard merges; the evolved Japanese LM grafted "
                    "into a tiny LLaVA; SDXL UNets merged block-wise. Writes RUN_DIR/results.json, report.html, "
                    "leaderboard.md and the evolved models. About 11 minutes on 2 CPU cores (--quick: under 3).")
    d.add_argument("-o", "--output", default="tsugiki-demo", metavar="RUN_DIR", help="run directory (default: ./tsugiki-demo); "
                   "rerunning with the same settings continues where it stopped")
    d.add_argument("--quick", action="store_true", help="small budgets for every stage (CI; under 3 minutes)")
    d.add_argument("--seed", type=int, default=0, help="first search seed (the LM stage runs 3 seeds from it)")
    d.add_argument("--stages", default=None, help="comma-separated subset of lm,vlm,sdxl (default: all)")
    d.add_argument("--rebuild-models", action="store_true",
                   help="train the shipped base LM again (about 10 minutes), check it is bit-for-bit the "
                        "shipped file and use it")
    d.add_argument("--force", action="store_true", help="delete an existing demo run directory first")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)
