"""The demo's outputs: results.json, leaderboard.md, the terminal table and report.html, from fake stage
results with known numbers."""

from __future__ import annotations

import json
import math
import os
import unicodedata
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

import tsugiki
from tsugiki.demo import report
from tsugiki.demo.stage import Figure, Row, Sample, SeedVerdict, StageResult, Table

META = {"seed": 7, "quick": True, "seconds": 41.25, "machine": {"platform": "test-box", "cpus": 2}}
THIRD = 1 / 3  # not exactly representable: JSON must round-trip its shortest repr exactly


def lm_stage() -> StageResult:
    return StageResult(
        stage="lm", headline="acc", title="Japanese math LM",
        verdict="The evolved model beats the best source by 22.5 points.",
        rows=[Row("src-ja", "source", {"acc": 30.0, "acc_en": 12.3, "ppl": THIRD}, {"acc": [26.0, 34.0]}),
              Row("src-math", "source", {"acc": math.nan, "acc_en": 5.0, "ppl": 0.5}),  # no value: ranked last
              Row("task-arith", "baseline", {"acc": 45.5, "acc_en": 20.0, "ppl": 0.1 + 0.2}, {"acc": [41.5, 49.5]}),
              Row("evolved|ps", "evolved", {"acc": 52.5, "acc_en": 18.0, "ppl": 0.25}, {"acc": [48.0, 56.1]},
                  extra={"per_seed": [52.0, 53.0]})],
        notes=["acc is exact-match in percent"], seconds=12.34, models={"evolved|ps": "lm/evolved"},
        seeds=[SeedVerdict(0, "evolved|ps", {"src-ja": 3.5, "task-arith": 2.0}, "binomial SE"),
               SeedVerdict(1, "evolved|ps", {"src-ja": math.inf, "task-arith": 1.99}, "binomial SE")])


def sdxl_stage() -> StageResult:
    return StageResult(
        stage="sdxl", headline="fid", lower_is_better=True, title="Japanese SDXL <tiny>",
        verdict="Evolved FID 61.2 vs 70.0 & 80.0.",
        rows=[Row("src-a", "source", {"fid": 80.0, "hps": 0.2871}),
              Row("merge-avg", "baseline", {"fid": 70.0, "hps": 0.2512}),
              Row("evolved", "evolved", {"fid": 61.2, "hps": 0.3004}, {"fid": [58.0, 64.4], "hps": [0.29, 0.31]})],
        notes=["FID here uses a random-init extractor <not Inception>"],
        tables=[Table("Per-prompt <FID>", ["prompt", "fid"], [["赤い円", "60.1"], ["a & b", "62.3"]],
                      note="n=2 prompts")],
        figures=[Figure("sdxl/grid.png", "Grid of <samples> & friends")],
        samples=[Sample("evolved", "a red <circle>", "img & text", expected="赤い円", image="sdxl/sample 0.png"),
                 Sample("src-a", "a blue square", "…", image="sdxl/nope.png")],
        seconds=20.0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "sdxl").mkdir()
    for name in ("grid.png", "sample 0.png"):
        Image.new("RGB", (4, 4), (200, 30, 30)).save(tmp_path / "sdxl" / name)
    return tmp_path


def md_rows(md: str, heading: str) -> list[list[str]]:
    section = md.split(f"## {heading}\n", 1)[1]
    table = next(chunk for chunk in section.split("\n\n") if chunk.startswith("|")).splitlines()
    return [[c.strip() for c in ln.strip("|").replace("\\|", "\x00").split("|")] for ln in table]


# ---------------------------------------------------------------- results.json

def test_results_json_round_trips_the_numbers_and_follows_the_schema(run_dir):
    path = report.write_results(run_dir, [lm_stage(), sdxl_stage()], META)
    assert path == run_dir / "results.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert set(doc) == {"tsugiki_version", "created", "meta", "stages"}
    assert doc["tsugiki_version"] == tsugiki.__version__
    assert datetime.fromisoformat(doc["created"]).tzinfo is not None
    assert doc["meta"] == META
    assert list(doc["stages"]) == ["lm", "sdxl"]
    for name, stage in doc["stages"].items():
        assert set(stage) == {"headline", "lower_is_better", "title", "verdict", "notes", "seconds", "models", "rows",
                              "seeds", "seeds_won", "recipes"}
        for row in stage["rows"]:
            assert set(row) == {"model", "role", "metrics", "ci"} and row["role"] in ("source", "baseline", "evolved")
            assert all(len(v) == 2 for v in row["ci"].values())
    lm, sdxl = doc["stages"]["lm"], doc["stages"]["sdxl"]
    assert (lm["headline"], lm["lower_is_better"]) == ("acc", False)
    assert (sdxl["headline"], sdxl["lower_is_better"]) == ("fid", True)
    assert [r["model"] for r in lm["rows"]] == ["src-ja", "src-math", "task-arith", "evolved|ps"]  # stage order kept
    assert lm["rows"][0]["metrics"] == {"acc": 30.0, "acc_en": 12.3, "ppl": THIRD}  # exact float round trip
    assert lm["rows"][2]["metrics"]["ppl"] == 0.30000000000000004
    assert lm["rows"][3]["ci"] == {"acc": [48.0, 56.1]}
    assert lm["rows"][1]["metrics"]["acc"] is None  # NaN: written as null, never as invalid JSON
    assert "extra" not in lm["rows"][3]  # free-form detail is not part of the schema
    assert sdxl["rows"][2] == {"model": "evolved", "role": "evolved", "metrics": {"fid": 61.2, "hps": 0.3004},
                               "ci": {"fid": [58.0, 64.4], "hps": [0.29, 0.31]}}
    assert lm["models"] == {"evolved|ps": "lm/evolved"} and lm["seconds"] == 12.34
    # per-seed verdicts: a seed wins when every margin is >= 2 SE (2.0 counts; 1.99 does not)
    assert lm["seeds"] == [
        {"seed": 0, "model": "evolved|ps", "won": True, "test": "binomial SE", "margins_se": {"src-ja": 3.5, "task-arith": 2.0}},
        {"seed": 1, "model": "evolved|ps", "won": False, "test": "binomial SE", "margins_se": {"src-ja": None, "task-arith": 1.99}}]
    assert (lm["seeds_won"], sdxl["seeds"], sdxl["seeds_won"]) == (1, [], 0)
    assert "NaN" not in path.read_text(encoding="utf-8")


def test_results_fill_in_the_machine_and_refuse_bad_input(run_dir):
    doc = report.results_json([lm_stage()], {"seed": 0, "quick": False, "seconds": 1.0},
                              created="2026-01-01T00:00:00+00:00")
    assert doc["created"] == "2026-01-01T00:00:00+00:00"
    assert doc["meta"]["machine"]["cpus"] == os.cpu_count() and "python" in doc["meta"]["machine"]
    with pytest.raises(ValueError, match="lacks quick, seconds"):
        report.results_json([lm_stage()], {"seed": 0})
    with pytest.raises(ValueError, match="stage 'lm' appears twice"):
        report.results_json([lm_stage(), lm_stage()], META)


def test_results_are_replaced_atomically_and_a_failure_keeps_the_old_file(run_dir):
    path = run_dir / "results.json"
    path.write_text("old")
    inode = path.stat().st_ino
    report.write_results(run_dir, [lm_stage()], META)
    assert json.loads(path.read_text())["stages"]["lm"]["headline"] == "acc"
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json", "sdxl"]  # no temp file left

    bad = lm_stage()
    bad.rows[0].metrics["acc"] = "n/a"
    before = path.read_text()
    with pytest.raises(ValueError, match="model 'src-ja', metric 'acc': not a number"):
        report.write_results(run_dir, [bad], META)
    assert path.read_text() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["results.json", "sdxl"]


# ---------------------------------------------------------------- leaderboard.md

def test_leaderboard_ranks_by_the_headline_with_intervals(run_dir):
    path = report.write_leaderboard(run_dir, [lm_stage(), sdxl_stage()])
    md = path.read_text(encoding="utf-8")
    lm = md_rows(md, "Japanese math LM (lm)")
    assert lm[0] == ["model", "role", "acc ↑", "acc_en", "ppl"]
    assert lm[2] == ["evolved\x00ps", "evolved", "**52.5 +3.6/−4.5**", "18.0", "0.250"]  # asymmetric interval
    assert lm[3] == ["task-arith", "baseline", "45.5 ± 4.0", "20.0", "0.300"]
    assert lm[4] == ["src-ja", "source", "30.0 ± 4.0", "12.3", "0.333"]
    assert lm[5] == ["src-math", "source", "—", "5.0", "0.500"]  # no value: last, a dash
    sdxl = md_rows(md, "Japanese SDXL \\<tiny> (sdxl)")  # escaped: GitHub would drop it as an HTML tag
    assert [r[0] for r in sdxl[2:]] == ["evolved", "merge-avg", "src-a"]  # lower FID is better
    assert sdxl[0][2] == "fid ↓" and sdxl[2][2:] == ["**61.2 ± 3.2**", "0.300 ± 0.010"]
    lm_section = md.split("## Japanese SDXL")[0]
    assert lm_section.index("| src-math |") < lm_section.index(
        "**Verdict:** The evolved model beats the best source by 22.5 points.")
    assert "- FID here uses a random-init extractor \\<not Inception>" in md


def test_ties_are_all_bold_and_input_order_breaks_them():
    stage = StageResult("lm", "acc", [Row("b", "source", {"acc": 10.0}), Row("a", "evolved", {"acc": 10.0}),
                                      Row("c", "baseline", {"acc": 2.0})])
    assert [r.model for r in report.ranked(stage)] == ["b", "a", "c"]
    rows = md_rows(report.stage_markdown(stage), "lm")
    assert [r[2] for r in rows[2:]] == ["**10.0**", "**10.0**", "2.0"]


def test_numpy_and_torch_scalars_count_as_numbers(run_dir):
    stage = StageResult("lm", "acc", [Row("a", "source", {"acc": np.float32(0.5)}),
                                      Row("b", "evolved", {"acc": torch.tensor(0.75)})])
    assert [r.model for r in report.ranked(stage)] == ["b", "a"]
    assert [r[2] for r in md_rows(report.stage_markdown(stage), "lm")[2:]] == ["**0.750**", "0.500"]
    rows = json.loads(report.write_results(run_dir, [stage], META).read_text())["stages"]["lm"]["rows"]
    assert [r["metrics"]["acc"] for r in rows] == [0.5, 0.75]


def test_leaderboard_replaces_an_existing_file(run_dir):
    (run_dir / "leaderboard.md").write_text("old")
    report.write_leaderboard(run_dir, [lm_stage()])
    assert (run_dir / "leaderboard.md").read_text().startswith("# tsugiki demo leaderboard")
    assert sorted(p.name for p in run_dir.iterdir()) == ["leaderboard.md", "sdxl"]


# ---------------------------------------------------------------- terminal

def columns(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def test_terminal_leaderboard_is_ranked_and_fits_100_columns():
    text = report.terminal_leaderboard([lm_stage(), sdxl_stage()])
    lines = text.splitlines()
    assert all(columns(ln) <= 100 for ln in lines)
    assert [ln.split()[0] for ln in lines[2:6]] == ["evolved|ps", "task-arith", "src-ja", "src-math"]
    assert "52.5 +3.6/−4.5" in text and "61.2 ± 3.2" in text

    wide = lm_stage()
    wide.rows[0].model = "a-very-long-model-name-that-goes-on-and-on-and-on-forever"
    for r in wide.rows:
        r.metrics |= {f"metric_number_{i}": 1.5 for i in range(12)}
    wide.verdict = "進化したモデルが最良のソースモデルを上回った。" * 8 + " and then some English words " * 6
    lines = report.terminal_leaderboard([wide]).splitlines()
    assert all(columns(ln) <= 100 for ln in lines), max(lines, key=columns)
    assert any(ln.strip().startswith("(+") and "more metrics in leaderboard.md" in ln for ln in lines)
    assert any("a-very-long-model-name" in ln and "…" in ln for ln in lines)
    assert "".join(ln.strip() for ln in lines).count("進化したモデル") == 8  # the verdict is wrapped, not cut


# ---------------------------------------------------------------- report.html

class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.hrefs.append(a["href"])


def test_report_shows_values_escapes_text_and_links_existing_images(run_dir):
    path = report.write_report(run_dir, [lm_stage(), sdxl_stage()], META, created="2026-01-02T03:04:05+00:00")
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    for text in ("2026-01-02T03:04:05+00:00", "<th>seed</th><td>7</td>", "quick (the CI budget)", "41.2 s",
                 "<strong>52.5</strong>", "[48.0, 56.1]", "45.5", "0.287", "<strong>61.2</strong>", "[58.0, 64.4]",
                 "The evolved model beats the best source by 22.5 points.", "per_seed: [52.0, 53.0]", "赤い円"):
        assert text in page, text
    for raw, escaped in (("a red <circle>", "a red &lt;circle&gt;"), ("Grid of <samples> & friends",
                                                                     "Grid of &lt;samples&gt; &amp; friends"),
                         ("<not Inception>", "&lt;not Inception&gt;"), ("<tiny>", "&lt;tiny&gt;"),
                         ("Per-prompt <FID>", "Per-prompt &lt;FID&gt;"), ("img & text", "img &amp; text")):
        assert raw not in page and escaped in page
    assert "<script" not in page and "://" not in page  # no JS, nothing fetched

    links = Links()
    links.feed(page)
    assert sorted(links.images) == ["sdxl/grid.png", "sdxl/sample%200.png"]
    for src in links.images:
        assert not Path(unquote(src)).is_absolute() and (run_dir / unquote(src)).is_file()
    assert "image missing: sdxl/nope.png" in page and "nope.png\"" not in page
    assert {"results.json", "leaderboard.md", "#lm", "#sdxl", "sdxl/sample%200.png"} <= set(links.hrefs)


def test_report_replaces_an_existing_file_and_refuses_images_outside_the_run_dir(run_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "x.png"
    Image.new("RGB", (2, 2)).save(outside)
    stage = sdxl_stage()
    stage.figures.append(Figure(str(outside), "outside"))
    stage.figures.append(Figure(str(run_dir / "sdxl" / "grid.png"), "absolute but inside"))
    (run_dir / "report.html").write_text("old")
    page = report.write_report(run_dir, [stage], META).read_text(encoding="utf-8")
    links = Links()
    links.feed(page)
    assert sorted(links.images) == ["sdxl/grid.png", "sdxl/grid.png", "sdxl/sample%200.png"]
    assert f"image missing: {outside}" in page
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.html", "sdxl"]


def test_report_gives_standard_errors_their_own_columns_and_rounds_details(run_dir):
    stage = lm_stage()
    stage.rows[2].extra.update(se={"acc": 2.2360679774997896}, n=100, vs_base={"diff": 0.12345678901234, "se": 0.0471})
    stage.rows[3].extra.update(se={"acc": 2.5})
    page = report.report_html(run_dir, [stage], {**META, "stages": ["lm"], "failed": []}, created="x")
    assert "<th>acc SE</th>" in page and '<td class="n">2.2</td>' in page and '<td class="n">2.5</td>' in page
    assert "vs_base: diff: 0.1235, se: 0.0471" in page and "per_seed: [52.0, 53.0]" in page
    assert "2.2360679774997896" not in page and "{" not in page.split("<body>")[1]
    assert page.count("<th>stages</th>") == 1 and "<th>failed</th>" not in page
    failed = report.report_html(run_dir, [stage], {**META, "failed": ["vlm"]}, created="x")
    assert "<th>failed</th><td>vlm</td>" in failed


# ---------------------------------------------------------------- per-seed verdicts

def test_paired_seed_verdicts_by_hand():
    """Each seed's best evolved row (by mean) against every other row: mean paired difference / its SE."""
    from tsugiki.demo.stage import paired_seed_verdicts

    rows = [Row("llava", "source", {"r": 0.0}), Row("graft", "baseline", {"r": 0.0}),
            Row("x (seed 0)", "evolved", {"r": 0.0}), Row("y (seed 0)", "evolved", {"r": 0.0}),
            Row("z (seed 3)", "evolved", {"r": 0.0})]
    per_item = {"llava": [0, 0, 1, 0], "graft": [1, 1, 1, 1], "x (seed 0)": [1, 0, 1, 1],
                "y (seed 0)": [0, 0, 0, 0], "z (seed 3)": [1, 1, 1, 1]}
    s0, s3 = paired_seed_verdicts(rows, per_item, default_seed=9)
    # x - llava = [1, 0, 0, 1]: mean 0.5, sample sd sqrt(1/3), SE sqrt(1/3)/2
    assert (s0.seed, s0.model, s0.test) == (0, "x (seed 0)", "paired SE")
    assert s0.margins["llava"] == pytest.approx(0.5 / (math.sqrt(1 / 3) / 2))
    # x - graft = [0, -1, 0, 0]: mean -0.25, SE 0.25
    assert s0.margins["graft"] == pytest.approx(-1.0) and not s0.won
    # z equals graft on every item (0 SE, no difference: 0) and beats llava by 3 of 4 items
    assert s3.margins["graft"] == 0.0 and s3.margins["llava"] == pytest.approx(0.75 / (0.5 / 2)) and not s3.won
    # a row without "(seed N)" takes the default seed; one item has no SE: nan, never a win
    one = paired_seed_verdicts([Row("a", "source", {}), Row("b", "evolved", {})], {"a": [0], "b": [1]}, default_seed=9)
    assert one[0].seed == 9 and math.isnan(one[0].margins["a"]) and not one[0].won


def test_lm_seed_verdicts_use_binomial_se():
    from tsugiki.benchmarks.stats import binomial_se
    from tsugiki.demo.lm.stage import seed_verdicts, verdict

    def row(name, role, acc, seed=None):
        return Row(name, role, {"acc_ja": acc}, extra={"se": {"acc_ja": binomial_se(acc, 300)},
                                                       **({"search_seed": seed} if seed is not None else {})})

    rows = [row("base", "source", 2.0), row("TIES", "baseline", 5.0), row("ev PS (seed 0)", "evolved", 12.0, 0),
            row("ev DFS (seed 0)", "evolved", 1.0, 0), row("ev PS (seed 1)", "evolved", 6.0, 1)]
    v0, v1 = seed_verdicts(rows, (0, 1))
    se = lambda p: math.sqrt(p * (100 - p) / 300)  # noqa: E731 - percent
    assert v0.model == "ev PS (seed 0)" and v0.margins["TIES"] == pytest.approx((12 - 5) / math.hypot(se(12), se(5)))
    assert v0.won and not v1.won  # 7 points = 3.1 SE; 1 point = 0.4 SE
    assert verdict(rows, [v0, v1]).startswith("The best evolved model beats every source and baseline by ≥ 2 SE on "
                                              "acc_ja in 1 of 2 search seeds")
