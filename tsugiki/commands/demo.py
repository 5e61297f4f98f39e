"""`tsugiki demo`: the seed paper's three experiments at tiny scale, offline, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from tsugiki.engines import engine_names


def cmd_demo(args: argparse.Namespace) -> int:
    from tsugiki.demo.run import STAGES, run_demo
    from tsugiki.engines import fastest_available

    engine = fastest_available() if args.engine == "auto" else args.engine
    if not args.quiet:
        print(f"engine: {engine} (scores the LM stage's PS candidates and held-out problems)", flush=True)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else STAGES
    out = run_demo(Path(args.output), quick=args.quick, seed=args.seed, force=args.force, stages=stages,
                   rebuild_models=args.rebuild_models, mgsm_ja=args.mgsm_ja, progress=not args.quiet, engine=engine,
                   dfs=args.dfs)
    return 1 if out["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo", help="evolve merges of Gemma 3 270M siblings, of a LLaVA's LM with a Japanese LM, of tiny SDXL UNets; report (offline)",
        description="The main job, offline: a Japanese and a math LoRA sibling of the real Gemma 3 270M (shipped "
                    "adapters) merged by CMA-ES in PS (three search seeds; --dfs adds DFS and PS+DFS) and scored on 300 "
                    "held-out Japanese word problems against their sources and standard merges; a LLaVA around the base "
                    "(shipped vision side and LM LoRA) whose LM is merged with the Japanese sibling by CMA-ES in PS, vision "
                    "fixed (three search seeds), scored on 216 Japanese questions about unseen pictures; tiny SDXL UNets "
                    "merged block-wise (two search seeds). Writes RUN_DIR/results.json (with each stage's verdict per "
                    "search seed), report.html, leaderboard.md, the sources and the LLaVA (merged models as recipes). About 22 minutes "
                    "on 2 CPU cores with vLLM installed (`tox -e demo` from a fresh clone: measured 1328 s, the base "
                    "imported from its package included, 1425 s with the install); the base then lives in "
                    "~/.cache/tsugiki (or $TSUGIKI_CACHE). --quick: about 4 minutes (measured 220 s, base cached).")
    d.add_argument("-o", "--output", default="tsugiki-demo", metavar="RUN_DIR", help="run directory (default: ./tsugiki-demo); "
                   "rerunning with the same settings continues where it stopped")
    d.add_argument("--quick", action="store_true", help="small budgets for every stage (CI; about 5 minutes)")
    d.add_argument("--seed", type=int, default=0, help="first search seed: the LM and VLM stages search with seeds SEED, "
                   "SEED+1, SEED+2, the SDXL stage with SEED, SEED+1 (--quick: fewer)")
    d.add_argument("--stages", default=None, help="comma-separated subset of lm,vlm,sdxl (default: all)")
    d.add_argument("--rebuild-models", action="store_true",
                   help="train the shipped LoRA adapters and the LLaVA's weights again (about 36 minutes), check "
                        "each is bit-for-bit the shipped file and use them")
    d.add_argument("--mgsm-ja", action="store_true",
                   help="also score the LM sources and the best evolved LM on the real MGSM-JA (the vendored 250 "
                        "problems, free generation, at most 256 new tokens: about 20 minutes per model on 2 CPU cores, measured 118–137 s per 25 problems)")
    d.add_argument("--dfs", action="store_true",
                   help="the LM stage also runs the DFS and PS+DFS searches for each search seed (layer paths scored by the "
                        "worked answer's log-likelihood with transformers; off by default: they found no working path "
                        "at this scale and cost several minutes per seed)")
    d.add_argument("--engine", choices=["auto", *engine_names()], default="auto",
                   help="what scores text in the LM stage: auto (vllm where installed, else hf), hf (transformers) or "
                        "vllm (pip install 'tsugiki[vllm]'); a run dir keeps the engine it was started with")
    d.add_argument("--force", action="store_true", help="delete an existing demo run directory first")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    d.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)  # the old spelling
    d.set_defaults(func=cmd_demo)
