"""report.html: summary table, generation table and the PNG plots, all matching the run's logs."""

from __future__ import annotations

import html
import json
import re

from tsugiki.evolution import evolve, from_data


def test_html_report_matches_the_logs_and_embeds_existing_pngs(tmp_path):
    cfg = from_data({"space": {"kind": "box", "params": {"x": [-2, 2], "y": [-2, 2]}},
                     "fitness": {"function": "neg_sphere", "args": {"center": 0.5}},
                     "search": {"seed": 1, "population": 4, "generations": 3}})
    run = tmp_path / "run"
    evolve(cfg, run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["plots/fitness.png"] and all((run / s).is_file() for s in srcs)
    gens = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    best = json.loads((run / "best.json").read_text())
    rows = re.findall(r"<tr>((?:<td class=\"n\">[^<]*</td>){8})</tr>", page)
    assert len(rows) == len(gens) == 3
    for row, g in zip(rows, gens):
        cells = [html.unescape(c) for c in re.findall(r'<td class="n">([^<]*)</td>', row)]
        assert int(cells[0]) == g["generation"] and int(cells[1]) == g["evaluations"]
        assert float(cells[2]) == float(f"{g['best_fitness']:.4g}")
    assert f"<tr><th>best fitness</th><td>{best['fitness']:.4g}</td></tr>" in page
    assert "<tr><th>evaluations</th><td>12</td></tr>" in page
