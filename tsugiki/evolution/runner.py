"""The search loop: ask, evaluate (any backend), log, tell, checkpoint; resumable after SIGKILL.

The optimiser is the config's ``search.optimizer`` (:mod:`tsugiki.evolution.optimizers`): CMA-ES (Hansen's
``cma``; as the optimiser of merge recipes after Akiba et al. 2024, arXiv:2403.13187), NSGA-II or random
search. Fitness is maximised; the optimiser minimises costs (``-fitness``; per objective for a
multi-objective fitness, :mod:`tsugiki.evolution.front`). A failed candidate (exception, timeout, NaN) is
logged with its error and costs more than every successful candidate of its generation (worst successful
cost + 1 + the generation's cost spread; 0 for all when none succeeded), so the search goes on.

Determinism: every optimiser draws from its own ``numpy`` generator seeded by ``search.seed`` (never the
global one, never a ``cma_signals.in`` file); each candidate gets a seed derived from (run seed,
generation, index); evaluation uses ``search.threads`` torch threads on every backend. Nothing is
pickled: on resume :func:`~tsugiki.evolution.replay.replay` rebuilds the optimiser and its generator from
the config and the logs alone (ask, check the asked vectors equal the recorded ones exactly, tell the
recorded costs; no model is evaluated), so an interrupted run resumed from its run dir ends with the
same history (all but the ``seconds`` field) and best as an uninterrupted one. See
:mod:`tsugiki.evolution.rundir` for how the files are committed. With ``fitness.estimate`` a calibration
pass runs before the first generation and candidates are scored on a few items
(:mod:`tsugiki.evolution.calibrate`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tsugiki.errors import EvolutionError
from tsugiki.evolution.backends import Result, Task, in_index_order, make_backend
from tsugiki.evolution.calibrate import Estimation, calibrate, check_estimate
from tsugiki.evolution.config import EvolveConfig, load_config
from tsugiki.evolution.fitness import names_code
from tsugiki.evolution.front import choose
from tsugiki.evolution.plan import check_config, config_function_refs
from tsugiki.evolution.problems import KeptProblem, Problem, make_problem
from tsugiki.evolution.replay import RunState, by_full_set, costs, front_add, improves, replay, stop_reason, tally, vec
from tsugiki.evolution.report import write_plots
from tsugiki.evolution.rundir import RunDir, json_line
from tsugiki.evolution.sources import prepare_sources
from tsugiki.fileio import atomic_write
from tsugiki.progress import progress_bar

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
    config: EvolveConfig  # the config the run dir holds: what was evaluated


def _reconcile(rd: RunDir, config: EvolveConfig | None, *, started: bool) -> EvolveConfig:
    """The config to run: the run dir's (resume), or the given one if compatible with it (any
    config, while the run dir's has not started: no run.json yet)."""
    if rd.exists():
        stored = load_config(rd.config_file)
        if config is None:
            return stored
        diffs = stored.differences(config)
        if diffs and not started:  # what the old config built for its sources is not this one's
            for built in ("models", "ps_model"):
                shutil.rmtree(rd.path / built, ignore_errors=True)
            return config
        if diffs:
            raise EvolutionError(f"{rd.path}: run dir was started from a different config ({', '.join(diffs[:5])} "
                                 f"differ); use another run dir, or --resume to continue it as it was")
        return EvolveConfig(dict(stored.data, search=dict(config.search)), config.source_name, config.lines)
    return config  # a new run: RunDir.check_usable refused a folder holding anything else


def check_code(config: EvolveConfig, allow_code: bool) -> None:
    """Refuse a config that names code (a fitness function as ``file.py:function`` or
    ``module:function``) unless the user allowed it: a config is data a user may have been handed."""
    refs = [(key, name) for key, name in config_function_refs(config.data) if names_code(name)]
    if refs and not allow_code:
        key, name = refs[0]
        raise EvolutionError(f"{config.where(key)}{name!r} is code named by the config; it runs only with "
                             f"--allow-code (allow_code=True); nothing was run")


def check_runnable(config: EvolveConfig, run_dir: Path, allow_code: bool) -> None:
    """:func:`check_code`, then everything the config names is there (:func:`~tsugiki.evolution.plan.check_config`)."""
    check_code(config, allow_code)
    check_config(config, run_dir)


def evolve(config: EvolveConfig | None, run_dir: str | Path, *, progress: bool = False,
           on_generation: Callable[[dict], None] | None = None, plots: bool = True, allow_code: bool = False,
           keep: KeptProblem | None = None) -> RunResult:
    """Run (or continue) an evolution in ``run_dir``; ``config=None`` resumes the run dir's own.
    A config naming code as its fitness runs only with ``allow_code=True``. ``keep``: take the problem from it
    and leave it set up for the next run (:class:`~tsugiki.evolution.problems.KeptProblem`)."""
    rd = RunDir(run_dir)
    resume = config is None
    if not resume:
        check_runnable(config, rd.path, allow_code)  # a refused run leaves the run dir as it found it
    rd.check_usable(resume=resume)
    rd.lock()
    backend = None
    try:
        meta = rd.read_meta() if rd.exists() else None
        config = _reconcile(rd, config, started=meta is not None)
        if resume:
            check_runnable(config, rd.path, allow_code)
        if meta is None:  # first, so that a run killed while it prepares sources can be resumed
            atomic_write(rd.config_file, config.to_yaml())
        prepare_sources(config, rd.path)
        problem = keep.get(config, rd.path) if keep is not None else make_problem(config, rd.path)
        problem.check()
        check_estimate(config, problem)
        if meta is not None and meta.get("fingerprint") != config.fingerprint():
            raise EvolutionError(f"{rd.path}: config.yaml differs from the config the run was started with "
                                 f"(fingerprint {config.fingerprint()}, run.json says {meta.get('fingerprint')!r}); "
                                 f"restore it, or start a new run dir")
        state = replay(config, problem, rd)  # reads only; refuses a run dir that does not replay
        atomic_write(rd.config_file, config.to_yaml())  # the search keys a resume may change
        if meta is None:  # only a config that can run claims the dir: until run.json, another may replace it
            rd.write_meta(config.fingerprint())
        rd.truncate("generations.jsonl", state.generations_bytes)
        rd.truncate("history.jsonl", state.history_bytes)
        s = config.spec.search
        backend = make_backend(s.backend, problem, config, rd.path, workers=s.workers, timeout=s.timeout, threads=s.threads,
                               keep_problem=keep is not None)
        estimation = calibrate(config, problem, rd, backend, progress=progress) if config.spec.estimate else None
        loop = _Loop(config, rd, problem, backend, state, on_generation, estimation)
        loop.sync_best()
        reason = loop.run(progress)
        if plots:
            write_plots(rd.path, problem)
        return RunResult(rd.path, state.generation, state.evaluations, state.failures, state.best, reason,
                         state.seconds, config)
    except BaseException:
        if keep is not None:
            keep.close()  # a run that failed half-way: its problem's state is not vouched for
        raise
    finally:
        if backend is not None:
            backend.close()
        rd.unlock()


def evolve_and_export(config: EvolveConfig | None, run_dir: str | Path, export_to: str | Path | None, *,
                      force: bool = False, keep_existing: bool = False, front_index: int | None = None,
                      front_weights: list[float] | None = None, **options: Any) -> tuple[RunResult, Path | None]:
    """:func:`evolve` (``options`` are its keywords), then write the best candidate as a model dir at
    ``export_to`` with the thread count candidates were evaluated with, so the exported weights are the
    evaluated ones bit for bit. ``keep_existing``: an ``export_to`` already there (an earlier export of
    this run; outputs are written atomically) is kept, not replaced. A multi-objective run exports the point
    of its front at ``front_index`` or the one ``front_weights`` pick (:func:`~tsugiki.evolution.front.choose`)
    where given. Returns the result and the dir."""
    result = evolve(config, run_dir, **options)
    if export_to is None:
        return result, None
    if result.best is None:
        raise EvolutionError(f"{run_dir}: no successful candidate to export")
    if keep_existing and Path(export_to).exists():
        return result, Path(export_to)
    params = None
    if front_index is not None or front_weights is not None:
        params = choose(run_dir, index=front_index, weights=front_weights)["params"]
    return result, export_best(result, run_dir, export_to, force=force, params=params)


def export_best(result: RunResult, run_dir: str | Path, export_to: str | Path, *, force: bool = False,
                params: dict | None = None) -> Path:
    """Write ``result``'s best candidate (or the candidate of ``params``) as a model dir at ``export_to``, with the
    thread count candidates were evaluated with (the evaluated weights bit for bit)."""
    values = result.best["params"] if params is None else params
    return make_problem(result.config, run_dir).export_as_evaluated(values, export_to, force=force)


class _Loop:
    def __init__(self, config, rd: RunDir, problem: Problem, backend, state: RunState, on_generation,
                 estimation: Estimation | None = None):
        self.config, self.rd, self.problem, self.backend, self.state = config, rd, problem, backend, state
        self.on_generation, self.estimation = on_generation, estimation

    def run(self, progress: bool) -> str:
        s, st = self.config.spec.search, self.state
        bar = progress_bar(total=s.generations, initial=st.generation, desc=f"evolve {self.config.name}", unit="gen",
                   disable=not progress, leave=True)
        try:
            while not (reason := stop_reason(self.config, st)):
                row = self.generation()
                bar.update(1)
                bar.set_postfix(best=_fmt(row["best_so_far"]), mean=_fmt(row["mean_fitness"]),
                                evals_s=f"{row['population'] / max(row['seconds'], 1e-9):.1f}")
                if self.on_generation:
                    self.on_generation(row)
        finally:
            bar.close()
        return reason

    def generation(self) -> dict:
        st, rd, space, problem = self.state, self.rd, self.problem.space, self.problem
        gen, seed = st.generation, self.config.spec.search.seed
        started = time.perf_counter()
        opt = st.opt
        X, results = st.asked or (opt.ask(), {})  # asked by replay(): the interrupted generation
        st.asked = None
        est = self.estimation
        make_task = est.task if est else (lambda i, x, s: Task(i, x, "fitness", s))
        tasks = [make_task(i, tuple(vec(X[i])), candidate_seed(seed, gen, i)) for i in range(len(X)) if i not in results]
        names = problem.objective_names
        for task, res in in_index_order(self.backend.map(tasks), len(results)):
            i = task.index
            results[i] = r = _estimated(est, res)
            objs = {"objectives": None if r.objectives is None else dict(zip(names, r.objectives))} if names else {}
            rd.append("history.jsonl", {"generation": gen, "index": i, "params": space.decode(X[i]), "fitness": r.fitness,
                                        **objs, "error": r.error, "seconds": r.seconds, "seed": candidate_seed(seed, gen, i),
                                        "x": vec(X[i]), **({"item_scores": r.scores} if est else {})})
        ordered = [results[i] for i in range(len(X))]
        opt.tell(X, costs(problem, ordered))
        fitness = [r.fitness for r in ordered]
        top = tally(st, X, fitness)
        ok = [f for f in fitness if f is not None]
        row: dict[str, Any] = {"generation": gen, "evaluations": st.evaluations, "population": len(X),
                               "failures": len(X) - len(ok), "best_index": None, "best_fitness": None,
                               "mean_fitness": sum(ok) / len(ok) if ok else None, "validation": None}
        data = problem.data.get("fitness")
        if data is not None:  # the fitness compute: items scored
            row["items_scored"] = len(X) * (len(est.items) if est else len(data))
        if top:
            best_f, best_i = top
            row.update(best_index=best_i, best_fitness=best_f)
        if names:
            self.front_generation(gen, X, ordered, row)
        elif top:
            best_task = Task(best_i, tuple(vec(X[best_i])), "validation", candidate_seed(seed, gen, best_i))
            if problem.has_validation:
                row["validation"] = self.score(best_task, row, "validation_error")
            every = est and self.config.spec.estimate.full_every
            if every and gen % every == 0:  # how far the estimate strays from the full set
                row["best_full_fitness"] = self.score(dataclasses.replace(best_task, split="fitness"), row, "best_full_error")
                row["items_scored"] += len(data)
            if improves(st, gen, X, top, row, problem, by_full_set(self.config)):
                self.write_best()
        row["best_so_far"] = st.best["fitness"] if st.best else None
        row.update(opt.row())
        row["seconds"] = time.perf_counter() - started
        st.seconds += row["seconds"]
        rd.append("generations.jsonl", row)  # the commit point of the generation
        st.generation = gen + 1
        return row

    def front_generation(self, gen: int, X: list, results: list[Result], row: dict) -> None:
        """A multi-objective generation: its candidates into the front, the new front points validated
        (:mod:`tsugiki.evolution.front`), the best and front.json rewritten."""
        st, seed, names = self.state, self.config.spec.search.seed, self.problem.objective_names
        new = front_add(st, self.problem, gen, X, results)
        if self.problem.has_validation:
            tasks = [Task(i, tuple(vec(X[i])), "validation", candidate_seed(seed, gen, i)) for i in new]
            row["validated"] = []
            for task, r in self.backend.map(tasks):  # any order: sorted below
                if r.fatal:
                    raise EvolutionError(r.error)
                row["validated"].append({"index": task.index, "objectives": None if r.objectives is None else
                                         dict(zip(names, r.objectives)), **({"error": r.error} if r.error else {})})
            row["validated"].sort(key=lambda v: v["index"])
            for v in row["validated"]:
                st.front.set_validation(gen, v["index"], v["objectives"])
        row["front_size"] = len(st.front.entries)
        before, st.best = st.best, st.front.best()
        if st.best != before:
            self.write_best()
        st.front.write(self.rd.path)

    def score(self, task: Task, row: dict, error_key: str) -> float | None:
        (_, r), = list(self.backend.map([task]))
        if r.fatal:
            raise EvolutionError(r.error)
        if r.error:
            row[error_key] = r.error
        return r.fitness

    def sync_best(self) -> None:
        """best.yaml/best.json as of the last committed generation (a kill may have left a newer
        generation's best, which that generation rewrites identically when it runs again)."""
        b, p = self.state.best, self.rd.file("best.json")
        try:
            on_disk = json.loads(p.read_text(encoding="utf-8")) if p.exists() else None
        except (OSError, ValueError):
            on_disk = {}
        if b is None:
            if on_disk is not None:
                for name in ("best.json", "best.yaml"):
                    self.rd.file(name).unlink(missing_ok=True)
        elif not isinstance(on_disk, dict) or (on_disk.get("generation"), on_disk.get("index")) != (b["generation"], b["index"]):
            self.write_best()
        if self.state.front is not None:
            self.state.front.write(self.rd.path)

    def write_best(self) -> None:
        b = self.state.best
        header = (f"# best candidate of run {self.config.name!r}: generation {b['generation']}, index {b['index']}, "
                  f"fitness {b['fitness']:.6g}" + (f" (full set; estimate {b['estimate']:.6g})" if "estimate" in b else "")
                  + (f", validation {b['validation']:.6g}" if b["validation"] is not None else "")
                  + (" (mean of the signed objectives; " + ", ".join(f"{k} {v:.6g}" for k, v in b["objectives"].items())
                     + "; the front point with the highest equal-weight sum of normalised objectives: front.json)"
                     if "objectives" in b else "") + "\n")
        try:
            text = self.problem.document(b["params"], header)
        except Exception as e:  # noqa: BLE001 - the best must always be recorded, even without a recipe
            text = header + f"# (no recipe: {type(e).__name__}: {e})\n"
        atomic_write(self.rd.file("best.yaml"), text)
        atomic_write(self.rd.file("best.json"), json_line({k: v for k, v in b.items() if k != "x"} | {"x": b["x"]}))


def _estimated(est: Estimation | None, res: Result) -> Result:
    """An estimated candidate's result: the estimate from its item scores as its fitness."""
    if est is None or res.scores is None:
        return res
    try:
        return dataclasses.replace(res, fitness=est.estimate(res.scores))
    except ValueError as e:
        return dataclasses.replace(res, fitness=None, error=f"ValueError: {e}")


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
