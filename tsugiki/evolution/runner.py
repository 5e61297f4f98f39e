"""The CMA-ES loop: ask, evaluate (any backend), log, tell, checkpoint; resumable after SIGKILL.

CMA-ES (Hansen's ``cma``) as the optimiser of merge recipes follows Akiba et al. 2024
(arXiv:2403.13187). Fitness is maximised; CMA-ES minimises ``-fitness``. A failed candidate (exception,
timeout, NaN) is logged with its error and told to CMA-ES as worse than every successful candidate of
its generation (cost = worst successful cost + 1 + the generation's cost spread; 0 for all when none
succeeded), so the search goes on.

Determinism: CMA-ES draws its normal samples from its own ``numpy`` generator seeded by
``search.seed`` (pickled with it, never the global one); each candidate gets a seed derived from
(run seed, generation, index); evaluation uses ``search.threads`` torch threads on every backend. An
interrupted run resumed from its run dir therefore ends with the same history (all but the
``seconds`` field) and best as an uninterrupted one. See :mod:`tsugiki.evolution.rundir` for how
the files are committed.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tsugiki.errors import EvolutionError
from tsugiki.evolution.backends import Result, Task, make_backend
from tsugiki.evolution.config import EvolveConfig, load_config
from tsugiki.evolution.problems import Problem, make_problem, prepare_sources
from tsugiki.evolution.rundir import RunDir, atomic_write, json_line

# cma termination rules that would end a merge search on flat fitness (exact-match scores are flat
# often); a config's search.cma_options overrides them
CMA_DEFAULTS = {"tolflatfitness": 10**9, "tolfun": 0, "tolfunhist": 0, "tolstagnation": 10**9}
_OWN_OPTIONS = ("seed", "randn", "popsize", "verbose", "verb_log", "verb_disp", "verb_filenameprefix", "maxfevals", "maxiter")


class GaussianSource:
    """``randn(*shape)`` for cma from a private PCG64 generator (picklable, so resume is exact)."""

    def __init__(self, seed: int):
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


def candidate_seed(seed: int, generation: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{generation}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**31 - 1)


@dataclass
class RunResult:
    run_dir: Path
    generations: int
    evaluations: int
    failures: int
    best: dict | None
    stop_reason: str
    seconds: float


def new_strategy(config: EvolveConfig, problem: Problem):
    import cma

    s = config.search
    opts: dict[str, Any] = dict(CMA_DEFAULTS)
    for k, v in s["cma_options"].items():
        if k in _OWN_OPTIONS:
            raise EvolutionError(f"{config.where('search.cma_options.' + k)}set through search: (seed, population, ...), not cma_options")
        opts[k] = v
    opts.update(seed=np.nan, randn=GaussianSource(s["seed"]), verbose=-9, verb_log=0, verb_disp=0)
    if s["population"]:
        opts["popsize"] = s["population"]
    try:
        return cma.CMAEvolutionStrategy(problem.space.x0(), s["sigma"], opts)
    except (ValueError, TypeError, KeyError) as e:
        raise EvolutionError(f"{config.where('search.cma_options')}cma refused the options: {e}") from None


def failure_costs(fitness: list[float | None]) -> list[float]:
    costs = [-f for f in fitness if f is not None]
    if not costs:
        return [0.0] * len(fitness)
    penalty = max(costs) + 1.0 + (max(costs) - min(costs))
    return [-f if f is not None else penalty for f in fitness]


def _reconcile(rd: RunDir, config: EvolveConfig | None) -> EvolveConfig:
    """The config to run: the run dir's (resume), or the given one if compatible with it."""
    if rd.exists():
        stored = load_config(rd.config_file)
        if config is None:
            return stored
        diffs = stored.differences(config)
        if diffs:
            raise EvolutionError(f"{rd.path}: run dir was started from a different config ({', '.join(diffs[:5])} "
                                 f"differ); use another run dir, or --resume to continue it as it was")
        return EvolveConfig(dict(stored.data, search=dict(config.search)), config.source_name, config.lines)
    if config is None:
        raise EvolutionError(f"{rd.path}: not a run dir (no config.yaml) to resume")
    others = [p.name for p in rd.path.iterdir() if p.name not in (".lock", "models", "ps_model")] if rd.path.exists() else []
    if others:
        raise EvolutionError(f"{rd.path}: exists and is not a tsugiki run dir (holds {others[0]!r}); choose an empty or new dir")
    return config


def _stop_reason(config: EvolveConfig, state: dict) -> str:
    s = config.search
    if s["generations"] is not None and state["generation"] >= s["generations"]:
        return f"{s['generations']} generations"
    if s["max_evaluations"] is not None and state["evaluations"] >= s["max_evaluations"]:
        return f"{state['evaluations']} evaluations (budget {s['max_evaluations']})"
    stop = {k: v for k, v in state["es"].stop().items() if k not in ("maxiter", "maxfevals")}
    return "cma: " + ", ".join(stop) if stop else ""


def evolve(config: EvolveConfig | None, run_dir: str | Path, *, progress: bool = False,
           on_generation: Callable[[dict], None] | None = None, plots: bool = True) -> RunResult:
    """Run (or continue) an evolution in ``run_dir``; ``config=None`` resumes the run dir's own."""
    rd = RunDir(run_dir)
    rd.lock()
    backend = None
    try:
        config = _reconcile(rd, config)
        prepare_sources(config, rd.path)
        problem = make_problem(config, rd.path)
        problem.check()
        atomic_write(rd.config_file, config.to_yaml())  # only a config that can run claims the dir
        state = rd.load_state()
        if state is None:
            state = {"es": new_strategy(config, problem), "generation": 0, "evaluations": 0, "failures": 0,
                     "best": None, "seconds": 0.0, "fingerprint": config.fingerprint()}
            for name in ("history.jsonl", "generations.jsonl"):
                rd.truncate(name, 0)
            rd.commit(state)
        elif state["fingerprint"] != config.fingerprint():
            raise EvolutionError(f"{rd.path}: state.pkl belongs to a different config")
        rd.truncate("generations.jsonl", state["generations_bytes"])
        s = config.search
        backend = make_backend(s["backend"], problem, config, rd.path, workers=s["workers"], timeout=s["timeout"], threads=s["threads"])
        loop = _Loop(config, rd, problem, backend, state, on_generation)
        reason = loop.run(progress)
        if plots:
            from tsugiki.evolution.report import write_plots

            write_plots(rd.path, problem)
        return RunResult(rd.path, state["generation"], state["evaluations"], state["failures"], state["best"], reason,
                         state["seconds"])
    finally:
        if backend is not None:
            backend.close()
        rd.unlock()


class _Loop:
    def __init__(self, config, rd: RunDir, problem: Problem, backend, state: dict, on_generation):
        self.config, self.rd, self.problem, self.backend, self.state = config, rd, problem, backend, state
        self.on_generation = on_generation

    def run(self, progress: bool) -> str:
        from tqdm.auto import tqdm

        s, st = self.config.search, self.state
        bar = tqdm(total=s["generations"], initial=st["generation"], desc=f"evolve {self.config.name}", unit="gen",
                   disable=not progress, leave=True)
        try:
            while not (reason := _stop_reason(self.config, st)):
                row = self.generation()
                bar.update(1)
                bar.set_postfix(best=_fmt(row["best_so_far"]), mean=_fmt(row["mean_fitness"]),
                                evals_s=f"{row['population'] / max(row['seconds'], 1e-9):.1f}")
                if self.on_generation:
                    self.on_generation(row)
        finally:
            bar.close()
        return reason

    def _reused(self, gen: int, X: list) -> dict[int, Result]:
        """Results of this generation already in history.jsonl past the last commit (after a kill)."""
        out: dict[int, Result] = {}
        end = self.state["history_bytes"]
        for obj, pos in self.rd.lines_after("history.jsonl", end):
            i = len(out)
            if obj.get("generation") != gen or obj.get("index") != i or i >= len(X) or obj.get("x") != [float(v) for v in X[i]]:
                break
            out[i] = Result(obj.get("fitness"), obj.get("error"), obj.get("seconds") or 0.0)
            end = pos
        self.rd.truncate("history.jsonl", end)
        return out

    def generation(self) -> dict:
        st, rd, space = self.state, self.rd, self.problem.space
        gen, seed = st["generation"], self.config.search["seed"]
        started = time.perf_counter()
        es = st["es"]
        X = es.ask()
        results = self._reused(gen, X)
        tasks = [Task(i, tuple(float(v) for v in X[i]), "fitness", candidate_seed(seed, gen, i)) for i in range(len(X)) if i not in results]
        buffered: dict[int, Result] = {}
        next_i = len(results)
        for task, res in self.backend.map(tasks):
            if res.fatal:
                raise EvolutionError(res.error)
            buffered[task.index] = res
            while next_i in buffered:  # write in index order, whatever order workers finish in
                results[next_i] = r = buffered.pop(next_i)
                rd.append("history.jsonl", {"generation": gen, "index": next_i, "params": space.decode(X[next_i]),
                                            "fitness": r.fitness, "error": r.error, "seconds": r.seconds,
                                            "seed": candidate_seed(seed, gen, next_i), "x": [float(v) for v in X[next_i]]})
                next_i += 1
        fitness = [results[i].fitness for i in range(len(X))]
        es.tell(X, failure_costs(fitness))
        ok = [(f, i) for i, f in enumerate(fitness) if f is not None]
        st["evaluations"] += len(X)
        st["failures"] += len(X) - len(ok)
        row: dict[str, Any] = {"generation": gen, "evaluations": st["evaluations"], "population": len(X),
                               "failures": len(X) - len(ok), "best_index": None, "best_fitness": None,
                               "mean_fitness": sum(f for f, _ in ok) / len(ok) if ok else None, "validation": None}
        if ok:
            best_f, best_i = max(ok, key=lambda t: (t[0], -t[1]))
            row.update(best_index=best_i, best_fitness=best_f)
            values = space.decode(X[best_i])
            if self.problem.has_validation:
                val_task = Task(best_i, tuple(float(v) for v in X[best_i]), "validation", candidate_seed(seed, gen, best_i))
                (_, vr), = list(self.backend.map([val_task]))
                if vr.fatal:
                    raise EvolutionError(vr.error)
                row["validation"] = vr.fitness
                if vr.error:
                    row["validation_error"] = vr.error
            if st["best"] is None or best_f > st["best"]["fitness"]:
                st["best"] = {"generation": gen, "index": best_i, "fitness": best_f, "validation": row["validation"],
                              "params": values, "x": [float(v) for v in X[best_i]]}
                self.write_best()
        row["best_so_far"] = st["best"]["fitness"] if st["best"] else None
        row["sigma"] = float(es.sigma)
        row["seconds"] = time.perf_counter() - started
        st["seconds"] += row["seconds"]
        rd.append("generations.jsonl", row)
        st["generation"] = gen + 1
        rd.commit(st)
        return row

    def write_best(self) -> None:
        b = self.state["best"]
        header = (f"# best candidate of run {self.config.name!r}: generation {b['generation']}, index {b['index']}, "
                  f"fitness {b['fitness']:.6g}" + (f", validation {b['validation']:.6g}" if b["validation"] is not None else "") + "\n")
        try:
            text = self.problem.document(b["params"], header)
        except Exception as e:  # noqa: BLE001 - the best must always be recorded, even without a recipe
            text = header + f"# (no recipe: {type(e).__name__}: {e})\n"
        atomic_write(self.rd.file("best.yaml"), text)
        atomic_write(self.rd.file("best.json"), json_line({k: v for k, v in b.items() if k != "x"} | {"x": b["x"]}))


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
