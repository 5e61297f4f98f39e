"""The demo's LM experiment over three search seeds, printed as the held-out table (not a CI test).

    python perf/demo_lm_seeds.py -o /tmp/lm-seeds                      # the demo's budget: PS, seeds 0 1 2
    python perf/demo_lm_seeds.py -o /tmp/lm-a2 --adapters DIR          # other sibling adapters (DIR/ja, DIR/math)
    python perf/demo_lm_seeds.py -o /tmp/lm-tf --fitness teacher_forced   # the teacher-forced design
    python perf/demo_lm_seeds.py -o /tmp/lm-big --population 10 --generations 10   # 100 candidates per search
    python perf/demo_lm_seeds.py -o /tmp/lm-dfs --spaces PS DFS PS+DFS --dfs-fitness loglik
    python perf/demo_lm_seeds.py -o /tmp/lm-est --estimate anchors:20   # estimated fitness (20 of the 100 problems)

Runs the same code as `tsugiki demo`'s LM stage on the real Gemma 3 270M (siblings materialised from their
adapters, baselines, the searches asked for per seed, held-out MGSM-style scoring) and prints, per model,
acc_ja ± binomial SE and whether the best evolved model of each seed beats every source and baseline by
≥ 2 SE. Sources and baselines are scored once; each seed adds its searches and their evaluations.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from tsugiki.demo.lm import stage as lm_stage
from tsugiki.demo.lm import search as lm_search
from tsugiki.demo.report import terminal_leaderboard
from tsugiki.demo.stage import StageContext


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True, type=Path, help="work dir (reused: finished parts are kept)")
    ap.add_argument("--adapters", type=Path, default=None, help="dir with ja/ and math/ LoRA adapters (default: shipped)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default: 0 1 2)")
    ap.add_argument("--generations", type=int, default=None, help="CMA-ES generations per search (default: the demo's)")
    ap.add_argument("--fitness", choices=lm_search.FITNESS_KINDS, default=lm_stage.FULL.fitness,
                    help="search fitness: acc_ja of greedy answers (the demo's, the seed's) or the teacher-forced design")
    ap.add_argument("--dfs-fitness", choices=lm_search.DFS_FITNESS_KINDS, default=lm_stage.FULL.dfs_fitness,
                    help="DFS and PS+DFS fitness: as PS (generated) or the worked answer's log-likelihood (loglik)")
    ap.add_argument("--spaces", nargs="+", choices=lm_stage.KINDS, default=list(lm_stage.FULL.spaces),
                    help="which searches to run per seed (default: the demo's)")
    for name, what in (("population", "CMA-ES population"), ("dfs-generations", "DFS and PS+DFS generations"), ("fitness-n", "fitness problems"),
                       ("validation-n", "validation problems"), ("test-n", "held-out problems")):
        ap.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default: the demo's)")
    ap.add_argument("--estimate", default=None, metavar="METHOD:ITEMS",
                    help="PS: score each candidate on ITEMS fitness items and estimate the rest (fitness.estimate: "
                         "subsample, anchors or irt; e.g. anchors:20; default: the demo's)")
    ap.add_argument("--engine", choices=["auto", "hf", "vllm"], default="auto",
                    help="what scores candidates and the held-out set (auto: the fastest installed, as the demo)")
    args = ap.parse_args(argv)

    from tsugiki.engines import fastest_available

    engine = fastest_available() if args.engine == "auto" else args.engine
    budget = dataclasses.replace(lm_stage.FULL, seeds=tuple(args.seeds), fitness=args.fitness, spaces=tuple(args.spaces),
                                 engine=engine, dfs_fitness=args.dfs_fitness)
    sizes = {"generations": args.generations, "population": args.population, "dfs_generations": args.dfs_generations, "fitness_n": args.fitness_n,
             "validation_n": args.validation_n, "test_n": args.test_n}
    budget = dataclasses.replace(budget, **{k: v for k, v in sizes.items() if v})
    if args.estimate:
        method, _, items = args.estimate.partition(":")
        if not items.isdigit():
            ap.error(f"--estimate: METHOD:ITEMS (e.g. anchors:20), not {args.estimate!r}")
        budget = dataclasses.replace(budget, estimate_method=method, estimate_items=int(items))
    out = args.out.resolve()
    (out / "lm").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result, _ = lm_stage.run_lm_stage(StageContext(out, out / "lm", quick=False, progress=True, engine=engine),
                                      adapters=args.adapters, budget=budget)
    print(f"\n[adapters={args.adapters or 'shipped'}, fitness={args.fitness}, spaces={args.spaces}, engine={engine}, "
          f"{budget}]")
    print(terminal_leaderboard([result]), end="")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
