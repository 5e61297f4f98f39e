"""Leaderboard: rows = models, columns = benchmarks, best in bold, deltas against a baseline."""

import pytest

from tsugiki.benchmarks import leaderboard
from tsugiki.benchmarks.results import BenchmarkResult
from tsugiki.benchmarks.stats import Estimate
from tsugiki.errors import BenchmarkError


def result(model, benchmark, value, primary="acc_ja", higher=True, created="2026-01-01T00:00:00", version="1"):
    return BenchmarkResult(model=model, benchmark=benchmark, title=benchmark.upper(), version=version, metric="m",
                           primary=primary, higher_is_better=higher,
                           scores={primary: Estimate(value, value - 1, value + 1)}, n=10, created=created)


def rows(md):
    table = md.split("\n\n")[0].splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in table]


def test_best_bold_and_deltas_against_the_baseline():
    results = [result("base", "mgsm-ja", 40.0), result("merged", "mgsm-ja", 52.5),
               result("base", "ja-vg-vqa-500", 10.0, "rougeL_ja"), result("merged", "ja-vg-vqa-500", 9.0, "rougeL_ja"),
               result("base", "fid", 20.0, "fid", higher=False), result("merged", "fid", 25.0, "fid", higher=False),
               result("other", "mgsm-ja", 52.5)]
    md = leaderboard.to_markdown(leaderboard.build(results, baseline="base"))
    t = rows(md)
    assert t[0] == ["Model", "MGSM-JA (acc_ja) ↑", "JA-VG-VQA-500 (rougeL_ja) ↑", "FID (fid) ↓"]  # registry order first
    assert t[2] == ["base (baseline)", "40.0", "**10.0**", "**20.0**"]  # lower FID is better
    assert t[3] == ["merged", "**52.5 (+12.5)**", "9.0 (-1.0)", "25.0 (+5.0)"]
    assert t[4] == ["other", "**52.5 (+12.5)**", "—", "—"]  # ties are all bold; missing cells are dashes
    assert "| merged | MGSM-JA | acc_ja | 52.50 | 51.50–53.50 | 10 |" in md


def test_without_baseline_rows_keep_input_order():
    t = rows(leaderboard.to_markdown(leaderboard.build([result("b", "x", 1.0), result("a", "x", 2.0)])))
    assert [r[0] for r in t[2:]] == ["b", "a"] and t[3][1] == "**2.0**"


def test_duplicates_keep_the_latest_and_say_so():
    lb = leaderboard.build([result("m", "x", 1.0, created="2026-01-02"), result("m", "x", 3.0, created="2026-01-01")])
    assert lb.value("m", ("x", "acc_ja")) == 1.0
    assert any("several results, kept the latest (2026-01-02)" in n for n in lb.notes)
    lb = leaderboard.build([result("m", "x", 1.0, version="1"), result("n", "x", 2.0, version="2")])
    assert any("different benchmark versions (1, 2)" in n for n in lb.notes)


def test_html_escapes_and_marks_best():
    html = leaderboard.to_html(leaderboard.build([result("<script>", "x", 5.0), result("b", "x", 4.0)], baseline="b"))
    assert "<script>" not in html and "<td>&lt;script&gt;</td>" in html and "<strong>5.0 (+1.0)</strong>" in html
    assert 'title="95% CI 4.0–6.0"' in html and '<tr class="baseline">' in html


def test_bad_leaderboards():
    with pytest.raises(BenchmarkError, match="no results"):
        leaderboard.build([])
    with pytest.raises(BenchmarkError, match="baseline 'zzz' is not among the models"):
        leaderboard.build([result("m", "x", 1.0)], baseline="zzz")
