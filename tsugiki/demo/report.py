"""The demo's outputs in RUN_DIR, from the stages' :class:`~tsugiki.demo.stage.StageResult` s.

- ``results.json``: the numbers (schema below), for scripts and for comparing runs.
- ``leaderboard.md``: per stage, the models ranked by the headline metric, with intervals and verdict.
- ``report.html``: one page, no scripts and nothing fetched (inline CSS; images referenced by paths
  relative to the run dir, so the folder can be moved or archived whole).
- :func:`terminal_leaderboard`: the leaderboard as plain text that fits 100 columns.

``results.json``::

    {"tsugiki_version": "0.1.0", "created": "2026-01-01T12:00:00+00:00",
     "meta": {"seed": 0, "quick": true, "seconds": 41.2, "machine": {...}, ...},
     "stages": {"lm": {"headline": "acc", "lower_is_better": false, "title": ..., "verdict": ...,
                       "notes": [...], "seconds": ..., "models": {...}, "recipes": {...},
                       "rows": [{"model": ..., "role": "source" | "baseline" | "evolved",
                                 "metrics": {"acc": 52.5}, "ci": {"acc": [48.9, 56.1]}}],
                       "seeds": [{"seed": 0, "model": "evolved PS (seed 0)", "won": false, "test": "binomial SE",
                                  "margins_se": {"JA sibling": 1.4, ...}}],
                       "seeds_won": 0}}}

``models``: the model dirs the stage kept; ``recipes``: the models kept as recipe files only (``tsugiki merge
RECIPE -o DIR`` writes one). ``seeds``: per search seed, its best evolved model's margin over every source and baseline on the headline
in standard errors (``won``: all ≥ 2); ``seeds_won`` counts the seeds that won.

Non-finite numbers (a metric that could not be computed) are written as ``null``; every file is
written atomically (a temp file renamed over the old one), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import tsugiki
from tsugiki.demo.stage import Row, StageResult
from tsugiki.fileio import atomic_write
from tsugiki.fileio import json_safe as _json_safe  # non-finite floats -> None
from tsugiki.tables import MISSING, Cell, Table, clip, esc, html_page, markdown, md, terminal, to_html, wrap

log = logging.getLogger(__name__)

RESULTS_FILE, LEADERBOARD_FILE, REPORT_FILE = "results.json", "leaderboard.md", "report.html"
REQUIRED_META = ("seed", "quick", "seconds")
TERMINAL_WIDTH = 100


# ---------------------------------------------------------------- results.json

def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (timings and float results depend on it)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")  # only describe torch if the run used it; never import it here
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def results_json(stages: list[StageResult], meta: dict[str, Any], created: str | None = None) -> dict[str, Any]:
    """The ``results.json`` document (``meta`` must hold seed, quick and seconds; machine is filled in)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"results meta lacks {', '.join(missing)} (has: {', '.join(meta) or 'nothing'})")
    out: dict[str, Any] = {}
    for s in stages:
        if s.stage in out:
            raise ValueError(f"stage {s.stage!r} appears twice in the results")
        data = s.to_json()
        for row in data["rows"]:
            row["metrics"] = {k: _number(v, f"stage {s.stage}, model {row['model']!r}, metric {k!r}")
                              for k, v in row["metrics"].items()}
        out[s.stage] = data
    return {"tsugiki_version": tsugiki.__version__, "created": created or _now(),
            "meta": {**meta, "machine": meta.get("machine") or machine_info()}, "stages": out}


def write_results(run_dir: str | Path, stages: list[StageResult], meta: dict[str, Any],
                  created: str | None = None) -> Path:
    """Write ``RUN_DIR/results.json`` atomically and return its path."""
    doc = _json_safe(results_json(stages, meta, created))
    text = json.dumps(doc, ensure_ascii=False, indent=2, allow_nan=False) + "\n"  # serialise before touching disk
    path = Path(run_dir) / RESULTS_FILE
    atomic_write(path, text)
    return path


def _number(v: Any, where: str) -> float:
    try:  # numpy / torch scalars become plain floats (json cannot write them)
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: not a number ({v!r})") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- shared table logic

def _float(v: Any) -> float | None:
    """A finite number as a float (numpy / torch scalars included), else None (shown as a dash)."""
    if isinstance(v, (str, bytes)) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def ranked(stage: StageResult) -> list[Row]:
    """Rows best first by the headline (ties keep the stage's order; rows without a value go last)."""
    sign = 1.0 if stage.lower_is_better else -1.0

    def key(row: Row) -> tuple[bool, float]:
        v = _float(row.metrics.get(stage.headline))
        return (True, 0.0) if v is None else (False, sign * v)

    return sorted(stage.rows, key=key)


def best_rows(stage: StageResult) -> set[int]:
    """Indices (in ``stage.rows``) of the rows with the best headline value (all of them on a tie)."""
    values = {i: _float(r.metrics.get(stage.headline)) for i, r in enumerate(stage.rows)}
    finite = {i: v for i, v in values.items() if v is not None}
    if not finite:
        return set()
    best = min(finite.values()) if stage.lower_is_better else max(finite.values())
    return {i for i, v in finite.items() if v == best}


def metric_names(stage: StageResult) -> list[str]:
    """The headline first, then every other metric in the order rows first name them."""
    names = dict.fromkeys([stage.headline])
    for r in stage.rows:
        names.update(dict.fromkeys(r.metrics))
    return list(names)


def _decimals(stage: StageResult, metric: str) -> int:
    """One precision per column, from its largest value: 52.5 (percent), 1.23, 0.287 (CLIP-like)."""
    values = [abs(v) for r in stage.rows if (v := _float(r.metrics.get(metric))) is not None]
    top = max(values, default=0.0)
    return 1 if top >= 10 else 2 if top >= 1 else 3 if top >= 0.1 else 4


def _fmt(v: Any, d: int) -> str:
    v = _float(v)
    return MISSING if v is None else f"{v:.{d}f}"


def _pm(row: Row, metric: str, d: int) -> str:
    """``52.5 ± 3.6``; an asymmetric interval (bootstrap) as ``52.5 +4.1/−3.2``; no interval: the value."""
    v, ci = _float(row.metrics.get(metric)), [_float(x) for x in row.ci.get(metric, ())]
    if v is None or len(ci) != 2 or None in ci:
        return _fmt(v, d)
    lo, hi = ci
    if not lo <= v <= hi:  # not an interval around the value: show it as it is
        return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"
    up, down = f"{hi - v:.{d}f}", f"{v - lo:.{d}f}"
    return f"{v:.{d}f} ± {up}" if up == down else f"{v:.{d}f} +{up}/−{down}"


def _arrow(stage: StageResult) -> str:
    return "↓" if stage.lower_is_better else "↑"


def _table_cells(stage: StageResult, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and text cells (model, role, each metric ± interval) shared by Markdown and terminal."""
    names = metric_names(stage)
    decimals = {m: _decimals(stage, m) for m in names}
    header = ["model", "role", *(f"{m} {_arrow(stage)}" if m == stage.headline else m for m in names)]
    return header, [[r.model, r.role, *(_pm(r, m, decimals[m]) for m in names)] for r in rows]


def _stage_title(stage: StageResult) -> str:
    return f"{stage.title} ({stage.stage})" if stage.title else stage.stage


# ---------------------------------------------------------------- leaderboard.md

def stage_markdown(stage: StageResult) -> str:
    """One stage's section: a table ranked by the headline (best in bold), the verdict, the notes."""
    rows = ranked(stage)
    best = {id(stage.rows[i]) for i in best_rows(stage)}
    header, cells = _table_cells(stage, rows)
    cells = [[*c[:2], Cell(c[2], strong=id(row) in best), *c[3:]] for row, c in zip(rows, cells)]
    lines = [f"## {md(_stage_title(stage))}", "",
             f"Ranked by **{md(stage.headline)}** ({'lower' if stage.lower_is_better else 'higher'} is better); "
             "± is the 95% interval.", "", markdown(Table(header, cells))]
    if stage.verdict:
        lines += ["", f"**Verdict:** {md(stage.verdict)}"]
    lines += [""] + [f"- {md(n)}" for n in stage.notes] if stage.notes else []
    return "\n".join(lines) + "\n"


def leaderboard_markdown(stages: list[StageResult]) -> str:
    return "# tsugiki demo leaderboard\n\n" + "\n".join(stage_markdown(s) for s in stages)


def write_leaderboard(run_dir: str | Path, stages: list[StageResult]) -> Path:
    """Write ``RUN_DIR/leaderboard.md`` atomically and return its path."""
    path = Path(run_dir) / LEADERBOARD_FILE
    atomic_write(path, leaderboard_markdown(stages))
    return path


# ---------------------------------------------------------------- terminal

def terminal_leaderboard(stages: list[StageResult], width: int = TERMINAL_WIDTH) -> str:
    """Plain text, every line at most ``width`` columns: per stage the ranked table and the verdict.
    Long model names are clipped and metric columns that do not fit are left out (and counted)."""
    out: list[str] = []
    for stage in stages:
        title = f"{_stage_title(stage)} · ranked by {stage.headline} {_arrow(stage)} · {stage.seconds:.1f} s"
        lines, dropped = terminal(Table(*_table_cells(stage, ranked(stage))), width)
        out += [clip(title, width), *lines]
        if dropped:
            out.append(f"  (+{dropped} more metrics in {LEADERBOARD_FILE})")
        if stage.verdict:
            out += wrap(stage.verdict, width, "  ")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n" if out else "(no stages)\n"


# ---------------------------------------------------------------- report.html

def _image_src(run_dir: Path, path: str) -> str | None:
    """The URL-quoted relative path of an image inside the run dir, or None (logged) if it is not there."""
    root = run_dir.resolve()
    p = Path(path)
    target = (p if p.is_absolute() else root / p).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        log.warning("report: image %s is missing or outside the run dir %s", path, run_dir)
        return None
    return quote(target.relative_to(root).as_posix())


def _img(run_dir: Path, path: str, alt: str, thumb: bool = False) -> str:
    src = _image_src(run_dir, path)
    if src is None:
        return f'<span class="missing">image missing: {esc(path)}</span>'
    if thumb:
        return f'<a href="{esc(src)}"><img class="thumb" src="{esc(src)}" alt="{esc(alt)}" loading="lazy"></a>'
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def _headline_table(stage: StageResult) -> str:
    """Model, role, every metric with its interval (rows in the stage's order, as in the paper's tables)."""
    names = metric_names(stage)
    decimals = {m: _decimals(stage, m) for m in names}
    best = best_rows(stage)
    with_se = [m for m in names if any(isinstance(r.extra.get("se"), dict) and m in r.extra["se"] for r in stage.rows)]
    has_extra = any(k != "se" for r in stage.rows for k in r.extra)
    head = ["model", "role"]
    for m in names:
        head += [f"{m} {_arrow(stage)}" if m == stage.headline else m] + ([f"{m} SE"] if m in with_se else [])
    rows = []
    for i, row in enumerate(stage.rows):
        cells: list = [row.model, row.role]
        for m in names:
            d, v, ci = decimals[m], row.metrics.get(m), row.ci.get(m)
            note = f"[{_fmt(ci[0], d)}, {_fmt(ci[1], d)}]" if ci and _float(v) is not None else ""
            cells.append(Cell(_fmt(v, d), strong=m == stage.headline and i in best, numeric=True, note=note))
            if m in with_se:
                se = row.extra["se"].get(m) if isinstance(row.extra.get("se"), dict) else None
                cells.append(Cell(_fmt(se, d), numeric=True))
        if has_extra:
            cells.append(Cell("", markup="<br>".join(f"{esc(k)}: {esc(_detail(v))}" for k, v in row.extra.items() if k != "se")))
        rows.append(cells)
    head += ["details"] if has_extra else []
    return (to_html(Table(head, rows, row_classes=[r.role for r in stage.rows]))
            + f'<p class="ci">Bold: best {esc(stage.headline)}. Brackets: 95% interval.</p>')


def _detail(v: Any) -> str:
    """A row's free-form detail as text: numbers to 4 significant digits, mappings as ``k: v``."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return str(float(f"{v:.4g}")) if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_detail(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_detail(x) for x in v) + "]"
    return str(v)


def _samples(run_dir: Path, stage: StageResult) -> str:
    has_expected = any(s.expected is not None for s in stage.samples)
    has_image = any(s.image for s in stage.samples)
    head = ["model", "prompt", "output"] + ["expected"] * has_expected + ["image"] * has_image
    text = lambda t: Cell(t, markup=f'<span class="text">{esc(t)}</span>')  # noqa: E731
    rows = []
    for s in stage.samples:
        cells = [Cell(s.model), text(s.prompt), text(s.output)]
        if has_expected:
            cells.append(text(s.expected) if s.expected is not None else Cell(""))
        if has_image:
            cells.append(Cell("", markup=_img(run_dir, s.image, s.prompt, thumb=True)) if s.image else Cell(""))
        rows.append(cells)
    return "<h3>Samples</h3>" + to_html(Table(head, rows))


def _stage_html(run_dir: Path, stage: StageResult) -> str:
    parts = [f'<section id="{esc(stage.stage)}"><h2>{esc(_stage_title(stage))}</h2>']
    if stage.verdict:
        parts.append(f'<p class="verdict">{esc(stage.verdict)}</p>')
    parts.append(_headline_table(stage))
    for t in stage.tables:
        parts.append(to_html(Table(t.header, t.rows, caption=t.title)) + (f'<p class="ci">{esc(t.note)}</p>' if t.note else ""))
    for f in stage.figures:
        parts.append(f"<figure>{_img(run_dir, f.path, f.caption)}<figcaption>{esc(f.caption)}</figcaption></figure>")
    if stage.samples:
        parts.append(_samples(run_dir, stage))
    if stage.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in stage.notes) + "</ul>")
    if stage.models:
        parts.append("<p>Models written: " + ", ".join(f'<a href="{esc(quote(d))}">{esc(m)}</a>'
                                                       for m, d in stage.models.items()) + "</p>")
    if stage.recipes:
        parts.append("<p>Models kept as recipes (scored, then deleted; <code>tsugiki merge RECIPE -o DIR</code> writes "
                     "one again): " + ", ".join(f'<a href="{esc(quote(d))}">{esc(m)}</a>'
                                                for m, d in stage.recipes.items()) + "</p>")
    parts.append(f'<p class="ci">Stage time: {stage.seconds:.1f} s</p></section>')
    return "\n".join(parts)


def _header_rows(stages: list[StageResult], meta: dict[str, Any], created: str) -> list[tuple[str, str]]:
    quick = meta.get("quick")
    rows = [("stages", ", ".join(_stage_title(s) for s in stages) or "none"), ("created", created),
            ("seed", str(meta.get("seed", MISSING))),
            ("size", MISSING if quick is None else "quick (the CI budget)" if quick else "full"),
            ("total time", f"{_fmt(meta.get('seconds'), 1)} s"),
            ("tsugiki", tsugiki.__version__)]
    machine = meta.get("machine") or machine_info()
    if isinstance(machine, dict):
        machine = ", ".join(f"{k}: {v}" for k, v in machine.items())
    rows.append(("machine", str(machine)))
    if meta.get("failed"):
        rows.append(("failed", ", ".join(map(str, meta["failed"]))))
    # "stages" is the first row already; "failed" only when a stage failed
    rows += [(str(k), _detail(v)) for k, v in meta.items() if k not in {"seed", "quick", "seconds", "machine", "stages", "failed"}]
    return rows


def report_html(run_dir: str | Path, stages: list[StageResult], meta: dict[str, Any],
                created: str | None = None) -> str:
    run_dir = Path(run_dir)
    created = created or _now()
    head = to_html(Table((), _header_rows(stages, meta, created), key_value=True))
    toc = " · ".join(f'<a href="#{esc(s.stage)}">{esc(s.title or s.stage)}</a>' for s in stages)
    return html_page("tsugiki demo", "<h1>tsugiki demo</h1>"
                     "<p>Evolutionary model merging in miniature — Gemma 3 270M for the LM and VLM stages, a tiny SDXL — "
                     "offline (after Akiba et al. 2024, arXiv:2403.13187). "
                     f'Numbers: <a href="{RESULTS_FILE}">{RESULTS_FILE}</a>, ranking: <a href="{LEADERBOARD_FILE}">'
                     f"{LEADERBOARD_FILE}</a>.</p>\n{head}\n<p>{toc}</p>\n"
                     + "\n".join(_stage_html(run_dir, s) for s in stages))


def write_report(run_dir: str | Path, stages: list[StageResult], meta: dict[str, Any],
                 created: str | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` atomically and return its path."""
    path = Path(run_dir) / REPORT_FILE
    atomic_write(path, report_html(run_dir, stages, meta, created))
    return path
