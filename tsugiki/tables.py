"""One table renderer for every page and file the project writes: benchmark leaderboards
(:mod:`tsugiki.benchmarks.leaderboard`), the demo's leaderboard and report (:mod:`tsugiki.demo.report`)
and the evolution report (:mod:`tsugiki.evolution.report`). A :class:`Table` of :class:`Cell` s renders
as Markdown, as HTML (one stylesheet, :data:`CSS`, and :func:`html_page`) or as plain text that fits a
terminal (wide CJK characters count two columns)."""

from __future__ import annotations

import html
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

MISSING = "—"

CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
       "table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;"
       "vertical-align:top}th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums;"
       "white-space:nowrap}.ci{color:#666;font-size:.85em}tr.evolved td{background:#eef7ee}"
       "tr.baseline td{background:#fafae6}.verdict{font-size:1.1em;border-left:4px solid #4a4;padding-left:.6em}"
       "figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}img.thumb{max-width:160px;"
       "max-height:160px}.text{white-space:pre-wrap;font-family:monospace}.missing{color:#a00}"
       "caption{text-align:left;font-weight:bold;padding:.3em 0}")


@dataclass(frozen=True)
class Cell:
    """One cell: its text, and how pages show it. ``note`` follows the text in small grey type (HTML
    only: an interval); ``title`` is HTML hover text; ``markup`` is trusted HTML (an image, a link)
    that replaces the escaped text on a page."""

    text: str
    strong: bool = False
    numeric: bool = False
    note: str = ""
    title: str = ""
    markup: Optional[str] = None


CellLike = Union[Cell, str, int, float]


@dataclass
class Table:
    """``header`` (column names; none for a key-value table, whose first column is then a header
    column) and ``rows``; ``row_classes`` are HTML classes per row (``evolved``, ``baseline``, ...)."""

    header: Sequence[str]
    rows: Sequence[Sequence[CellLike]]
    caption: str = ""
    row_classes: Optional[Sequence[Optional[str]]] = None
    key_value: bool = False
    cells: list[list[Cell]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cells = [[c if isinstance(c, Cell) else Cell(str(c)) for c in row] for row in self.rows]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- Markdown

def md(text: Any) -> str:
    """One line of Markdown text: a pipe would split a table cell and ``<x>`` would be taken for HTML."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "\\<")


def markdown(table: Table) -> str:
    """The table as Markdown lines (bold for ``strong``)."""
    def line(cells: Sequence[Cell]) -> str:
        return "| " + " | ".join(f"**{md(c.text)}**" if c.strong else md(c.text) for c in cells) + " |"

    out = [line([Cell(h) for h in table.header]), "|" + "---|" * len(table.header)]
    return "\n".join(out + [line(r) for r in table.cells])


# ---------------------------------------------------------------- HTML

def _td(cell: Cell, tag: str = "td") -> str:
    body = cell.markup if cell.markup is not None else esc(cell.text)
    if cell.strong:
        body = f"<strong>{body}</strong>"
    if cell.note:
        body += f' <span class="ci">{esc(cell.note)}</span>'
    attrs = (' class="n"' if cell.numeric else "") + (f' title="{esc(cell.title)}"' if cell.title else "")
    return f"<{tag}{attrs}>{body}</{tag}>"


def to_html(table: Table) -> str:
    """The table as one HTML ``<table>``, a row per line."""
    parts = ["<table>" + (f"<caption>{esc(table.caption)}</caption>" if table.caption else "")]
    if table.header and not table.key_value:
        parts[0] += "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header) + "</tr>"
    for i, row in enumerate(table.cells):
        cls = table.row_classes[i] if table.row_classes else None
        cells = [_td(row[0], "th"), *map(_td, row[1:])] if table.key_value else list(map(_td, row))
        attr = f' class="{esc(cls)}"' if cls else ""
        parts.append(f"<tr{attr}>" + "".join(cells) + "</tr>")
    return "\n".join(parts) + "</table>"


def html_page(title: str, body: str) -> str:
    """A whole page: no scripts, nothing fetched, the shared stylesheet inline."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}\n</body></html>\n")


# ---------------------------------------------------------------- terminal

def display_width(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ending in an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    out = ""
    for c in text:
        if display_width(out + c) > width - 1:
            break
        out += c
    return out + "…"


def wrap(text: str, width: int, indent: str) -> list[str]:
    """Greedy word wrap by display width; a word (or unspaced CJK run) longer than a line is cut."""
    lines, line = [], ""
    room = width - display_width(indent)
    for word in text.split():
        while display_width(word) > room:
            head = clip(word, room + 1)[:-1] or word[0]  # longest prefix that fits (at least one character)
            if line:
                lines.append(line)
                line = ""
            lines.append(head)
            word = word[len(head):]
        candidate = f"{line} {word}" if line else word
        if display_width(candidate) > room:
            lines.append(line)
            candidate = word
        line = candidate
    if line:
        lines.append(line)
    return [indent + ln for ln in lines]


def _pad(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def terminal(table: Table, width: int, *, min_columns: int = 3, first_width: int = 32) -> tuple[list[str], int]:
    """The table as text lines of at most ``width`` columns, indented two spaces: the first column
    clipped to ``first_width``, columns beyond ``min_columns`` left out while the table is too wide.
    Returns the lines and how many columns were left out."""
    header = list(table.header)
    rows = [[clip(r[0].text, first_width), *(c.text for c in r[1:])] for r in table.cells]
    widths = [max(display_width(x) for x in col) for col in zip(header, *rows)]
    keep = len(header)
    while keep > min_columns and 2 + sum(widths[:keep]) + 2 * (keep - 1) > width:
        keep -= 1
    lines = [clip(("  " + "  ".join(_pad(c, w) for c, w in zip(r[:keep], widths[:keep]))).rstrip(), width)
             for r in [header, *rows]]
    return lines, len(header) - keep
