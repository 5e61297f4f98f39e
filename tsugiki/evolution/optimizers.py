"""The optimisers a search can run (``search.optimizer``), in one ask/tell shape; the runner owns the loop,
the evaluation and the files, an optimiser only turns costs into the next candidates.

- ``cma`` (default): CMA-ES (Hansen's ``cma``; as in Akiba et al. 2024, arXiv:2403.13187), one fitness.
- ``nsga2``: NSGA-II (Deb et al. 2002) from pymoo, for one fitness or several objectives.
- ``random``: uniform random candidates, ``population`` per generation: the honest baseline.

Why pymoo rather than Optuna for NSGA-II: pymoo's NSGA-II is the textbook generational algorithm with an
ask/tell interface over a whole population (SBX crossover, polynomial mutation, crowding distance), and all
of its randomness comes from one private ``np.random.Generator`` seeded by ``search.seed``
(``algorithm.random_state``), so asking again after telling the recorded costs gives the same vectors bit
for bit: :func:`~tsugiki.evolution.replay.replay` rebuilds it from the logs like CMA-ES, nothing pickled.
Optuna's NSGAIISampler asks one trial at a time through a study and its storage (state to keep beside the
run dir's logs, and a trial/parameter model the runner does not have).

An optimiser is told *costs*, minimised: per candidate one per objective (a maximised objective's cost is
``-value``); a failed candidate costs, in each objective, more than every successful one of its generation
(:func:`failure_costs`). ``nsga2`` and ``random`` search the unit cube ``u in [0, 1]^n`` and map it to the
space's vector per parameter transform (:meth:`BoxOptimizer.to_x`): ``clip``: ``x = u``; ``sigmoid``:
``x = Param.encode(low + (high - low) * u)`` (clamped 1e-4 inside the bounds, as initial means are);
``none`` (DFS sign indicators): ``x = 2u - 1``. Their population, when ``search.population`` is unset, is
CMA-ES's default for the dimension (4 + floor(3 ln n)).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tsugiki.errors import EvolutionError
from tsugiki.evolution.space import SearchSpace
from tsugiki.registry import Registry

# cma termination rules that would end a merge search on flat fitness (exact-match scores are flat
# often); a config's search.cma_options overrides them
CMA_DEFAULTS = {"tolflatfitness": 10**9, "tolfun": 0, "tolfunhist": 0, "tolstagnation": 10**9}
_OWN_OPTIONS = ("seed", "randn", "popsize", "verbose", "verb_log", "verb_disp", "verb_filenameprefix", "maxfevals", "maxiter")


def failure_costs(fitness: list[float | None]) -> list[float]:
    """Costs (``-fitness``) of a generation, a failed candidate (None) costing the worst successful cost
    + 1 + the generation's cost spread (0 for all when none succeeded)."""
    costs = [-f for f in fitness if f is not None]
    if not costs:
        return [0.0] * len(fitness)
    penalty = max(costs) + 1.0 + (max(costs) - min(costs))
    return [-f if f is not None else penalty for f in fitness]


def objective_costs(values: Sequence[Sequence[float] | None], directions: Sequence[str]) -> list[list[float]]:
    """Per candidate, its cost in each objective (:func:`failure_costs` per objective, on values signed so
    that higher is better); ``values[i]`` None: a failed candidate."""
    columns = [failure_costs([None if v is None else (v[k] if d == "maximize" else -v[k]) for v in values])
               for k, d in enumerate(directions)]
    return [list(c) for c in zip(*columns)]


class GaussianSource:
    """``randn(*shape)`` for cma from a private PCG64 generator; a resume reconstructs its stream by
    replaying the run's ask() calls (:func:`~tsugiki.evolution.replay.replay`)."""

    def __init__(self, seed: int):
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


def new_strategy(config: Any, space: SearchSpace):
    """The CMA-ES of a config: mean at the space's initial values, ``search.sigma``, its own normal source."""
    import cma  # cma imports in ~0.5 s: only when a search starts

    s = config.spec.search
    opts: dict[str, Any] = dict(CMA_DEFAULTS)
    for k, v in s.cma_options.items():
        if k in _OWN_OPTIONS:
            raise EvolutionError(f"{config.where('search.cma_options.' + k)}set through search: (seed, population, ...), not cma_options")
        opts[k] = v
    opts.update(seed=np.nan, randn=GaussianSource(s.seed), verbose=-9, verb_log=0, verb_disp=0, signals_filename="")
    if s.population:
        opts["popsize"] = s.population
    try:
        return cma.CMAEvolutionStrategy(space.x0(), s.sigma, opts)
    except (ValueError, TypeError, KeyError) as e:
        raise EvolutionError(f"{config.where('search.cma_options')}cma refused the options: {e}") from None


class Optimizer:
    """``ask()`` the next generation's vectors (the space's coordinates), ``tell(X, costs)`` their costs
    (per candidate, one per objective, minimised), ``stop()`` its own reasons to end the search ({}: go
    on), ``row()`` what it adds to the generation's line in generations.jsonl. Built from the config alone
    and deterministic, so that a resume replays it (:func:`~tsugiki.evolution.replay.replay`)."""

    name = ""

    def __init__(self, config: Any, space: SearchSpace, directions: Sequence[str]):
        self.config, self.space, self.directions = config, space, list(directions)

    def ask(self) -> list[np.ndarray]:
        raise NotImplementedError

    def tell(self, X: list[np.ndarray], costs: list[list[float]]) -> None:
        raise NotImplementedError

    def stop(self) -> dict[str, Any]:
        return {}

    def row(self) -> dict[str, Any]:
        return {}


def cma_population(dim: int) -> int:
    """pycma's default population size for ``dim`` dimensions (used when search.population is unset)."""
    return 4 + int(3 * math.log(dim))


OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")


class CMA(Optimizer):
    name = "cma"

    def __init__(self, config: Any, space: SearchSpace, directions: Sequence[str]):
        super().__init__(config, space, directions)
        self.es = new_strategy(config, space)

    def ask(self) -> list[np.ndarray]:
        return self.es.ask()

    def tell(self, X: list[np.ndarray], costs: list[list[float]]) -> None:
        self.es.tell(X, [c[0] for c in costs])

    def stop(self) -> dict[str, Any]:  # called before each ask, in the run and its replay alike (cma caches it)
        return {k: v for k, v in self.es.stop().items() if k not in ("maxiter", "maxfevals")}

    def row(self) -> dict[str, Any]:
        return {"sigma": float(self.es.sigma)}


class BoxOptimizer(Optimizer):
    """An optimiser of the unit cube (:meth:`to_x` maps it to the space)."""

    @property
    def population(self) -> int:
        return self.config.spec.search.population or cma_population(self.space.dim)

    def to_x(self, u: Sequence[float]) -> np.ndarray:
        out = []
        for p, v in zip(self.space.params, u):
            v = float(v)
            if p.transform == "clip":
                out.append(v)
            elif p.transform == "none":
                out.append(2.0 * v - 1.0)
            else:
                out.append(p.encode(p.low + (p.high - p.low) * v))
        return np.array(out, dtype=float)


class RandomSearch(BoxOptimizer):
    name = "random"

    def __init__(self, config: Any, space: SearchSpace, directions: Sequence[str]):
        super().__init__(config, space, directions)
        self.rng = np.random.Generator(np.random.PCG64(config.spec.search.seed))

    def ask(self) -> list[np.ndarray]:
        return [self.to_x(u) for u in self.rng.random((self.population, self.space.dim))]

    def tell(self, X: list[np.ndarray], costs: list[list[float]]) -> None:
        pass  # random search learns nothing


class NSGA2(BoxOptimizer):
    name = "nsga2"

    def __init__(self, config: Any, space: SearchSpace, directions: Sequence[str]):
        super().__init__(config, space, directions)
        from pymoo.config import Config  # pymoo only when a search starts

        Config.warnings["not_compiled"] = False  # a print to stdout, about speed that does not matter here
        from pymoo.algorithms.moo.nsga2 import NSGA2 as Algorithm
        from pymoo.core.problem import Problem

        self._problem = Problem(n_var=space.dim, n_obj=len(self.directions), xl=0.0, xu=1.0)
        self.algorithm = Algorithm(pop_size=self.population)
        self.algorithm.setup(self._problem, termination=("n_gen", 2**62), seed=config.spec.search.seed, verbose=False)
        self._asked = None

    def ask(self) -> list[np.ndarray]:
        self._asked = self.algorithm.ask()
        return [self.to_x(u) for u in self._asked.get("X")]

    def tell(self, X: list[np.ndarray], costs: list[list[float]]) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        pop, self._asked = self._asked, None
        if pop is None or len(pop) != len(X):
            raise EvolutionError("nsga2: told costs for candidates it did not ask for")
        Evaluator().eval(StaticProblem(self._problem, F=np.asarray(costs, dtype=float)), pop)
        self.algorithm.tell(infills=pop)


for _cls in (CMA, NSGA2, RandomSearch):
    OPTIMIZERS.register(_cls.name, _cls)


def make_optimizer(config: Any, space: SearchSpace, directions: Sequence[str]) -> Optimizer:
    """The config's ``search.optimizer`` for ``space`` and the objectives' ``directions``."""
    return OPTIMIZERS.get(config.spec.search.optimizer)(config, space, directions)
