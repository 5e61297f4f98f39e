"""Plots (PNG) and the one-screen terminal summary of a run dir.

- ``plots/fitness.png``: every candidate's fitness over evaluations, the best so far, and the best of
  each generation next to its score on the validation split (the gap shows overfitting to the fitness
  set, which the toy runs measured at 2-5x).
- ``plots/pareto.png`` (a multi-objective run): every candidate in the first two objectives, the Pareto
  front of the evaluated ones, and the validated front points on the validation split.
- the space kind's plots of the best candidate (:meth:`~tsugiki.evolution.space_kind.SpaceKind.plots`,
  drawn in the kind's home): ``plots/ps_heatmap.png`` for ps and sdxl_blocks (its parameters per model
  and layer group or UNet block, as in Fig. 3 of Akiba et al. 2024, arXiv:2403.13187;
  :mod:`tsugiki.evolution.kinds.ps.plots`), ``plots/dfs_path.png`` for dfs and ps_dfs (the inference
  path and the scaling matrix W, as in the paper's Fig. 4; :mod:`tsugiki.evolution.kinds.dfs.plots`).

- ``report.html``: a self-contained page (no scripts, nothing fetched) with the summary table, the
  best candidate's parameters and a per-generation table, showing the PNG plots above (files in
  ``plots/``, referenced relatively, so the run dir can be moved or archived whole).

matplotlib is imported lazily and used through its object API (no pyplot state, no display).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tsugiki.evolution.rundir import CALIBRATION, ESTIMATOR, RunDir
from tsugiki.evolution.space_kind import SPACE_KINDS
from tsugiki.fileio import atomic_write
from tsugiki.tables import Cell, Table, esc, html_page, to_html


def figure(w: float, h: float):
    """A matplotlib figure (object API, no pyplot state) in the size and layout every run plot uses."""
    from matplotlib.figure import Figure  # matplotlib only when plots are drawn

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def plot_fitness(history: list[dict], generations: list[dict], out: Path) -> Path:
    fig = figure(8, 4.5)
    ax = fig.add_subplot()
    xs = list(range(1, len(history) + 1))
    ok = [(x, h["fitness"]) for x, h in zip(xs, history) if h["fitness"] is not None]
    if ok:
        ax.scatter(*zip(*ok), s=8, alpha=0.35, color="tab:gray", label="candidate (fitness split)")
        best, run = [], -math.inf
        for x, h in zip(xs, history):
            if h["fitness"] is not None:
                run = max(run, h["fitness"])
            best.append(run if run > -math.inf else math.nan)
        ax.plot(xs, best, color="tab:blue", label="best so far (fitness)")
        floor = min(f for _, f in ok)
        failed = [x for x, h in zip(xs, history) if h["fitness"] is None]
        if failed:
            ax.scatter(failed, [floor] * len(failed), marker="x", color="tab:red", s=14, label="failed candidate")
    g_x = [g["evaluations"] for g in generations if g["best_fitness"] is not None]
    ax.plot(g_x, [g["best_fitness"] for g in generations if g["best_fitness"] is not None], "o-", ms=3,
            color="tab:green", label="generation best (fitness)")
    val = [(g["evaluations"], g["validation"]) for g in generations if g.get("validation") is not None]
    if val:
        ax.plot(*zip(*val), "s--", ms=3, color="tab:orange", label="generation best (validation)")
    full = [(g["evaluations"], g["best_full_fitness"]) for g in generations if g.get("best_full_fitness") is not None]
    if full:  # an estimated run: the estimate's error is the gap to the generation best
        ax.plot(*zip(*full), "D:", ms=4, color="tab:purple", label="generation best (full fitness set)")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("fitness (higher is better)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.savefig(out)
    return out


def plot_pareto(history: list[dict], front: dict, out: Path) -> Path:
    """Every evaluated candidate in the first two objectives, the front highlighted; beside it, the validated
    front points' validation objectives (a multi-objective run; more than two objectives: the first two)."""
    names = [o["name"] for o in front["objectives"]][:2]
    label = [f"{o['name']} ({'higher' if o['direction'] == 'maximize' else 'lower'} is better)" for o in front["objectives"][:2]]
    validated = [p for p in front["front"] if p.get("validation")]
    fig = figure(12 if validated else 6.5, 5)
    ax = fig.add_subplot(1, 2 if validated else 1, 1)
    pts = [[h["objectives"][n] for n in names] for h in history if h.get("objectives")]
    if pts:
        ax.scatter(*zip(*pts), s=8, alpha=0.35, color="tab:gray", label="evaluated candidate")
    fr = sorted([p["objectives"][n] for n in names] for p in front["front"])
    if fr:
        ax.plot(*zip(*fr), "o-", ms=4, color="tab:blue", label=f"front ({len(fr)} points, fitness split)")
    ax.set_xlabel(label[0])
    ax.set_ylabel(label[1])
    ax.set_title("fitness split")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if validated:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.scatter(*zip(*[[p["objectives"][n] for n in names] for p in validated]), s=14, color="tab:blue", label="fitness split")
        ax2.scatter(*zip(*[[p["validation"][n] for n in names] for p in validated if None not in p["validation"].values()]),
                    s=14, marker="s", color="tab:orange", label="validation split")
        ax2.set_xlabel(label[0])
        ax2.set_ylabel(label[1])
        ax2.set_title("front points: fitness vs validation")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    fig.savefig(out)
    return out


def write_plots(run_dir: str | Path, problem=None) -> list[Path]:
    """Write the run's PNG plots; none (with a warning) when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logging.getLogger("tsugiki.evolve").warning("matplotlib is not installed: no plots written")
        if RunDir(run_dir).read_jsonl("history.jsonl"):
            write_html(run_dir)
        return []
    rd = RunDir(run_dir)
    history, generations = rd.read_jsonl("history.jsonl"), rd.read_jsonl("generations.jsonl")
    if not history:
        return []
    out = rd.file("plots")
    out.mkdir(exist_ok=True)
    files = [plot_fitness(history, generations, out / "fitness.png")]
    front = _front(rd)
    if front is not None:
        files.append(plot_pareto(history, front, out / "pareto.png"))
    best = _best(rd)
    if problem is not None and best is not None:
        files += problem.config.spec.space.plots(problem.details(best["params"]), out)
    write_html(rd.path)
    return files


_CAPTIONS = {"fitness.png": "Fitness over evaluations: every candidate, the best so far, and each generation's best "
                            "on the fitness and validation splits (the gap shows overfitting); in an estimated run "
                            "also its score on the full fitness set (the gap shows the estimate's error).",
             "pareto.png": "Every evaluated candidate in the first two objectives with the Pareto front of the evaluated "
                           "ones (front.json); beside it, the validated front points on the validation split."}


def _captions() -> dict[str, str]:
    """The PNGs report.html shows, in its order, with their captions: the run's, then every kind's."""
    out = dict(_CAPTIONS)
    for name in SPACE_KINDS:
        for png, caption in SPACE_KINDS.get(name).plot_captions.items():
            out.setdefault(png, caption)
    return out


def write_html(run_dir: str | Path) -> Path:
    """``RUN_DIR/report.html`` from the run's logs and the PNGs in ``plots/`` (written atomically)."""

    rd = RunDir(run_dir)
    history, generations = rd.read_jsonl("history.jsonl"), rd.read_jsonl("generations.jsonl")
    best = _best(rd)
    name = rd.path.name
    cfg = rd.file("config.yaml")
    if cfg.exists():
        for line in cfg.read_text(encoding="utf-8").splitlines():
            if line.startswith("name:"):
                name = line.split(":", 1)[1].strip()
                break
    failed = sum(h["fitness"] is None for h in history)
    seconds = sum(g["seconds"] for g in generations)
    rows = [("run dir", str(rd.path)), ("generations", len(generations)), ("evaluations", len(history)),
            ("failed candidates", failed), ("time", f"{seconds:.1f} s ({len(history) / max(seconds, 1e-9):.2f} evals/s)")]
    if best:
        rows += [("best fitness", _f(best["fitness"])), ("best validation", _f(best.get("validation"))),
                 ("best found at", f"generation {best['generation']}, candidate {best['index']}")]
    parts = [f"<h1>{esc(name)}</h1><h2>Summary</h2>", to_html(Table((), rows, key_value=True))]
    plots = rd.file("plots")
    for png, caption in _captions().items():
        if (plots / png).exists():
            parts.append(f"<figure><img src=\"plots/{png}\" alt=\"{png}\"><figcaption>{esc(caption)}</figcaption></figure>")
    if best:
        params = [[k, Cell(f"{v:.4g}", numeric=True)] for k, v in best["params"].items()]
        parts += ["<h2>Best candidate</h2>", to_html(Table(["parameter", "value"], params)),
                  "<p>Recipe: <a href=\"best.yaml\">best.yaml</a></p>"]
    front = _front(rd)
    if front is not None:
        names = [o["name"] for o in front["objectives"]]
        head = ["#", "generation", "index", *names, *[f"{n} (validation)" for n in names]]
        rows = [[Cell(str(c), numeric=True) for c in (k, p["generation"], p["index"], *[_f(p["objectives"][n]) for n in names],
                                                      *[_f((p.get("validation") or {}).get(n)) for n in names])]
                for k, p in enumerate(front["front"])]
        parts += ["<h2>Pareto front</h2><p>Non-dominated evaluated candidates (<a href=\"front.json\">front.json</a>; "
                  + ", ".join(f"{o['name']}: {o['direction']}" for o in front["objectives"])
                  + "); <code>--front-index #</code> exports one.</p>", to_html(Table(head, rows))]
    if generations:
        estimated = any("best_full_fitness" in g for g in generations)
        counted = any("items_scored" in g for g in generations)  # runs with fitness data
        head = ["generation", "evaluations", "best", *(["best on the full set"] if estimated else []), "mean",
                "validation", "best so far", "failures", *(["items scored"] if counted else []), "seconds"]
        rows = [[Cell(str(c), numeric=True) for c in (
            g["generation"], g["evaluations"], _f(g["best_fitness"]), *([_f(g.get("best_full_fitness"))] if estimated else []),
            _f(g.get("mean_fitness")), _f(g.get("validation")), _f(g.get("best_so_far")), g.get("failures", 0),
            *([g.get("items_scored", "-")] if counted else []), f"{g['seconds']:.2f}")] for g in generations]
        parts += ["<h2>Generations</h2>", to_html(Table(head, rows))]
    errors = [h for h in history if h["fitness"] is None][:10]
    if errors:
        parts += ["<h2>First failed candidates</h2>",
                  to_html(Table(["generation", "index", "error"], [[h["generation"], h["index"], h["error"]] for h in errors]))]
    out = rd.file("report.html")
    atomic_write(out, html_page(f"{name}: tsugiki evolve", "\n".join(parts)))
    return out


def _best(rd: RunDir) -> dict | None:
    p = rd.file("best.json")
    return json.loads(p.read_text()) if p.exists() else None


def _front(rd: RunDir) -> dict | None:
    p = rd.file("front.json")
    return json.loads(p.read_text()) if p.exists() else None


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def summary(run_dir: str | Path, *, stop_reason: str = "", max_params: int = 12) -> str:
    """A one-screen text summary of a run dir."""
    rd = RunDir(run_dir)
    history, generations = rd.read_jsonl("history.jsonl"), rd.read_jsonl("generations.jsonl")
    best = _best(rd)
    failed = [h for h in history if h["fitness"] is None]
    seconds = sum(g["seconds"] for g in generations)
    lines = [f"run dir      {rd.path}",
             f"progress     {len(generations)} generations, {len(history)} evaluations, {len(failed)} failed, "
             f"{seconds:.1f} s ({len(history) / max(seconds, 1e-9):.1f} evals/s)"]
    if stop_reason:
        lines.append(f"stopped      {stop_reason}")
    if best:
        lines.append(f"best         fitness {_f(best['fitness'])}, validation {_f(best.get('validation'))} "
                     f"(generation {best['generation']}, candidate {best['index']})")
        if "objectives" in best:
            lines.append("objectives   " + ", ".join(f"{k} {_f(v)}" for k, v in best["objectives"].items())
                         + " (best: the front's equal-weight choice; front.json holds the front)")
        checked = [g for g in generations if g.get("best_full_fitness") is not None]
        if checked:
            errors = [abs(g["best_fitness"] - g["best_full_fitness"]) for g in checked]
            lines.append(f"estimate     generation bests vs the full fitness set: mean |error| {sum(errors) / len(errors):.4g} "
                         f"over {len(checked)} generations")
        if generations and generations[-1].get("validation") is not None:
            lines.append(f"last gen     best fitness {_f(generations[-1]['best_fitness'])}, validation {_f(generations[-1]['validation'])}")
        slots = [v for k, v in best["params"].items() if k.startswith("use.")]
        others = [(k, v) for k, v in best["params"].items() if not k.startswith("use.")]
        if slots:
            lines.append(f"dfs slots    {sum(v > 0 for v in slots)} of {len(slots)} on the path")
        lines.append("params       " + ", ".join(f"{k}={v:.3g}" for k, v in others[:max_params])
                     + (f" ... ({len(others) - max_params} more)" if len(others) > max_params else ""))
    if failed:
        lines.append(f"first error  gen {failed[0]['generation']} #{failed[0]['index']}: {str(failed[0]['error'])[:100]}")
    files = [f for f in ("best.yaml", "best.json", "front.json", "history.jsonl", "generations.jsonl", CALIBRATION, ESTIMATOR,
                         "report.html") if rd.file(f).exists()]
    plots = sorted(p.name for p in rd.file("plots").glob("*.png")) if rd.file("plots").exists() else []
    lines.append("files        " + ", ".join(files + [f"plots/{p}" for p in plots]))
    return "\n".join(lines)
