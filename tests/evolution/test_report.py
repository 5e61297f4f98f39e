"""report.html: summary table, generation table and the PNG plots, all matching the run's logs."""

from __future__ import annotations

import html
import json
import re
from types import SimpleNamespace

import pytest

from tsugiki.evolution import evolve, from_data, write_plots
from tsugiki.evolution.space_kind import SPACE_KINDS


def box(generations: int = 3) -> dict:
    return {"space": {"kind": "box", "params": {"x": [-2, 2], "y": [-2, 2]}},
            "fitness": {"function": "neg_sphere", "args": {"center": 0.5}},
            "search": {"seed": 1, "population": 4, "generations": generations}}


def test_html_report_matches_the_logs_and_embeds_existing_pngs(tmp_path):
    cfg = from_data(box())
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


_MATRICES = {"weight": {"rows": ["a", "b"], "cols": ["g0", "rest"], "values": [[0.1, 0.9], [0.3, 0.7]], "bounds": [0, 1]}}
_PATH = {"models": ["a", "b"], "num_layers": {"a": 2, "b": 2}, "scales": [[1.0, 1.2], [0.9, 1.1]], "exact_export": False,
         "path": [{"model": "a", "layer": 0, "scale": 1.0}, {"model": "b", "layer": 1, "scale": 1.2}]}
_HEATMAP = ("plots/ps_heatmap.png", "Best candidate's merge parameters per model and layer group / UNet block.")
_DFS = ("plots/dfs_path.png", "Best DFS inference path (source layer per position) and scaling matrix W.")


@pytest.mark.parametrize("kind, details, shown", [
    ("box", {"kind": "box"}, []),
    ("ps", {"kind": "ps", "matrices": _MATRICES}, [_HEATMAP]),
    ("sdxl_blocks", {"kind": "sdxl_blocks", "matrices": _MATRICES, "xlabel": "UNet block"}, [_HEATMAP]),
    ("dfs", {"kind": "dfs", **_PATH}, [_DFS]),
    ("ps_dfs", {"kind": "ps_dfs", **_PATH}, [_DFS]),
])
def test_the_run_kind_draws_its_plots_and_the_report_shows_them(kind, details, shown, tmp_path):
    run = tmp_path / "run"
    evolve(from_data(box(1)), run, plots=False)
    seen = []
    problem = SimpleNamespace(details=lambda values: seen.append(values) or details,  # what the report asks of a problem
                              config=SimpleNamespace(spec=SimpleNamespace(space=SPACE_KINDS.get(kind).model_construct())))
    files = write_plots(run, problem)
    assert seen == [json.loads((run / "best.json").read_text())["params"]]
    assert [f"plots/{f.name}" for f in files] == ["plots/fitness.png", *(png for png, _ in shown)]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)
    page = html.unescape((run / "report.html").read_text(encoding="utf-8"))
    assert re.findall(r'<img src="([^"]+)"', page) == ["plots/fitness.png", *(png for png, _ in shown)]
    assert all(f"{caption}</figcaption>" in page for _, caption in shown)
