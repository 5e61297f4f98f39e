"""`tsugiki demo --quick` end to end, as a user runs it: every stage, the report files, and that what
they hold is what the run computed (re-scored from the saved models and answers)."""

from __future__ import annotations

import dataclasses
import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tsugiki.benchmarks.results import slug
from tsugiki.demo.report import _decimals, _fmt

ROLES = {"source", "baseline", "evolved"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tsugiki.cli", "demo", "--quick", "--no-progress", "-o", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=2400)
    yield run_dir, proc
    # the run holds about ten 1 GB models; pytest keeps its temp dirs across sessions, so a
    # machine with little disk would fill up with runs nobody reads again
    shutil.rmtree(run_dir, ignore_errors=True)


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def test_quick_demo_runs_every_stage(demo_run):
    run_dir, proc = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = _results(run_dir)
    assert set(results["stages"]) == {"lm", "vlm", "sdxl"}
    for name, stage in results["stages"].items():
        assert stage["rows"], name
        headline = stage["headline"]
        for row in stage["rows"]:
            assert set(row) == {"model", "role", "metrics", "ci"}
            assert row["role"] in ROLES
            assert isinstance(row["metrics"][headline], float), (name, row)
            for lo_hi in row["ci"].values():
                assert len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1]
        roles = {r["role"] for r in stage["rows"]}
        assert {"source", "evolved"} <= roles, name
    assert {"source", "baseline", "evolved"} == {r["role"] for r in results["stages"]["lm"]["rows"]}
    assert results["failed"] == [] if "failed" in results else True
    # the terminal ends with the leaderboard and where the report is
    assert str(run_dir / "report.html") in proc.stdout


def test_per_seed_verdicts_are_recomputed_from_the_saved_answers(demo_run):
    """results.json's per-seed verdicts, every margin recomputed from what the run saved: the LM's held-out
    scores with binomial SEs, the VLM's per-question rougeL_ja and the SDXL judge's per-image readings paired."""
    import math

    from tsugiki.demo.sdxl.stage import ROW_NAMES, evolved_name

    run_dir, _ = demo_run
    stages = _results(run_dir)["stages"]

    def binomial(name: str, other: str, rows: dict, n: int) -> float:
        a, b = rows[name]["metrics"]["acc_ja"], rows[other]["metrics"]["acc_ja"]
        se = math.hypot(*(math.sqrt(p * (100 - p) / n) for p in (a, b)))
        return (a - b) / se if se else (math.inf if a > b else 0.0)

    def paired(a: list[float], b: list[float]) -> float | None:
        d = [x - y for x, y in zip(a, b, strict=True)]
        mean = sum(d) / len(d)
        if len(d) < 2:
            return None  # nan: written as null
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
        return mean / se if se else (None if mean > 0 else 0.0)  # inf is written as null too

    n_lm = len((run_dir / "lm" / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines())
    vlm_items = {r["model"]: [json.loads(line)["rougeL_ja"] for line in
                              (run_dir / "vlm" / "answers" / f"{slug(r['model'])}.jsonl").read_text(encoding="utf-8").splitlines()]
                 for r in stages["vlm"]["rows"]}
    sdxl_hits = {}
    sdxl_names = {**ROW_NAMES, **{f"evolved-s{s['seed']}": evolved_name(s["seed"]) for s in stages["sdxl"]["seeds"]}}
    assert set(sdxl_names.values()) == {r["model"] for r in stages["sdxl"]["rows"]}
    for key, name in sdxl_names.items():
        extra = json.loads((run_dir / "sdxl" / "eval" / key / "scores.json").read_text())["extra"]
        sdxl_hits[name] = [100.0 * (t == p) for t, p in zip(extra["judge_top"], extra["prompts"])]
    for stage_name, stage in stages.items():
        rows = {r["model"]: r for r in stage["rows"]}
        evolved = [m for m, r in rows.items() if r["role"] == "evolved"]
        others = [m for m, r in rows.items() if r["role"] != "evolved"]
        assert stage["seeds"], stage_name
        assert stage["seeds_won"] == sum(s["won"] for s in stage["seeds"])
        for s in stage["seeds"]:
            assert s["model"] in evolved and set(s["margins_se"]) == set(others), (stage_name, s)
            assert f"(seed {s['seed']})" in s["model"]
            for other, margin in s["margins_se"].items():
                if stage_name == "lm":
                    expected = binomial(s["model"], other, rows, n_lm)
                else:
                    items = vlm_items if stage_name == "vlm" else sdxl_hits
                    expected = paired(items[s["model"]], items[other])
                assert margin == (pytest.approx(expected) if expected is not None else None), (stage_name, other)
            assert s["won"] == all(m is not None and m >= 2 for m in s["margins_se"].values())
        assert f"in {stage['seeds_won']} of {len(stage['seeds'])} search seed" in stage["verdict"]


def test_report_and_leaderboard_hold_the_computed_numbers(demo_run):
    from tsugiki.demo.stage import Row, StageResult

    run_dir, _ = demo_run
    results = _results(run_dir)
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    board = (run_dir / "leaderboard.md").read_text(encoding="utf-8")
    for name, stage in results["stages"].items():
        headline = stage["headline"]
        as_stage = StageResult(name, headline, [Row(r["model"], r["role"], r["metrics"], r["ci"]) for r in stage["rows"]],
                               lower_is_better=stage["lower_is_better"])
        digits = _decimals(as_stage, headline)
        for row in stage["rows"]:
            shown = _fmt(row["metrics"][headline], digits)
            assert html.escape(row["model"]) in report and shown in report, (name, row["model"], shown)
            assert shown in board, (name, row["model"], shown)
        assert stage["verdict"] and html.escape(stage["verdict"]) in report


def test_report_has_one_results_table_per_stage(demo_run):
    """Each stage's section shows its models' scores once (the ranked table, intervals and SE in it); the other
    tables are about other things (searches, the LLaVA's English check)."""
    run_dir, _ = demo_run
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    sections = {s.split('"', 1)[0]: s for s in report.split('<section id="')[1:]}
    assert set(sections) == set(_results(run_dir)["stages"])
    for name, section in sections.items():
        assert section.count("<th>model</th><th>role</th>") == 1, name  # samples have model, prompt
    assert "acc_ja SE" in sections["lm"]  # the held-out SE, in the one table


def test_lm_base_is_the_real_gemma_3_270m(demo_run):
    """The LM stage's base is google/gemma-3-270m from the GGUF package: 268,098,176 parameters in 18
    layers of hidden size 640, a 262,144-token vocabulary."""
    import yaml
    from safetensors import safe_open

    run_dir, _ = demo_run
    config = yaml.safe_load((run_dir / "lm" / "runs" / "ps-s0" / "config.yaml").read_text())
    base = Path(config["sources"]["base"])
    hf = json.loads((base / "config.json").read_text())
    assert (hf["model_type"], hf["num_hidden_layers"], hf["hidden_size"], hf["vocab_size"]) == ("gemma3_text", 18, 640, 262144)
    with safe_open(base / "model.safetensors", "pt") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    assert n == 268_098_176
    lm = _results(run_dir)["stages"]["lm"]
    assert any("Gemma 3 270M" in r["model"] for r in lm["rows"] if r["role"] == "source")


def test_lm_numbers_are_reproduced_from_the_saved_models(demo_run, tmp_path):
    """Re-score LM rows from what the run kept: a source and an evolved model from their dirs, a baseline and
    the DFS model from their recipes, written again with ``tsugiki merge RECIPE -o DIR`` as the report
    says: the same acc_ja and acc, and the run dir holds no model dir for them."""
    from tsugiki.demo.lm.stage import QUICK, engine_options, evaluate
    from tsugiki.engines.resident import ResidentEngine

    run_dir, _ = demo_run
    lm = _results(run_dir)["stages"]["lm"]
    used = _results(run_dir)["meta"]["engine"]  # the demo used the fastest engine installed: rescore with it
    engine = ResidentEngine(used, engine_options(dataclasses.replace(QUICK, engine=used)))
    test = [json.loads(line) for line in (run_dir / "lm" / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = {r["model"]: r for r in lm["rows"]}
    evolved = next(r for r in lm["rows"] if r["role"] == "evolved")
    assert set(lm["recipes"]) == {"uniform average", "task arithmetic", "TIES", "DARE-TIES", "evolved DFS (seed 0)",
                                  "evolved PS+DFS (seed 0)"}
    assert not (run_dir / "lm" / "transient").exists() and not (run_dir / "lm" / "baselines" / "ties").exists()
    rebuilt = {}
    for name in ("TIES", "evolved DFS (seed 0)"):
        rebuilt[name] = tmp_path / name.replace(" ", "_")
        proc = subprocess.run([sys.executable, "-m", "tsugiki.cli", "merge", str(run_dir / lm["recipes"][name]), "-o",
                               str(rebuilt[name])], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for name, path in ((evolved["model"], run_dir / lm["models"][evolved["model"]]),
                       ("MATH sibling", run_dir / "lm" / "models" / "math"), *rebuilt.items()):
        again = evaluate(path, test, batch_size=QUICK.eval_batch, english=rows[name]["role"] == "source", engine=engine)
        assert set(again["metrics"]) == set(rows[name]["metrics"]), name
        for metric, value in rows[name]["metrics"].items():
            assert again["metrics"][metric] == pytest.approx(value), (name, metric)
    engine.close()


def test_evolved_models_load(demo_run):
    from transformers import AutoModelForCausalLM

    run_dir, _ = demo_run
    lm = _results(run_dir)["stages"]["lm"]
    assert lm["models"]
    for name, rel in lm["models"].items():
        model = AutoModelForCausalLM.from_pretrained(run_dir / rel)
        assert model.config.num_hidden_layers >= 1, name


def test_exported_evolved_lm_is_the_searched_candidate(demo_run):
    """The evolved model on disk (merged again from best.yaml's recipe) holds, bit for bit, the weights the
    search scored for its best candidate (merged in memory into the loaded base, as the search does); with
    the ``hf`` engine it also scores exactly the recorded fitness. (vLLM's CPU batches are not reproducible
    to the last bit between engine instances: a swapped-in model and a fresh engine on the same weights
    differ in about 1 greedy answer in 50, so there only the weights are compared.)"""
    import torch
    import yaml
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsugiki.demo.lm.search import FITNESS_ARGS
    from tsugiki.evolution.config import from_data
    from tsugiki.evolution.data import load_pairs
    from tsugiki.evolution.fitness import EvalContext, mgsm_accuracy
    from tsugiki.evolution.problems import make_problem
    from tsugiki.evolution.sources import search_threads

    run_dir, _ = demo_run
    search = run_dir / "lm" / "runs" / "ps-s0"
    best = json.loads((search / "best.json").read_text())
    model_dir = run_dir / "lm" / "evolved" / "ps-s0"
    data = yaml.safe_load((search / "config.yaml").read_text(encoding="utf-8"))
    data.pop("engine", None)  # the candidate merged in memory into a transformers model, as every engine's search does
    config = from_data(data, source_name=str(search / "config.yaml"), base_dir=search)
    problem = make_problem(config, search)
    problem.setup()
    ctx = EvalContext({})
    with search_threads(config):  # the search merged candidates with its own thread count
        problem.prepare_candidate(best["params"], ctx)
    merged = ctx.model.state_dict()
    exported = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        exported.update(load_file(f))
    assert exported and set(exported) <= set(merged)
    for name, tensor in exported.items():
        assert torch.equal(merged[name].to(tensor.dtype), tensor), name

    if _results(run_dir)["meta"]["engine"] != "hf":
        return
    pairs = load_pairs({"file": str(run_dir / "lm" / "data" / "fitness.jsonl")})
    with search_threads(config):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        rescored = EvalContext({}, model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir))
        assert mgsm_accuracy(rescored, pairs, **FITNESS_ARGS) == best["fitness"]


def test_report_shows_the_search_plots(demo_run):
    run_dir, _ = demo_run
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    for plot in ("lm/runs/ps-s0/plots/fitness.png", "lm/runs/ps-s0/plots/ps_heatmap.png", "lm/runs/dfs-s0/plots/dfs_path.png"):
        assert (run_dir / plot).exists() and plot in report, plot


def test_run_dir_that_is_not_a_demo_dir_is_refused(tmp_path, capsys):
    from tsugiki.cli import main

    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["demo", "--quick", "-o", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    for args in (["demo", "--quick", "-o", str(tmp_path / "other")], ["demo", "--quick", "--force", "-o", str(tmp_path / "other")]):
        assert main(args) == 2
        assert "not a tsugiki demo run dir" in capsys.readouterr().err
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"  # never deleted, not even with --force
    assert main(["demo", "--quick", "--stages", "lm,nope", "-o", str(tmp_path / "new")]) == 2
    assert "unknown stage" in capsys.readouterr().err


def test_dfs_flag_reaches_the_lm_stage_and_the_run_settings(tmp_path, monkeypatch):
    """``--dfs`` asks the LM stage for the DFS and PS+DFS searches and is one of the run dir's settings (a run
    dir made without it is not continued with it); the LM stage gets the three search seeds from --seed."""
    from tsugiki.cli import main
    from tsugiki.demo.lm import stage as lm_stage
    from tsugiki.demo.stage import StageResult

    asked = []

    def fake_lm_stage(ctx, **kwargs):
        asked.append(kwargs)
        return StageResult(stage="lm", headline="acc_ja", rows=[]), {}

    monkeypatch.setattr(lm_stage, "run_lm_stage", fake_lm_stage)
    run_dir = tmp_path / "run"
    assert main(["demo", "--dfs", "--seed", "4", "--stages", "lm", "--engine", "hf", "-q", "-o", str(run_dir)]) == 0
    assert asked[-1]["dfs"] is True and asked[-1]["seeds"] == (4, 5, 6)
    assert json.loads((run_dir / "demo.json").read_text())["dfs"] is True
    assert main(["demo", "--seed", "4", "--stages", "lm", "--engine", "hf", "-q", "-o", str(run_dir)]) == 2
    assert main(["demo", "--seed", "4", "--stages", "lm", "--engine", "hf", "-q", "--force", "-o", str(run_dir)]) == 0
    assert asked[-1]["dfs"] is False and "dfs" not in json.loads((run_dir / "demo.json").read_text())
