"""Estimated fitness in a run (``fitness.estimate``): the calibration pass and the estimator it fits.

Before the first generation, the calibration pass (of anchors and irt; a subsample needs none) scores, item by item on the whole fitness set, the
sources the space can score as they are (``estimate.sources``; a PS space's base and models) and
``estimate.calibration`` random candidates drawn as CMA-ES draws its first generation (``x0 + sigma * z``,
``z`` from a generator seeded by ``estimate.seed``). Each result is one line of ``calibration.jsonl``
(appended and fsynced as it finishes, so a killed pass resumes where it stopped). On those per-item
scores the estimator of :mod:`tsugiki.evolution.estimate` is fitted once and kept in ``estimator.json``;
a resume reads it back instead of fitting again, so resumed runs score candidates exactly as before.

In the search a candidate is scored on the estimator's items only, and its fitness is the estimate;
``history.jsonl`` keeps the item scores beside it. ``generations.jsonl`` records, for every
``full_every``-th generation, its best candidate's score on the whole set (``best_full_fitness``) and,
for every generation, the items scored (``items_scored``), which is the fitness compute. When there are
such checks, the run's best is the checked generation best with the highest full-set score (the runner's
``_improves``): a search selects candidates whose estimates are highest, which is where an estimate errs
most (measured on the demo's PS search: generation bests estimated at 0.43 scored 0.14-0.16 on the full
set, while later ones estimated at 0.10 scored 0.18).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsugiki.errors import EvolutionError
from tsugiki.evolution.backends import Task, in_index_order
from tsugiki.evolution.estimate import Estimator, estimator_from_json, fit_estimator
from tsugiki.evolution.problems import Problem
from tsugiki.evolution.rundir import CALIBRATION, ESTIMATOR, RunDir, json_line
from tsugiki.fileio import atomic_write
from tsugiki.progress import progress_bar


def check_estimate(config: Any, problem: Problem) -> None:
    """Refuse, before anything runs, an ``estimate`` its fitness function or data cannot serve."""
    est = config.spec.estimate
    if est is None:
        return
    where = config.where("fitness.estimate")
    if problem.fitness.items is None:
        raise EvolutionError(f"{where}fitness function {config.spec.fitness.function!r} scores no items (a function "
                             f"with an `items` attribute does), so it cannot be estimated")
    data = problem.data["fitness"]
    if data is None:
        raise EvolutionError(f"{where}needs fitness data: items to choose from")
    if est.items >= len(data):
        raise EvolutionError(f"{config.where('fitness.estimate.items')}{est.items} items of {len(data)}: "
                             f"nothing to save; choose fewer, or drop estimate")
    if est.method == "irt" and score_range(problem) is None:
        raise EvolutionError(f"{config.where('fitness.estimate.method')}irt needs item scores in a bounded range; "
                             f"{config.spec.fitness.function!r}'s are not (use subsample or anchors)")


def score_range(problem: Problem) -> tuple[float, float] | None:
    fn = problem.fitness.item_range
    return fn(problem.fitness_args) if fn is not None else None


def calibration_tasks(config: Any, problem: Problem) -> list[tuple[str, Task]]:
    """(label, task) of every calibration model, in order; each scores all fitness items."""
    est, search = config.spec.estimate, config.spec.search
    out = []
    if est.sources:
        for name in problem.scorable_sources():
            out.append((f"source {name}", Task(len(out), (), per_item=True, source=name)))
    rng = np.random.default_rng(est.seed)
    x0 = np.asarray(problem.space.x0(), dtype=np.float64)
    for j in range(est.calibration):
        x = x0 + search.sigma * rng.standard_normal(len(x0))
        out.append((f"random {j}", Task(len(out), tuple(float(v) for v in x), per_item=True, seed=est.seed + j)))
    return out


@dataclass
class Estimation:
    """A fitted estimator and what the run needs of it."""

    estimator: Estimator
    items: tuple[int, ...]

    def task(self, index: int, x: tuple[float, ...], seed: int) -> Task:
        return Task(index, x, "fitness", seed, per_item=True, items=self.items)

    def estimate(self, scores: tuple[float, ...]) -> float:
        value = self.estimator.estimate(np.asarray(scores, dtype=np.float64))
        if not math.isfinite(value):
            raise ValueError(f"estimate is {value}")
        return value


def calibrate(config: Any, problem: Problem, rd: RunDir, backend, *, progress: bool = False) -> Estimation:
    """Run (or finish) the calibration pass in ``rd`` and fit (or read back) the estimator."""
    est = config.spec.estimate
    n = len(problem.data["fitness"])
    tasks = calibration_tasks(config, problem) if est.method != "subsample" else []  # a subset needs no calibration
    lines = list(rd.lines_after(CALIBRATION, 0))
    done_bytes = lines[-1][1] if lines else 0
    rd.check_tail(CALIBRATION, done_bytes)
    if len(lines) > len(tasks):
        raise EvolutionError(f"{rd.path}: {CALIBRATION} has {len(lines)} lines; the config asks for {len(tasks)}")
    for (obj, _), (label, task) in zip(lines, tasks):
        if obj.get("label") != label or obj.get("x") != list(task.x):
            raise EvolutionError(f"{rd.path}: {CALIBRATION} line {task.index + 1} is not {label!r} as this config draws it; "
                                 f"the run dir does not resume (nothing was changed)")
    rd.truncate(CALIBRATION, done_bytes)
    todo = [t for _, t in tasks[len(lines):]]
    labels = dict((t.index, label) for label, t in tasks)
    rows = [obj for obj, _ in lines]
    if todo:
        bar = progress_bar(total=len(tasks), initial=len(lines), desc="calibrate (full fitness set)", unit="model",
                           disable=not progress, leave=True)
        try:
            for t, r in in_index_order(backend.map(todo), len(rows)):
                row = {"index": t.index, "label": labels[t.index], "source": t.source, "x": list(t.x),
                       "scores": list(r.scores) if r.scores is not None else None, "error": r.error, "seconds": r.seconds}
                rd.append(CALIBRATION, row)
                rows.append(row)
                bar.update(1)
        finally:
            bar.close()
    matrix = [r["scores"] for r in rows if r.get("scores") is not None and len(r["scores"]) == n]
    if len(matrix) < 2 and est.method != "subsample":
        raise EvolutionError(f"{rd.path}: calibration scored {len(matrix)} of {len(rows)} models on the full set; the estimator needs "
                             f"at least 2 (see the errors in {CALIBRATION})")
    path = rd.file(ESTIMATOR)
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            estimator = estimator_from_json(stored["estimator"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EvolutionError(f"{path}: unreadable ({type(e).__name__}: {e}); delete it to fit again") from None
    else:
        try:
            estimator = fit_estimator(est.method, np.asarray(matrix or [[0.0] * n]), est.items, seed=est.seed,
                                      dim=est.dim, score_range=score_range(problem))
        except ValueError as e:
            raise EvolutionError(f"{config.where('fitness.estimate')}{e}") from None
        atomic_write(path, json_line({"estimator": estimator.to_json(), "n_items": n, "models": len(matrix)}))
    return Estimation(estimator, tuple(int(i) for i in estimator.items))
