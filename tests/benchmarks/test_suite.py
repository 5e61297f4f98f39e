"""`pytest benchmarks/` as users run it (in a subprocess): the default run passes and writes every
result file; a threshold that is missed fails that benchmark with the score in the message."""

import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from helpers import REPO



def run_suite(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", str(REPO / "benchmarks"), "-p", "no:cacheprovider",
                           f"--results-dir={tmp_path / 'out'}", *args],
                          cwd=tmp_path, capture_output=True, text=True, env=env)


def test_default_run_passes_and_writes_results(tmp_path):
    res = run_suite(tmp_path, "--limit", "4")
    assert res.returncode == 0, res.stdout + res.stderr
    harness = importlib.util.find_spec("lm_eval") is not None  # the sample lm-eval tasks run where lm-eval is
    cases = 6 + 2 * harness
    assert f"{cases} passed" in res.stdout and "tsugiki leaderboard" in res.stdout
    out = tmp_path / "out"
    lm_eval_tasks = ["lm-eval_ja-sample-mc", "lm-eval_ja-sample-gen"] if harness else []
    for model, benches in (("tiny-llama", ["mgsm-ja", "mgsm-en", *lm_eval_tasks]),
                           ("sample-predictions", ["mgsm-ja", "mgsm-en", "ja-vg-vqa-500", "ja-vlm-wild"])):
        for b in benches:
            result = json.loads((out / model / f"{b}.json").read_text())
            assert result["n"] == 4 and all({"value", "low", "high"} == set(v) for v in result["scores"].values())
            assert len((out / model / f"{b}.items.jsonl").read_text().splitlines()) == 4
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("| Model | MGSM-JA (acc_ja) ↑") and "| tiny-llama |" in md
    assert (out / "leaderboard.html").exists()
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite.get("tests") == str(cases) and suite.get("failures") == "0"
    props = {p.get("name") for p in suite.iter("property")}
    assert "sample-predictions-ja-vg-vqa-500/rougeL_ja" in props


def test_missed_threshold_fails_with_the_score(tmp_path):
    data = REPO / "tests" / "data" / "benchmarks"
    # PATH options written as --opt=PATH: pytest reads a bare path argument as a test path before it
    # knows the suite's options, and would then also load tests/conftest.py (torch: slow).
    res = run_suite(tmp_path, f"--predictions={data / 'sample-predictions'}", f"--dataset-dir={data}",
                    "--bench", "mgsm-ja", "--bench", "ja-vlm-wild", "--min-score", "mgsm-ja=90",
                    f"--junitxml={tmp_path / 'j.xml'}")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 failed, 1 passed" in res.stdout
    assert "sample-predictions / mgsm-ja: acc_ja = 33.60 (95% CI" in res.stdout and "below the minimum 90" in res.stdout
    assert (tmp_path / "j.xml").exists() and not (tmp_path / "out" / "junit.xml").exists()
