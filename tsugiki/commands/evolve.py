"""`tsugiki evolve`: run, continue or export an evolutionary merge search (PS, DFS, PS+DFS)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tsugiki.errors import EvolutionError


def cmd_evolve(args: argparse.Namespace) -> int:
    from tsugiki.evolution.config import RESUMABLE_CHANGES, load_config
    from tsugiki.evolution.report import summary
    from tsugiki.evolution.runner import evolve_and_export

    if args.plan:
        if args.config is None:
            raise EvolutionError("--plan needs CONFIG")
        from tsugiki.evolution.plan import plan_from_sources

        # configs only (a hub source's config.json is fetched or read from the cache): no weights, no data
        print(plan_from_sources(load_config(args.config), args.output or ".").summary())
        return 0
    if (args.config is None) == (args.resume is None):
        raise EvolutionError("give either CONFIG (with -o RUN_DIR) or --resume RUN_DIR")
    if args.config is not None and args.output is None:
        raise EvolutionError("-o RUN_DIR is required with CONFIG (rerunning with the same RUN_DIR continues the run)")
    run_dir = Path(args.resume or args.output)
    if args.config is not None:
        config = load_config(args.config)
    else:
        config = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
        if config is None:
            raise EvolutionError(f"{run_dir}: not a run dir (no config.yaml) to resume")
    front = _front_choice(args, config)
    changes = {k: getattr(args, k) for k in RESUMABLE_CHANGES if getattr(args, k) is not None}
    if changes:
        config = config.with_search(**changes)
    result, out = evolve_and_export(config, run_dir, args.export, force=args.force, progress=not args.quiet,
                                    allow_code=args.allow_code, **front)
    if out is not None:
        print(f"exported {'the chosen front point' if front else 'the best candidate'} → {out}")
    print(summary(run_dir, stop_reason=result.stop_reason))
    return 0


def _front_choice(args: argparse.Namespace, config) -> dict:
    """``--front-index`` / ``--front-weights`` as evolve_and_export's keywords, refused up front when they do
    not fit the config (one objective, a weight per objective, non-negative, not all 0)."""
    if args.front_index is None and args.front_weights is None:
        return {}
    flag = "--front-index" if args.front_index is not None else "--front-weights"
    if args.front_index is not None and args.front_weights is not None:
        raise EvolutionError("give --front-index or --front-weights, not both")
    if args.export is None:
        raise EvolutionError(f"{flag} chooses what --export writes; give --export DIR")
    names = [o.name for o in config.spec.objectives]
    if not names:
        raise EvolutionError(f"{flag}: {config.source_name} has one fitness, no front (a list of objectives has one)")
    if args.front_index is not None:
        if args.front_index < 0:
            raise EvolutionError(f"--front-index {args.front_index}: expected a position in front.json (0, 1, ...)")
        return {"front_index": args.front_index}
    try:
        weights = [float(w) for w in args.front_weights.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(names) or any(not 0 <= w < float("inf") for w in weights) or not any(weights):
        raise EvolutionError(f"--front-weights {args.front_weights!r}: expected {len(names)} non-negative numbers, not "
                             f"all 0, separated by commas (one per objective: {', '.join(names)})")
    return {"front_weights": weights}


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evolve", help="evolve merge recipes with CMA-ES (PS, DFS, PS+DFS); resumable",
                       description="Search merge recipes (parameter space, data-flow space or both) with CMA-ES. "
                                   "Rerunning with the same RUN_DIR, or --resume RUN_DIR, continues a stopped run.")
    e.add_argument("config", nargs="?", help="evolve config YAML (see configs/tiny-ps.yaml)")
    e.add_argument("-o", "--output", help="run directory (created, or continued if it holds this config's run)")
    e.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its own config")
    e.add_argument("--workers", type=int, help="parallel evaluation processes (default: the config's)")
    # checked with the config's search.backend (its names: tsugiki.evolution.search_config, read without torch
    # only once a config is): a wrong name is the config's one-line error
    e.add_argument("--backend", metavar="NAME", help="where workers run: local or ray (ray: optional dependency)")
    e.add_argument("--generations", type=int, help="total generations (may be raised to extend a run)")
    e.add_argument("--max-evaluations", dest="max_evaluations", type=int, help="total evaluation budget")
    e.add_argument("--export", metavar="DIR", help="write the best candidate as a merged model dir at the end")
    e.add_argument("--front-index", dest="front_index", type=int, metavar="K",
                   help="multi-objective run: --export the point at position K of RUN_DIR/front.json (default: the best)")
    e.add_argument("--front-weights", dest="front_weights", metavar="W1,W2,...",
                   help="multi-objective run: --export the front point with the highest weighted sum of min-max "
                        "normalised objectives (one weight per objective, in the config's order)")
    e.add_argument("--force", action="store_true", help="replace the --export DIR if it exists")
    e.add_argument("--plan", action="store_true",
                   help="print the search space (dimensions by part) and the evaluation budget, then exit; needs no "
                        "-o and reads only the sources' config.json files (tiny models are described, not built), "
                        "no weights or data")
    e.add_argument("--allow-code", dest="allow_code", action="store_true",
                   help="run a fitness function the config names as code (file.py:function or module:function); "
                        "without it such a config is refused before anything runs")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_evolve)
