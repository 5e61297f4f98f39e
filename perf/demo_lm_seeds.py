"""The demo's LM experiment over its search seeds, printed as the held-out table (not a CI test).

    python perf/demo_lm_seeds.py -o /tmp/lm-worked                       # the demo's design
    python perf/demo_lm_seeds.py -o /tmp/lm-direct --design direct       # answers without the worked sum
    python perf/demo_lm_seeds.py -o /tmp/lm-lr3 --sibling-lr 3e-4        # gentler fine-tunes

Runs the same code as `tsugiki demo`'s LM stage (siblings, baselines, PS / DFS / PS+DFS per seed, held-out
MGSM-style scoring) and prints, per model, acc_ja ± binomial SE, and whether the best evolved model of each
seed beats every source and baseline by ≥ 2 SE. Takes 10–20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from tsugiki.demo import lm_stage
from tsugiki.demo.stage import StageContext


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True, type=Path, help="work dir (reused: finished parts are kept)")
    ap.add_argument("--design", default=lm_stage.DEFAULT_DESIGN, choices=("symbolic", "steps", "worked", "direct"))
    ap.add_argument("--base", type=Path, default=None, help="base model dir (default: the shipped one)")
    ap.add_argument("--sibling-lr", type=float, default=None, help="fine-tuning learning rate of both siblings")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default: the demo's)")
    args = ap.parse_args(argv)

    budget = lm_stage.FULL
    if args.sibling_lr is not None:
        budget = dataclasses.replace(budget, ja=dataclasses.replace(budget.ja, lr=args.sibling_lr),
                                     math=dataclasses.replace(budget.math, lr=args.sibling_lr))
    if args.seeds:
        budget = dataclasses.replace(budget, seeds=tuple(args.seeds))
    out = args.out.resolve()
    (out / "lm").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result, _ = lm_stage.run_lm_stage(StageContext(out, out / "lm", quick=False, progress=True),
                                      base=args.base, design=args.design, budget=budget)
    table = result.tables[0]
    print(f"\n{table.title}  [design={args.design}, sibling lr={budget.ja.lr}]")
    widths = [max(len(str(x)) for x in col) for col in zip(table.header, *table.rows)]
    for line in [table.header, *table.rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    print(result.verdict)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
