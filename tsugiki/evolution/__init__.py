"""Evolutionary search over merge recipes (PS, DFS, PS+DFS) with CMA-ES, NSGA-II or random search.

After Akiba et al. 2024, "Evolutionary Optimization of Model Merging Recipes" (arXiv:2403.13187).

    from tsugiki.evolution import load_config, evolve, summary
    result = evolve(load_config("configs/tiny-ps.yaml"), "runs/tiny-ps")   # or evolve(None, run_dir)
    print(summary("runs/tiny-ps"))

Modules: ``space`` (bounded parameters <-> vectors), ``kinds`` (each ``space.kind`` in one home,
``box`` or a package ``ps`` / ``dfs`` / ``sdxl``: its search space, keys, problem, plan and plots) and
``space_kind`` (what a kind is; the registry), ``assemble`` (no-copy DFS candidates), ``fitness`` /
``data`` (scoring), ``config`` and ``schema`` (the typed YAML config),
``problems`` (space + scoring + export), ``sources`` (paths, tiny models, loading), ``plan`` (weight-free
``--plan``), ``backends`` (serial, processes, Ray), ``optimizers`` (cma, nsga2, random), ``runner`` (the
search loop), ``replay`` (resume from the logs), ``front`` (multi-objective runs' Pareto front), ``rundir``
(files, lock, atomic checkpoints), ``report`` (plots, summary).
"""

import tsugiki.evolution.kinds  # noqa: F401 - registers every space kind before a config is read
from tsugiki.evolution.config import EvolveConfig, from_data, load_config
from tsugiki.evolution.fitness import FITNESS, EvalContext, FitnessSpec, resolve_fitness
from tsugiki.evolution.kinds.dfs.space import DFSPath, DFSSpace
from tsugiki.evolution.kinds.ps.space import PSSpace
from tsugiki.evolution.problems import KeptProblem, Problem, make_problem
from tsugiki.evolution.report import summary, write_plots
from tsugiki.evolution.runner import RunResult, evolve
from tsugiki.evolution.space import Param, SearchSpace

__all__ = [
    "DFSPath", "DFSSpace", "EvalContext", "EvolveConfig", "FITNESS", "FitnessSpec", "KeptProblem", "Param", "PSSpace", "Problem",
    "RunResult", "SearchSpace", "evolve", "from_data", "load_config", "make_problem", "resolve_fitness", "summary",
    "write_plots",
]
