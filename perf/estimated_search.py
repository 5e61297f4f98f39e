"""A PS search on the demo's sources with estimated fitness against the same search with the full fitness.

Not a test: prints a table. Target (issue 17): the final best's held-out score within 1 SE of the
full-fitness search's, at >= 10x less fitness compute.

    python perf/estimated_search.py --method subsample          # 60 items, population 6, 5 generations
    python perf/estimated_search.py --method irt --items 100 --generations 8

Both searches are the demo's PS search (DARE-TIES weight and density per model and layer group over the
Gemma 3 270M base and its JA and MATH siblings, CMA-ES, ``--seed``) with the demo's teacher-forced fitness on
``--items`` Japanese word problems; they differ only in ``fitness.estimate`` (``--method``, 1/``--cost`` of
the items per candidate). Each best is exported and scored held out on the demo's test problems (acc_ja of
greedy answers, its binomial SE). Fitness compute is counted in items scored, from the run dirs'
``generations.jsonl`` (``items_scored``) and ``calibration.jsonl``: the search's own, and with the
calibration pass and the full-set checks of each ``--full-every``-th generation's best added. "search s"
is the time the run dir records (generations and calibration; not the export or the held-out scoring).
Run dirs live in WORK and resume, so a rerun only does what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from tsugiki.benchmarks.stats import binomial_se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("perf-out/estimated-search"), help="sources, run dirs, models")
    ap.add_argument("--method", choices=("subsample", "anchors", "irt"), default="subsample")
    ap.add_argument("--items", type=int, default=60, help="fitness items (the full set)")
    ap.add_argument("--cost", type=int, default=10, help="estimated candidates score 1/COST of the items")
    ap.add_argument("--calibration", type=int, default=3, help="random calibration candidates (anchors, irt)")
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--full-every", type=int, default=1, help="score every n-th generation's best on the full set")
    ap.add_argument("--test", type=int, default=100, help="held-out test problems")
    ap.add_argument("--seed", type=int, default=0, help="the search seed of both searches")
    args = ap.parse_args()

    from tsugiki.demo.lm.search import FULL, ps_config, write_data
    from tsugiki.demo.stage import run_search
    from tsugiki.demo.lm.stage import evaluate, prepare_sources
    from tsugiki.demo.stage import StageContext
    from tsugiki.evolution.rundir import RunDir

    work = args.work.resolve()  # absolute: the configs written below are resolved against their own folder
    (work / "lm").mkdir(parents=True, exist_ok=True)
    budget = dataclasses.replace(FULL, fitness_n=math.ceil(args.items / 4), test_n=args.test, fitness="teacher_forced",
                                 population=args.population, generations=args.generations)
    sources = prepare_sources(StageContext(run_dir=work, out=work / "lm", progress=True))
    data = write_data(work / "lm" / "data", budget)
    lines = data["fitness"].read_text(encoding="utf-8").splitlines()[:args.items]
    data["fitness"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    test = [json.loads(line) for line in data["test"].read_text(encoding="utf-8").splitlines()]
    k = max(1, args.items // args.cost)
    estimate = {"method": args.method, "items": k, "calibration": args.calibration, "full_every": args.full_every}
    rows = []
    for label, est in (("full fitness", None), (f"estimated ({args.method}, {k} items)", estimate)):
        cfg = ps_config(sources, data, args.seed, budget)
        cfg.pop("validation")  # the same for both, and not fitness compute: left out
        if est:
            cfg["fitness"]["estimate"] = est
            cfg["name"] += f"-{args.method}"
        name = cfg["name"]
        run = run_search(cfg, work / "runs" / name, work / "evolved" / name, progress=True)
        rd = RunDir(run["run_dir"])
        gens = rd.read_jsonl("generations.jsonl")
        calibration = sum(len(c["scores"] or ()) for c in rd.read_jsonl("calibration.jsonl"))
        seconds = run["seconds"] + sum(c["seconds"] for c in rd.read_jsonl("calibration.jsonl"))  # as run, resumed or not
        search = sum(g["items_scored"] for g in gens)
        checks = sum(args.items for g in gens if "best_full_fitness" in g)
        best = json.loads(rd.file("best.json").read_text(encoding="utf-8"))
        # an estimated run that checks generation bests picks its best by the full-set score (best["estimate"] beside)
        full_of_best = best["fitness"] if "estimate" in best else None
        held = evaluate(Path(run["model"]), test, batch_size=25, english=False)
        rows.append({"label": label, "search": search - checks, "checks": checks, "calibration": calibration,
                     "fitness": best.get("estimate", best["fitness"]), "full_of_best": full_of_best if est else best["fitness"],
                     "acc_ja": held["metrics"]["acc_ja"], "se": held["se"]["acc_ja"], "n": held["n"],
                     "evaluations": run["evaluations"], "seconds": seconds})
        print(f"[{label}] best fitness {best['fitness']:.4f}, held-out acc_ja {held['metrics']['acc_ja']:.1f}", flush=True)

    full = rows[0]
    print("(the best fitness column gives the estimate of an estimated run's best, and in brackets its full-set score "
          "where the run checked it)")
    print(f"\nPS search (seed {args.seed}), population {args.population}, {args.generations} generations, {args.items} fitness items, "
          f"held-out acc_ja on {full['n']} problems\n")
    print("| search | candidates | items scored: search | + calibration | + full-set checks | total | "
          "search compute vs full | total vs full | best fitness (its full-set score) | held-out acc_ja ± SE | search s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        total = r["search"] + r["calibration"] + r["checks"]
        full_of = "" if r["full_of_best"] is None else f" ({r['full_of_best']:.4f})"
        print(f"| {r['label']} | {r['evaluations']} | {r['search']} | {r['calibration']} | {r['checks']} | {total} | "
              f"1/{full['search'] / r['search']:.1f} | 1/{full['search'] / total:.1f} | {r['fitness']:.4f}{full_of} | "
              f"{r['acc_ja']:.1f} ± {r['se']:.1f} | {r['seconds']:.0f} |")
    est = rows[1]
    gap = abs(est["acc_ja"] - full["acc_ja"])
    se = math.hypot(binomial_se(est["acc_ja"], est["n"]), binomial_se(full["acc_ja"], full["n"]))
    print(f"\nheld-out: estimated minus full {est['acc_ja'] - full['acc_ja']:+.1f} points; within 1 SE of the full search's "
          f"score ({full['se']:.1f}): {gap <= full['se']}; within the two scores' combined SE ({se:.1f}): {gap <= se}")


if __name__ == "__main__":
    main()
