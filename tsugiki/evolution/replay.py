"""Resume without pickles: the run state after the generations a run dir committed, rebuilt from the config
and the logs by replaying the optimiser (:mod:`tsugiki.evolution.optimizers`: every one is deterministic
given the config), and the bookkeeping the loop and the replay share (costs, tallies, best, front)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsugiki.errors import EvolutionError
from tsugiki.evolution.backends import Result
from tsugiki.evolution.front import Front
from tsugiki.evolution.optimizers import Optimizer, make_optimizer, objective_costs
from tsugiki.evolution.problems import Problem
from tsugiki.evolution.rundir import RunDir


@dataclass
class RunState:
    """Where a search stands after its committed generations: what :func:`replay` rebuilds and the loop
    carries on. Nothing here is written as such: the logs are the state (:mod:`tsugiki.evolution.rundir`)."""

    opt: Optimizer
    generation: int = 0  # the next generation to run
    evaluations: int = 0
    failures: int = 0
    best: dict | None = None  # best.json's fields, with the candidate's vector ``x``
    seconds: float = 0.0
    front: Front | None = None  # a multi-objective run's
    asked: tuple[list, dict[int, Result]] | None = None  # the interrupted generation: its candidates, the results logged
    generations_bytes: int = 0  # the end of the committed lines of generations.jsonl ...
    history_bytes: int = 0  # ... and of history.jsonl: what follows is cut before the run goes on


def vec(x) -> list[float]:
    """An optimiser's vector as the JSON numbers history.jsonl records (float repr round-trips exactly)."""
    return [float(v) for v in x]


def tally(st: RunState, X: list, fitness: list[float | None]) -> tuple[float, int] | None:
    """Count a generation into ``st``; its best (fitness, index), lowest index on ties, or None."""
    ok = [(f, i) for i, f in enumerate(fitness) if f is not None]
    st.evaluations += len(X)
    st.failures += len(X) - len(ok)
    return max(ok, key=lambda t: (t[0], -t[1])) if ok else None


def by_full_set(config: Any) -> bool:
    """Whether the run's best is chosen by full-set scores: an estimated run that checks generation bests."""
    est = config.spec.estimate
    return bool(est and est.full_every)


def improves(st: RunState, gen: int, X: list, top: tuple[float, int], row: dict, problem: Problem, by_full: bool) -> bool:
    """Whether generation ``gen``'s best (``top``) is the run's new best (one fitness). With ``by_full``, only
    generation bests scored on the full set compete, by that score (an estimate can stray most where a search
    selects it: on its highest values); the estimate is kept beside it."""
    best_f, best_i = top
    score = row.get("best_full_fitness") if by_full else best_f
    if score is None or (st.best is not None and not score > st.best["fitness"]):
        return False
    st.best = {"generation": gen, "index": best_i, "fitness": score, "validation": row.get("validation"),
               "params": problem.space.decode(X[best_i]), "x": vec(X[best_i]),
               **({"estimate": best_f} if by_full else {})}
    return True


def costs(problem: Problem, results: list[Result]) -> list[list[float]]:
    """What the optimiser is told of a generation's results (failures penalised per objective)."""
    if problem.objective_names:
        return objective_costs([r.objectives if r.fitness is not None else None for r in results], problem.directions)
    return objective_costs([None if r.fitness is None else [r.fitness] for r in results], ["maximize"])


def front_add(st: RunState, problem: Problem, gen: int, X: list, results: list[Result]) -> list[int]:
    """Add a generation's successful candidates to the run's front; the indices now on it."""
    names = problem.objective_names
    return st.front.add([{"generation": gen, "index": i, "objectives": dict(zip(names, r.objectives)),
                          "params": problem.space.decode(X[i]), "x": vec(X[i])}
                         for i, r in enumerate(results) if r.fitness is not None])


def line_result(obj: dict, names: list[str]) -> Result:
    objs = obj.get("objectives")
    return Result(obj.get("fitness"), obj.get("error"), obj.get("seconds") or 0.0,
                  objectives=tuple(float(objs[n]) for n in names) if names and obj.get("fitness") is not None else None)


def stop_reason(config: Any, state: RunState) -> str:
    s = config.spec.search
    if s.generations is not None and state.generation >= s.generations:
        return f"{s.generations} generations"
    if s.max_evaluations is not None and state.evaluations >= s.max_evaluations:
        return f"{state.evaluations} evaluations (budget {s.max_evaluations})"
    stop = state.opt.stop()
    return f"{state.opt.name}: " + ", ".join(stop) if stop else ""


def replay(config: Any, problem: Problem, rd: RunDir) -> RunState:
    """The run state after the generations committed in ``rd`` (none for a new run), rebuilt from the
    config and the logs: a fresh optimiser asks, the asked vectors must equal the recorded ``x``
    exactly, and it is told the recorded costs, generation by generation (the optimiser's arithmetic
    only, no evaluation). History lines of an interrupted generation are checked against its re-asked
    candidates and handed to the loop (``asked``). Reads only; refuses (EvolutionError naming
    the run dir) anything that does not replay, before any file is changed."""
    names = problem.objective_names
    opt = make_optimizer(config, problem.space, problem.directions)
    st = RunState(opt, front=Front(names, problem.directions) if names else None)
    who = "CMA-ES" if opt.name == "cma" else opt.name
    lib = {"cma": "cma/", "nsga2": "pymoo/"}.get(opt.name, "")

    def refuse(what: str) -> EvolutionError:
        return EvolutionError(f"{rd.path}: cannot resume: {what}; the run dir does not replay from its config.yaml "
                              f"(edited by hand, or written with another {lib}numpy version?); nothing was changed")

    def number(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float))

    def check_line(obj: dict, gen: int, i: int, x) -> Result:
        if obj.get("generation") != gen or obj.get("index") != i:
            raise refuse(f"history.jsonl has generation {obj.get('generation')!r} candidate {obj.get('index')!r} "
                         f"where generation {gen} candidate {i} belongs")
        if obj.get("x") != vec(x):
            raise refuse(f"generation {gen} candidate {i} in history.jsonl is not the vector {who} asks for")
        f = obj.get("fitness")
        if f is not None and not number(f):
            raise refuse(f"generation {gen} candidate {i} in history.jsonl has fitness {f!r}")
        objs = obj.get("objectives")
        if names and f is not None and not (isinstance(objs, dict) and all(number(objs.get(n)) for n in names)):
            raise refuse(f"generation {gen} candidate {i} in history.jsonl has objectives {objs!r}")
        return line_result(obj, names)

    rows = list(rd.lines_after("generations.jsonl", 0))
    st.generations_bytes = rows[-1][1] if rows else 0
    rd.check_tail("generations.jsonl", st.generations_bytes)
    lines = list(rd.lines_after("history.jsonl", 0))
    st.history_bytes = lines[-1][1] if lines else 0  # only a partly written last line is cut
    rd.check_tail("history.jsonl", st.history_bytes)
    at = 0
    for gen, (row, _) in enumerate(rows):
        if row.get("generation") != gen:
            raise refuse(f"generations.jsonl line {gen + 1} is generation {row.get('generation')!r}")
        opt.stop()  # as the loop does before each generation (cma caches one check per iteration)
        X = opt.ask()
        if row.get("population") != len(X) or len(lines) - at < len(X):
            raise refuse(f"generation {gen} has {row.get('population')!r} candidates in generations.jsonl and "
                         f"{min(len(X), len(lines) - at)} in history.jsonl; {who} asks for {len(X)}")
        results = [check_line(lines[at + i][0], gen, i, X[i]) for i in range(len(X))]
        at += len(X)
        opt.tell(X, costs(problem, results))
        top = tally(st, X, [r.fitness for r in results])
        if (top or (None, None)) != (row.get("best_fitness"), row.get("best_index")):
            raise refuse(f"generation {gen}'s best in generations.jsonl is not the best of its history lines")
        if names:
            new = front_add(st, problem, gen, X, results)
            validated = row.get("validated") or []
            if problem.has_validation and [v.get("index") for v in validated] != new:
                raise refuse(f"generation {gen}'s validated candidates in generations.jsonl are not its new front points")
            for v in validated:
                st.front.set_validation(gen, v["index"], v.get("objectives"))
            st.best = st.front.best()
        elif top:
            improves(st, gen, X, top, row, problem, by_full_set(config))
        st.seconds += float(row.get("seconds") or 0.0)
        st.generation = gen + 1
    pending = [obj for obj, _ in lines[at:]]
    for i, obj in enumerate(pending):
        if obj.get("generation") != st.generation or obj.get("index") != i:
            raise refuse(f"history.jsonl has generation {obj.get('generation')!r} candidate {obj.get('index')!r} "
                         f"past the last finished generation ({st.generation - 1})")
    if pending and not stop_reason(config, st):  # the loop runs this generation next: ask it now
        X = opt.ask()
        if len(pending) > len(X):
            raise refuse(f"generation {st.generation} has {len(pending)} history lines; {who} asks for {len(X)}")
        st.asked = (X, {i: check_line(obj, st.generation, i, X[i]) for i, obj in enumerate(pending)})
    return st
