"""Problems: a search space plus how one candidate is scored, documented and exported.

A problem is built from a validated config and the run dir's source paths, cheaply (configs and
metadata only); :meth:`Problem.setup` loads models the first time a candidate is evaluated, once per
process, so worker processes pay for it once. Each space kind (:mod:`tsugiki.evolution.kinds`: box,
ps, dfs, ps_dfs, sdxl_blocks; Akiba et al. 2024, arXiv:2403.13187) has its Problem subclass beside
its config section; :func:`make_problem` asks the config's kind for it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from tsugiki.engines import Engine, EngineError, open_engine
from tsugiki.engines.hf import HFEngine
from tsugiki.errors import EvolutionError, TsugikiError
from tsugiki.evolution.config import EvolveConfig
from tsugiki.evolution.data import Pair, check_disjoint, load_pairs
from tsugiki.evolution.fitness import EvalContext, FitnessSpec, as_fitness, resolve_fitness
from tsugiki.evolution.sources import search_threads, source_names, source_paths
from tsugiki.evolution.space import SearchSpace
from tsugiki.merging.provenance import Named


class SetupError(EvolutionError):
    """The problem cannot be set up in an evaluating process; no candidate can succeed."""


def parameter_matrices(space, values: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per parameter (weight, density, …) of a PS-like space: its model × layer-group (or UNet block)
    matrix and bounds, as the PS heatmap plots them."""
    mats = {}
    for pname, bounds in space.bounds.items():
        rows, cols, vals = space.matrix(values, pname)
        mats[pname] = {"rows": rows, "cols": cols, "values": vals, "bounds": list(bounds)}
    return mats


def _check_args(spec: FitnessSpec, args: Mapping[str, Any], where: str) -> None:
    """Refuse fitness arguments the function does not take now, not when the first candidate runs."""
    try:
        inspect.signature(spec.fn).bind(None, None, **args)
    except TypeError as e:
        raise EvolutionError(f"{where}{e}") from None


class Problem:
    kind = ""
    space: SearchSpace

    def __init__(self, config: EvolveConfig, paths: Mapping[str, str]):
        self.config = config
        self.paths = dict(paths)
        self.named: dict[str, Named] = {}  # source path -> how the user named it (make_problem sets it)
        fit, val, test = config.spec.fitness, config.spec.validation, config.spec.test
        self.objective_names: list[str] = [o.name for o in config.spec.objectives]  # [] for one fitness
        self.directions: list[str] = [o.direction for o in config.spec.objectives] or ["maximize"]
        if self.objective_names:
            self._objectives(config, test)
        else:
            self._one_fitness(config, fit, val, test)
        config.spec.space.check_sources(config, self.paths)  # every source the space names is known
        self.engine: Engine | None = None  # started by setup where the kind scores text through one
        self._ready = False

    def _one_fitness(self, config: EvolveConfig, fit: Any, val: Any, test: Any) -> None:
        self.fitness: FitnessSpec = self._resolve("fitness", fit.function)
        self.fitness_args = dict(fit.args)
        _check_args(self.fitness, self.fitness_args, config.where("fitness.args"))
        self.data: dict[str, list[Pair] | None] = {"fitness": self._items("fitness", fit.data, self.fitness, self.fitness_args)}
        if val is not None:
            self.val_fitness = self._resolve("validation", val.function) if val.function else self.fitness
            self.val_args = dict(val.args) if val.function or val.args else self.fitness_args
            _check_args(self.val_fitness, self.val_args, config.where("validation.args"))
            self.data["validation"] = self._items("validation", val.data, self.val_fitness, self.val_args)
            if self.data["validation"] is None:
                raise EvolutionError(f"{config.where('validation')}missing required key 'data'")
            if self.data["fitness"] is not None:
                check_disjoint(self.data["fitness"], self.data["validation"], "validation", config.where("validation.data"))
        if test is not None:  # the evaluation set: never scored here, only kept apart
            test = self._test_items(test)
            for split in ("fitness", "validation"):
                if self.data.get(split) is not None:
                    check_disjoint(test, self.data[split], split, config.where(f"{split}.data"), against="test")

    def _objectives(self, config: EvolveConfig, test: Any) -> None:
        """A multi-objective fitness: per split, per objective (function, args, data) in ``self.scorers``."""
        test = self._test_items(test) if test is not None else None
        self.scorers: dict[str, list[tuple[FitnessSpec, dict, list[Pair] | None]]] = {"fitness": []}
        self.data = {"fitness": None}  # per objective, in scorers
        vals = config.spec.validation or ()
        if vals:
            self.scorers["validation"], self.data["validation"] = [], None
        for i, o in enumerate(config.spec.objectives):
            spec, args = self._resolve(f"fitness[{i}]", o.function), dict(o.args)
            _check_args(spec, args, config.where(f"fitness[{i}].args"))
            pairs = self._items(f"fitness[{i}]", o.data, spec, args)
            self.scorers["fitness"].append((spec, args, pairs))
            checks = [(pairs, f"fitness[{i}]")]
            if vals:
                v = vals[i]
                vspec = self._resolve(f"validation[{i}]", v.function) if v.function else spec
                vargs = dict(v.args) if v.function or v.args else args
                _check_args(vspec, vargs, config.where(f"validation[{i}].args"))
                vpairs = self._items(f"validation[{i}]", v.data, vspec, vargs)
                if vpairs is None:
                    raise EvolutionError(f"{config.where(f'validation[{i}]')}missing required key 'data'")
                self.scorers["validation"].append((vspec, vargs, vpairs))
                if pairs is not None:
                    check_disjoint(pairs, vpairs, "validation", config.where(f"validation[{i}].data"))
                checks.append((vpairs, f"validation[{i}]"))
            for split_pairs, key in checks if test is not None else ():
                if split_pairs is not None:
                    check_disjoint(test, split_pairs, key.partition("[")[0], config.where(f"{key}.data"), against="test")

    def evaluate_objectives(self, values: Mapping[str, float], split: str = "fitness", seed: int = 0) -> list[float]:
        """A candidate's objectives on ``split`` (a multi-objective fitness), its model prepared once."""
        ctx = self._context(values, split, seed)
        return [as_fitness(spec.fn(ctx, pairs, **args)) for spec, args, pairs in self.scorers[split]]

    def _test_items(self, test: Any) -> list[Pair]:
        return self._items("test", test.data, self._resolve("test", test.function) if test.function else None,
                           dict(test.args))

    def _items(self, section: str, data: Any, spec: FitnessSpec | None, args: Mapping[str, Any]) -> list[Pair] | None:
        """A section's items: its ``data:``, else those its function brings (an ``lm_eval`` fitness: its tasks' docs)."""
        if data is not None:
            return load_pairs(data.to_data(), self.config.where(f"{section}.data"))
        if spec is None or spec.pairs is None:
            return None
        try:
            return spec.pairs(args)
        except TsugikiError as e:
            raise EvolutionError(f"{self.config.where(section + '.args')}{e}") from None

    engines: tuple[str, ...] = ("hf",)  # the engines (config ``engine.name``) this kind can score with

    def check_engine(self) -> None:
        """Refuse an ``engine:`` this kind cannot use, naming the config line."""
        spec = self.config.spec.engine
        if spec is not None and spec.name not in self.engines:
            raise EvolutionError(f"{self.config.where('engine.name')}engine {spec.name!r} cannot score a {self.kind} "
                                 f"space ({self.engine_note()}); use: {', '.join(self.engines)}")

    def close(self) -> None:
        """Free the engine; the next candidate sets the problem up again."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            self._ready = False

    def engine_note(self) -> str:
        return "its candidates are models vLLM cannot take in place"

    def start_engine(self, model: Any, tokenizer: Any, model_dir: str) -> Engine:
        """The config's engine with ``model`` (loaded from ``model_dir``) in it: ``hf`` wraps the loaded model
        itself (no copy); ``vllm`` starts on ``model_dir`` and takes each candidate's weights from memory."""
        spec = self.config.spec.engine
        if spec is None or spec.name == "hf":
            return HFEngine(model, tokenizer)
        try:
            return open_engine(spec.name, model_dir, spec.options(self.config.spec.search.seed), tokenizer=tokenizer)
        except EngineError as e:
            raise EvolutionError(f"{self.config.where('engine.name')}{e}") from None

    def _resolve(self, section: str, name: str | None) -> FitnessSpec:
        try:
            return resolve_fitness(name)
        except TsugikiError as e:
            raise EvolutionError(f"{self.config.where(section + '.function')}{e}") from None

    @property
    def has_validation(self) -> bool:
        return "validation" in self.data

    def setup(self) -> None:
        """Load what evaluation needs (models); called once per process before the first candidate."""

    def check(self) -> None:
        """Fail fast, before any candidate runs, on sources that cannot work together (metadata only)."""

    def _ensure_setup(self) -> None:
        if not self._ready:
            try:
                self.setup()
            except Exception as e:  # noqa: BLE001 - no candidate can succeed: stop the run, say why
                raise SetupError(f"cannot set up the {self.kind} problem: {type(e).__name__}: {e}") from e
            self._ready = True

    def _function(self, split: str) -> tuple[FitnessSpec, dict[str, Any]]:
        return (self.fitness, self.fitness_args) if split == "fitness" else (self.val_fitness, self.val_args)

    def _context(self, values: Mapping[str, float], split: str, seed: int, source: str | None = None) -> EvalContext:
        """The evaluation context with the candidate (or, with ``source``, that source as it is) in it."""
        self._ensure_setup()
        ctx = EvalContext(params=dict(values), split=split, seed=seed, engine=self.engine)
        if source is None:
            self.prepare_candidate(values, ctx)
        else:
            self.prepare_source(source, ctx)
        return ctx

    def evaluate(self, values: Mapping[str, float], split: str = "fitness", seed: int = 0) -> float:
        spec, args = self._function(split)
        return as_fitness(spec.fn(self._context(values, split, seed), self.data[split], **args))

    def evaluate_items(self, values: Mapping[str, float], split: str = "fitness", seed: int = 0, *,
                       items: Sequence[int] | None = None, source: str | None = None) -> list[float]:
        """Per-item scores (the fitness function's ``items`` form) of a candidate, or with ``source`` of
        that source as it is, on the split's items at indices ``items`` (all when None)."""
        spec, args = self._function(split)
        if spec.items is None:
            raise EvolutionError(f"the {split} function scores no items")
        data = self.data[split]
        subset = data if items is None or data is None else [data[i] for i in items]
        scores = [as_fitness(v) for v in spec.items(self._context(values, split, seed, source), subset, **args)]
        if subset is not None and len(scores) != len(subset):
            raise ValueError(f"{len(scores)} item scores for {len(subset)} items")
        return scores

    def prepare_candidate(self, values: Mapping[str, float], ctx: EvalContext) -> None:
        """Put the candidate (model, tokenizer) into ``ctx``."""

    def scorable_sources(self) -> list[str]:
        """Sources :meth:`prepare_source` can put into a context as they are (estimated fitness scores them
        in its calibration pass); none unless the space kind says how."""
        return []

    def prepare_source(self, name: str, ctx: EvalContext) -> None:
        raise EvolutionError(f"a {self.kind} space cannot score its source {name!r} as it is")

    def document(self, values: Mapping[str, float], header: str = "") -> str:
        """The best candidate as YAML text (``best.yaml``)."""
        return header + yaml.safe_dump({"params": dict(values)}, sort_keys=False)

    def details(self, values: Mapping[str, float]) -> dict[str, Any]:
        return {"kind": self.kind}

    def export(self, values: Mapping[str, float], out: str | Path, *, force: bool = False) -> Path:
        raise EvolutionError(f"a {self.kind} space has no model to export")

    def export_as_evaluated(self, values: Mapping[str, float], out: str | Path, *, force: bool = False) -> Path:
        """:meth:`export` with the torch thread count candidates were evaluated with: some of the kernels'
        float32 reductions sum in an order that depends on torch's thread count (measured: DARE-TIES
        exports differed by ~2e-6), so this makes the exported weights the evaluated ones bit for bit."""
        with search_threads(self.config):
            return self.export(values, out, force=force)


def make_problem(config: EvolveConfig, run_dir: str | Path) -> Problem:
    """The problem of ``config``'s space kind (:mod:`tsugiki.evolution.kinds`), sources resolved in ``run_dir``."""
    problem = config.spec.space.problem(config, source_paths(config, Path(run_dir)))
    problem.check_engine()
    problem.named = source_names(config, Path(run_dir))  # how exports name their sources
    return problem


class KeptProblem:
    """One problem kept set up (its models loaded, its engine started) from one run to the next, for runs whose
    configs differ only in ``name`` and ``search.seed`` (search seeds of one experiment: the demo's three PS
    searches save a model load and a vLLM start each). ``evolve(..., keep=kept)`` takes the problem from here
    and leaves it set up; a config that differs in anything else gets a new problem (the old one is closed).
    Close it (or leave its ``with`` block) before starting another engine in this process."""

    def __init__(self):
        self.problem: Problem | None = None
        self._key: str | None = None

    @staticmethod
    def _key_of(config: EvolveConfig, run_dir: Path) -> str:
        import copy
        import hashlib
        import json

        data = copy.deepcopy(dict(config.data))
        for key in ("name", "named_as"):
            data.pop(key, None)
        data["search"] = {k: v for k, v in data.get("search", {}).items() if k != "seed"}
        data["paths"] = source_paths(config, run_dir)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, config: EvolveConfig, run_dir: str | Path) -> Problem:
        key = self._key_of(config, Path(run_dir))
        if self.problem is not None and key == self._key:
            self.problem.config = config
            self.problem.named = source_names(config, Path(run_dir))
            return self.problem
        self.close()
        self.problem, self._key = make_problem(config, run_dir), key
        return self.problem

    def close(self) -> None:
        if self.problem is not None:
            self.problem.close()
        self.problem, self._key = None, None

    def __enter__(self) -> "KeptProblem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
