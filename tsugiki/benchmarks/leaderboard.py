"""A leaderboard from result files: rows = models, columns = benchmarks (their primary score),
the best value in each column in bold, and deltas against a baseline row. Markdown and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field

from tsugiki.benchmarks.results import BenchmarkResult
from tsugiki.benchmarks.specs import BENCHMARKS
from tsugiki.errors import BenchmarkError
from tsugiki.tables import Cell, Table, esc, html_page, markdown
from tsugiki.tables import to_html as to_html_table

Column = tuple[str, str]  # (benchmark, primary score)


@dataclass
class Leaderboard:
    models: list[str]
    columns: list[Column]
    titles: dict[Column, str]
    higher_is_better: dict[Column, bool]
    cells: dict[tuple[str, Column], BenchmarkResult]
    baseline: str | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, model: str, col: Column) -> float | None:
        r = self.cells.get((model, col))
        return None if r is None else r.scores[col[1]].value

    def best(self, col: Column) -> float | None:
        values = [v for m in self.models if (v := self.value(m, col)) is not None]
        if not values:
            return None
        return max(values) if self.higher_is_better[col] else min(values)

    def cell_text(self, model: str, col: Column) -> tuple[str, bool, str]:
        """(value text with delta, is best, interval text) for one cell; ``("—", False, "")`` if empty."""
        v = self.value(model, col)
        if v is None:
            return "—", False, ""
        d = _digits(self.cells[(model, col)])
        text = f"{v:.{d}f}"
        if self.baseline and model != self.baseline:
            b = self.value(self.baseline, col)
            if b is not None:
                text += f" ({v - b:+.{d}f})"
        est = self.cells[(model, col)].scores[col[1]]
        return text, round(v, 6) == round(self.best(col), 6), f"95% CI {est.low:.{d}f}–{est.high:.{d}f}"


def _digits(result: BenchmarkResult) -> int:
    """Decimals shown: tsugiki's scores are percentages (1); lm-eval's keep lm-eval's scale, mostly fractions (3)."""
    return 3 if result.metric == "lm-eval" else 1


def build(results: list[BenchmarkResult], baseline: str | None = None) -> Leaderboard:
    if not results:
        raise BenchmarkError("no results to put on a leaderboard")
    order = {name: i for i, name in enumerate(BENCHMARKS.names())}
    latest: dict[tuple[str, Column], BenchmarkResult] = {}
    notes = []
    for r in results:
        key = (r.model, (r.benchmark, r.primary))
        if key in latest:
            keep = max(latest[key], r, key=lambda x: x.created)
            notes.append(f"{r.model} / {r.benchmark}: several results, kept the latest ({keep.created})")
            r = keep
        latest[key] = r
    models = list(dict.fromkeys(r.model for r in results))
    if baseline is not None:
        if baseline not in models:
            raise BenchmarkError(f"baseline {baseline!r} is not among the models ({', '.join(models)})")
        models = [baseline] + [m for m in models if m != baseline]
    columns = sorted({col for _, col in latest}, key=lambda c: (order.get(c[0], len(order)), c))
    titles, better = {}, {}
    for (_, col), r in latest.items():
        titles[col], better[col] = f"{r.title} ({col[1]})", r.higher_is_better
    for col in columns:
        versions = {r.version for (_, c), r in latest.items() if c == col}
        if len(versions) > 1:
            notes.append(f"{titles[col]}: results from different benchmark versions ({', '.join(sorted(versions))})")
    return Leaderboard(models, columns, titles, better, latest, baseline, list(dict.fromkeys(notes)))


def _table(lb: Leaderboard) -> Table:
    head = ["Model", *(lb.titles[c] + (" ↑" if lb.higher_is_better[c] else " ↓") for c in lb.columns)]
    rows = []
    for m in lb.models:
        cells: list = [f"{m} (baseline)" if m == lb.baseline else m]
        for c in lb.columns:
            text, best, ci = lb.cell_text(m, c)
            cells.append(Cell(text, strong=best, numeric=True, title=ci))
        rows.append(cells)
    return Table(head, rows, row_classes=["baseline" if m == lb.baseline else None for m in lb.models])


def to_markdown(lb: Leaderboard) -> str:
    details = Table(["Model", "Benchmark", "Score", "Value", "95% CI", "n"], [
        [m, r.title, name, f"{est.value:.{_digits(r) + 1}f}", f"{est.low:.{_digits(r) + 1}f}–{est.high:.{_digits(r) + 1}f}",
         str(r.n)]
        for (m, _), r in sorted(lb.cells.items(), key=lambda kv: (lb.models.index(kv[0][0]), lb.columns.index(kv[0][1])))
        for name, est in r.scores.items()])
    lines = [markdown(_table(lb)), "", "<details><summary>Scores with 95% bootstrap intervals</summary>", "",
             markdown(details), "", "</details>"]
    lines += [""] + [f"- {n}" for n in lb.notes] if lb.notes else []
    return "\n".join(lines) + "\n"


def to_html(lb: Leaderboard, title: str = "tsugiki leaderboard") -> str:
    notes = "".join(f"<li>{esc(n)}</li>" for n in lb.notes)
    return html_page(title, f"<h1>{esc(title)}</h1>{to_html_table(_table(lb))}"
                            "<p>Bold: best in column. Hover a cell for its 95% bootstrap interval.</p>"
                            + (f"<ul>{notes}</ul>" if notes else ""))
