"""Estimated fitness on a real population: how well each estimator of tsugiki.evolution.estimate ranks
and scores candidates from a tenth of the fitness items.

Not a test: prints tables. Target (issue 17): one estimator with Kendall tau >= 0.8 against the full-set
ranking at a cost <= 1/10 of the full fitness. The closing lines give each estimator's tau averaged over
``--seeds`` estimator seeds (the items a run's ``estimate.seed`` picks).

    python perf/fitness_estimate.py --quick     # 50 items, 3 sources + 3 calibration + 10 test candidates
    python perf/fitness_estimate.py             # 100 items, 3 + 6 + 16

The population is built here, from the demo's LM sources (Gemma 3 270M imported from its GGUF package,
and its JA and MATH siblings materialised from the shipped LoRA adapters): candidates of the demo's PS
space (DARE-TIES weight and density per model and layer group) drawn as CMA-ES draws a first generation,
``x0 + sigma * z`` (sigma 0.5, the demo's), merged in memory. Every candidate is scored item by item on the
whole fitness set with the demo's fitness (default: teacher-forced, the exact match of the Japanese worked
answer plus 0.1 x its probability, on Japanese word problems; ``--fitness generated``: the seed's acc_ja of
greedy answers). Scores are kept in ``WORK/population.json``, so a rerun scores only what is missing;
``--recorded FILE`` evaluates the estimators on such a file alone (the default size's, measured on
2026-12-04, is ``perf/results/fitness-estimate-population.json``).

Calibration models (as ``fitness.estimate`` draws them: the three sources and random candidates of one
seed) fit each estimator; the test candidates (another seed) are scored from the estimator's items alone
and compared with their full-set scores: Kendall tau-b, mean absolute error, and the cost of scoring a
candidate as a fraction of the full fitness. The calibration pass costs (sources + calibration) full sets
once per run; it is printed beside.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from tsugiki.benchmarks.stats import kendall_tau
from tsugiki.evolution.estimate import ESTIMATORS, fit_estimator


def build_population(work: Path, n_items: int, n_calibration: int, n_test: int, fitness: str) -> dict:
    """Score (or read back) every model of the population on the full fitness set."""
    import dataclasses

    from tsugiki.demo.lm.search import FULL, ps_config, write_data
    from tsugiki.demo.lm.stage import prepare_sources
    from tsugiki.demo.stage import StageContext, evolve_config
    from tsugiki.evolution.problems import make_problem
    from tsugiki.threads import torch_threads

    per = 4 if fitness == "teacher_forced" else 1  # the demo's teacher-forced set is 4 x the generated one
    budget = dataclasses.replace(FULL, fitness_n=math.ceil(n_items / per), fitness=fitness)
    ctx = StageContext(run_dir=work, out=work / "lm", progress=True)
    (work / "lm").mkdir(parents=True, exist_ok=True)
    sources = prepare_sources(ctx)
    data = write_data(work / "lm" / "data", budget)
    config = evolve_config(ps_config(sources, data, 0, budget), work / "run")
    problem = make_problem(config, work / "run")
    problem.data["fitness"] = problem.data["fitness"][:n_items]
    space = problem.space
    x0 = np.asarray(space.x0())
    models = [("source", name, None) for name in problem.scorable_sources()]
    for group, seed, count in (("calibration", 1, n_calibration), ("test", 2, n_test)):
        rng = np.random.default_rng(seed)
        models += [(group, f"{group} {j}", [float(v) for v in x0 + 0.5 * rng.standard_normal(len(x0))])
                   for j in range(count)]
    path = work / "population.json"
    key = {"fitness": fitness, "items": [p.id for p in problem.data["fitness"]], "fingerprint": config.fingerprint()}
    stored = json.loads(path.read_text()) if path.exists() else {}
    rows = {r["name"]: r for r in stored.get("models", [])} if stored.get("key") == key else {}
    for i, (group, name, x) in enumerate(models):
        if name in rows and rows[name]["x"] == x:
            continue
        t0 = time.perf_counter()
        with torch_threads(2):
            scores = problem.evaluate_items(space.decode(x) if x else {}, items=None,
                                            source=name if group == "source" else None)
        rows[name] = {"name": name, "group": group, "x": x, "scores": scores, "seconds": time.perf_counter() - t0}
        print(f"  [{i + 1}/{len(models)}] {name}: mean {np.mean(scores):.4f} ({rows[name]['seconds']:.1f} s)", flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "range": problem.fitness.item_range(problem.fitness_args),
                                   "models": [rows[m[1]] for m in models if m[1] in rows]}))
        tmp.replace(path)
    return {"key": key, "models": [rows[m[1]] for m in models], "range": problem.fitness.item_range(problem.fitness_args)}


def evaluate(pop: dict, k: int, seeds: int) -> list[dict]:
    calib = np.array([m["scores"] for m in pop["models"] if m["group"] in ("source", "calibration")])
    test = [m for m in pop["models"] if m["group"] == "test"]
    full = [float(np.mean(m["scores"])) for m in test]
    n = calib.shape[1]
    out = []
    for method in ESTIMATORS:
        taus, maes, biases, secs = [], [], [], []
        for seed in range(seeds if method != "irt" else min(seeds, 3)):
            t0 = time.perf_counter()
            est = fit_estimator(method, calib, k, seed=seed, score_range=tuple(pop["range"]))
            guess = [est.estimate(np.asarray(m["scores"])[est.items]) for m in test]
            secs.append(time.perf_counter() - t0)
            taus.append(kendall_tau(guess, full))
            maes.append(float(np.mean(np.abs(np.subtract(guess, full)))))
            biases.append(float(np.mean(np.subtract(guess, full))))
        out.append({"method": method, "k": len(est.items), "n": n, "tau": taus[0], "tau_mean": float(np.mean(taus)),
                    "tau_min": float(np.min(taus)), "mae": maes[0], "mae_mean": float(np.mean(maes)),
                    "bias_mean": float(np.mean(biases)), "seeds": len(taus), "fit_s": float(np.mean(secs))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50 items, 3 calibration and 10 test candidates")
    ap.add_argument("--work", type=Path, default=Path("perf-out/fitness-estimate"), help="sources, data and scores")
    ap.add_argument("--items", type=int, help="fitness items (full set)")
    ap.add_argument("--calibration", type=int, help="random calibration candidates (besides the 3 sources)")
    ap.add_argument("--candidates", type=int, help="test candidates")
    ap.add_argument("--cost", type=int, default=10, help="score each candidate on 1/COST of the items")
    ap.add_argument("--seeds", type=int, default=10, help="estimator seeds averaged (subsample, anchors; irt: 3)")
    ap.add_argument("--fitness", choices=("teacher_forced", "generated"), default="teacher_forced")
    ap.add_argument("--recorded", type=Path, help="evaluate the estimators on a recorded population.json instead "
                                                  "(perf/results/fitness-estimate-population.json: the default size's)")
    args = ap.parse_args()
    n_items = args.items or (50 if args.quick else 100)
    n_cal = args.calibration if args.calibration is not None else (3 if args.quick else 6)
    n_test = args.candidates or (10 if args.quick else 16)
    t0 = time.perf_counter()
    if args.recorded:  # a population scored before (a WORK/population.json): no models needed
        pop = json.loads(args.recorded.read_text(encoding="utf-8"))
        n_items = len(pop["models"][0]["scores"])
        n_cal = sum(m["group"] == "calibration" for m in pop["models"])
        n_test = sum(m["group"] == "test" for m in pop["models"])
        args.fitness = pop["key"]["fitness"]
    else:
        pop = build_population(args.work.resolve(), n_items, n_cal, n_test, args.fitness)
    built = time.perf_counter() - t0
    full = [float(np.mean(m["scores"])) for m in pop["models"]]
    test_full = [f for f, m in zip(full, pop["models"]) if m["group"] == "test"]
    k = max(1, n_items // args.cost)
    print(f"\npopulation{' (recorded: ' + str(args.recorded) + ')' if args.recorded else ''}: {len(pop['models'])} models ({sum(m['group'] == 'source' for m in pop['models'])} sources, "
          f"{n_cal} calibration, {n_test} test) x {n_items} items, {args.fitness} fitness; scored in {built:.0f} s "
          f"(mean {np.mean([m['seconds'] for m in pop['models']]):.1f} s per model on the full set)")
    print(f"test candidates' full-set fitness: min {min(test_full):.3f}, median {np.median(test_full):.3f}, "
          f"max {max(test_full):.3f}, sd {np.std(test_full):.3f}")
    print(f"calibration pass: {len(pop['models']) - n_test} models x {n_items} items "
          f"(= {len(pop['models']) - n_test} full-fitness evaluations, once per run)\n")
    results = evaluate(pop, k, args.seeds)
    print("| estimator | items | cost | Kendall tau (seed 0) | tau mean / min over seeds | MAE (seed 0) | MAE mean | bias mean | seeds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['method']} | {r['k']} | 1/{r['n'] / r['k']:.0f} | {r['tau']:.3f} | {r['tau_mean']:.3f} / {r['tau_min']:.3f} | "
              f"{r['mae']:.4f} | {r['mae_mean']:.4f} | {r['bias_mean']:+.4f} | {r['seeds']} |")
    print()
    for r in results:
        print(f"fitness estimate {r['method']}: kendall_tau={r['tau_mean']:.2f} cost=1/{round(r['n'] / r['k'])}")


if __name__ == "__main__":
    main()
