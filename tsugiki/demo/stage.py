"""What every demo stage returns, and what it is given.

A stage (``lm``, ``vlm``, ``sdxl``) evaluates models and returns a :class:`StageResult`: one
:class:`Row` per model (its role, metric values and confidence intervals), the name of the stage's
headline metric, and whatever the report should show (tables, figures, samples, plain notes).
``results.json`` is these results as JSON (see :func:`StageResult.to_json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["source", "baseline", "evolved"]
ROLES: tuple[str, ...] = ("source", "baseline", "evolved")


@dataclass
class Row:
    """One evaluated model. ``metrics`` are the numbers the stage computed (e.g. ``acc`` in percent);
    ``ci`` holds ``[lo, hi]`` for those that have an interval; ``extra`` is free-form detail that the
    report may show (e.g. per-seed values) but that is not part of the results schema."""

    model: str
    role: Role
    metrics: dict[str, float]
    ci: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"row {self.model!r}: role must be one of {ROLES}, not {self.role!r}")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "role": self.role, "metrics": dict(self.metrics),
                "ci": {k: [float(v[0]), float(v[1])] for k, v in self.ci.items()}}


@dataclass
class Figure:
    """An image file (relative to the run dir) with a caption, shown in the HTML report."""

    path: str
    caption: str


@dataclass
class Table:
    """A table for the report: a title, column headers and rows of already formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Sample:
    """A sample generation: which model, the prompt, its output, optionally the expected answer and an
    image file (relative to the run dir) the prompt is about or that the model produced."""

    model: str
    prompt: str
    output: str
    expected: str | None = None
    image: str | None = None


@dataclass
class SeedVerdict:
    """The stage's claim in one search seed: its best evolved row (``model``) against every source and
    baseline on the headline metric, each margin in standard errors (``test`` says which: two independent
    binomial SEs, or the SE of the per-item paired difference); ``won``: every margin is ≥ 2 SE."""

    seed: int
    model: str
    margins: dict[str, float]  # other row's model -> margin in SE (positive: the evolved model is ahead)
    test: str

    @property
    def won(self) -> bool:
        return bool(self.margins) and all(m >= WIN_SE for m in self.margins.values())  # a nan margin never wins

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "model": self.model, "won": self.won, "test": self.test,
                "margins_se": dict(self.margins)}


WIN_SE = 2.0  # the margin (in SE) that counts as a win in every stage's verdict


def seeds_sentence(seeds: list[SeedVerdict], headline: str) -> str:
    """"The best evolved model beats every source and baseline by ≥ 2 SE on <headline> in k of n search seeds"."""
    won = sum(s.won for s in seeds)
    return (f"The best evolved model beats every source and baseline by ≥ {WIN_SE:g} SE on {headline} in {won} of "
            f"{len(seeds)} search seed{'s' if len(seeds) != 1 else ''}")


def seed_of(model: str) -> int | None:
    """The search seed an evolved row's name carries (``… (seed N)``), if any."""
    import re

    m = re.search(r"\(seed (\d+)\)", model)
    return int(m.group(1)) if m else None


def paired_seed_verdicts(rows: list[Row], per_item: dict[str, list[float]], default_seed: int) -> list[SeedVerdict]:
    """Per search seed, its best evolved row against every source and baseline, each margin the mean per-item
    difference over its SE (the models answered the same items: a paired test). The seed is the one the
    row's name carries, else ``default_seed``."""
    from tsugiki.benchmarks.stats import paired_difference

    def margin(a: str, b: str) -> float:
        diff, se = paired_difference(per_item[a], per_item[b])
        if math.isnan(se):  # one item: no spread to measure
            return math.nan
        return diff / se if se > 0 else (math.inf if diff > 0 else 0.0)

    def mean(name: str) -> float:
        return sum(per_item[name]) / len(per_item[name])

    best: dict[int, Row] = {}
    for r in rows:
        if r.role == "evolved":
            seed = seed_of(r.model)
            seed = default_seed if seed is None else seed
            if seed not in best or mean(r.model) > mean(best[seed].model):
                best[seed] = r
    others = [r for r in rows if r.role != "evolved"]
    return [SeedVerdict(seed, r.model, {o.model: margin(r.model, o.model) for o in others}, "paired SE")
            for seed, r in sorted(best.items())]


@dataclass
class StageResult:
    stage: str  # "lm", "vlm" or "sdxl"
    headline: str  # the metric name rows are ranked by (higher is better unless ``lower_is_better``)
    rows: list[Row]
    lower_is_better: bool = False
    title: str = ""
    verdict: str = ""  # one or two plain sentences: did the evolved model win, by how much
    notes: list[str] = field(default_factory=list)  # e.g. "FID here uses a random-init extractor; ..."
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    models: dict[str, str] = field(default_factory=dict)  # model name -> HF dir (relative to run dir)
    seeds: list[SeedVerdict] = field(default_factory=list)  # the verdict per search seed
    recipes: dict[str, str] = field(default_factory=dict)  # model name -> recipe file kept instead of its dir

    def to_json(self) -> dict[str, Any]:
        return {"headline": self.headline, "lower_is_better": self.lower_is_better, "title": self.title,
                "verdict": self.verdict, "notes": list(self.notes), "seconds": round(self.seconds, 2),
                "models": dict(self.models), "recipes": dict(self.recipes), "rows": [r.to_json() for r in self.rows],
                "seeds": [s.to_json() for s in self.seeds], "seeds_won": sum(s.won for s in self.seeds)}


@dataclass(frozen=True)
class StageContext:
    """Where a stage writes (``out`` = RUN_DIR/<stage>, created by the caller), how big it runs
    (``quick``: the CI budget, every stage in well under a minute), and its seed."""

    run_dir: Path
    out: Path
    quick: bool = False
    seed: int = 0
    progress: bool = True
    engine: str = "hf"  # what scores text (tsugiki.engines): the LM stage's PS searches and held-out evaluation

    def say(self, message: str) -> None:
        """A progress line for the terminal (silent with ``progress=False``)."""
        if self.progress:
            print(message, flush=True)

    def rel(self, path: Path) -> str:
        """``path`` relative to the run dir (for results.json and the report)."""
        return Path(path).resolve().relative_to(self.run_dir.resolve()).as_posix()


def evolve_config(config_data: dict[str, Any], run_dir: Path):
    """A stage's evolve config (the demo's own data) for ``run_dir``. Sources inside the demo's run
    dir are named relative to the config's folder, so the exported models' recipes name them relative
    to themselves too (:mod:`tsugiki.merging.provenance`); the resolved config is the same either way."""
    import os

    from tsugiki.evolution.config import from_data

    base = run_dir.resolve().parent
    root = demo_root(run_dir) or base
    sources = {}
    for name, ref in config_data.get("sources", {}).items():
        p = Path(ref)
        inside = p.is_absolute() and p.resolve().is_relative_to(root)
        sources[name] = os.path.join(".", os.path.relpath(p.resolve(), base)) if inside else ref
    return from_data({**config_data, "sources": sources}, source_name=config_data["name"], base_dir=base)


def run_search(config_data: dict[str, Any], run_dir: Path, export_to: Path, progress: bool, *,
               export: bool = True, keep=None) -> dict[str, Any]:
    """Run (or resume) one search and export its best candidate as a HF model dir at ``export_to``; with
    ``export=False`` the export waits for the returned ``build`` (called when the model is needed); ``keep``: a
    :class:`~tsugiki.evolution.problems.KeptProblem` shared by the search seeds."""
    import functools

    from tsugiki.evolution.runner import evolve_and_export, export_best

    config = evolve_config(config_data, run_dir)
    result, _ = evolve_and_export(config, run_dir, export_to if export else None, force=True, keep_existing=True,
                                  progress=progress, allow_code=True, keep=keep)  # the demo's own config and code
    build = None if export else functools.partial(export_best, result, run_dir, export_to, force=True)
    return {"run_dir": run_dir, "model": export_to, "fitness": result.best.get("fitness"),
            "evaluations": result.evaluations, "seconds": result.seconds, "build": build}


def baseline_recipe(name: str, recipe: dict[str, Any], sources: dict[str, str], path: Path) -> Path:
    """Write a baseline's recipe (sources by path, float32 like the sources) as ``path``; returns it."""
    from tsugiki.evolution.sources import recipe_with_paths
    from tsugiki.fileio import atomic_write
    from tsugiki.merging.recipe import Recipe

    data = {**recipe_with_paths(recipe, sources), "dtype": "float32"}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"# the {name} baseline of tsugiki demo; tsugiki merge {path.name} -o DIR writes it\n"
                       + Recipe.from_dict(data, source_name=name).to_yaml())
    return path


def merge_recipe(recipe: Path, out: Path, sources: dict[str, str]) -> Path:
    """The model dir of a recipe file (what ``tsugiki merge RECIPE -o OUT`` writes)."""
    from tsugiki.merging.execute import MergeOptions
    from tsugiki.merging.recipe import load_recipe
    from tsugiki.merging.to_disk import merge_to_disk

    merge_to_disk(load_recipe(recipe), out, MergeOptions(force=True, progress=False), named=named_sources(sources, out))
    return out


# the tied embedding of Gemma 3 270M (168 M of its 268 M parameters) as a causal LM and inside a LLaVA: no
# fine-tune and no merge of the demo changes it, so every model dir of a run holds it bit for bit
SHARED_TENSORS = ("model.embed_tokens.weight", "language_model.model.embed_tokens.weight")


def store_shared(model_dir: Path, run_dir: Path) -> Path:
    """Keep ``model_dir``'s copy of the tensors every demo model shares once per run dir (RUN_DIR/shared, hard
    links; :mod:`tsugiki.merging.shared_tensors`): 671 MB of each 1.07 GB LM dir. Returns ``model_dir``."""
    from tsugiki.merging.shared_tensors import share

    share(model_dir, Path(run_dir) / "shared", SHARED_TENSORS)
    return model_dir


def demo_root(path: Path) -> Path | None:
    """The demo run dir holding ``path`` (the folder with demo.json), if any."""
    return next((p for p in Path(path).resolve().parents if (p / "demo.json").exists()), None)


def named_sources(paths: dict[str, Any], out: Path) -> dict[str, Any]:
    """How a merge the demo writes at ``out`` names its sources: those inside the demo's run dir by
    paths relative to ``out`` (they move with it), the others (the cached base) by absolute path."""
    from tsugiki.merging.provenance import Named

    root = demo_root(out)
    named = {}
    for key, p in paths.items():
        inside = root is not None and Path(p).resolve().is_relative_to(root)
        named[str(p)] = Named(key if inside else str(Path(p).resolve()), f"the demo's {key!r} model")
    return named
