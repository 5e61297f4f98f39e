"""The one table renderer (tsugiki.tables): Markdown, HTML and terminal text of the same table."""

from __future__ import annotations

import re

from tsugiki.tables import Cell, Table, display_width, html_page, markdown, terminal, to_html

TABLE = Table(["model", "role", "acc ↑", "ppl"],
              [["日本語モデル", "evolved", Cell("52.5", strong=True, numeric=True, note="[48.0, 56.1]"), "1.23"],
               ["a|b <x>", "source", Cell("30.0", numeric=True, title="95% CI 1–2"), Cell("", markup="<img src=\"p.png\">")]],
              row_classes=["evolved", None])


def test_markdown_escapes_pipes_and_angle_brackets_and_bolds_strong_cells():
    lines = markdown(TABLE).splitlines()
    assert lines[:2] == ["| model | role | acc ↑ | ppl |", "|---|---|---|---|"]
    assert lines[2] == "| 日本語モデル | evolved | **52.5** | 1.23 |"
    assert lines[3] == "| a\\|b \\<x> | source | 30.0 |  |"  # markup is for pages only


def test_html_escapes_text_keeps_markup_and_marks_numbers():
    page = html_page("t <1>", to_html(TABLE))
    assert page.startswith("<!DOCTYPE html>") and "<title>t &lt;1&gt;</title>" in page and "<script" not in page
    rows = re.findall(r"<tr[^>]*>.*?</tr>", page)
    assert rows[0] == "<tr><th>model</th><th>role</th><th>acc ↑</th><th>ppl</th></tr>"
    assert rows[1] == ('<tr class="evolved"><td>日本語モデル</td><td>evolved</td>'
                       '<td class="n"><strong>52.5</strong> <span class="ci">[48.0, 56.1]</span></td><td>1.23</td></tr>')
    assert rows[2] == ('<tr><td>a|b &lt;x&gt;</td><td>source</td><td class="n" title="95% CI 1–2">30.0</td>'
                       '<td><img src="p.png"></td></tr>')
    kv = to_html(Table((), [["seed", "0"]], key_value=True))
    assert kv == "<table>\n<tr><th>seed</th><td>0</td></tr></table>"


def test_terminal_counts_wide_characters_and_drops_columns_that_do_not_fit():
    assert display_width("日本a") == 5
    lines, dropped = terminal(TABLE, 100)
    assert dropped == 0 and lines[0].split() == ["model", "role", "acc", "↑", "ppl"]
    starts = [display_width(ln[:ln.index("evolved")]) for ln in lines if "evolved" in ln]
    assert starts == [display_width("  日本語モデル  ")]  # the CJK name padded by its display width
    narrow, dropped = terminal(TABLE, 30)
    assert dropped == 1 and all(display_width(ln) <= 30 for ln in narrow) and "ppl" not in narrow[0]
