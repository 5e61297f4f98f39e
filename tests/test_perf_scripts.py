"""Every ``perf/`` script runs from any folder: its ``--help`` outside the repo, and the scripts that take tiny
inputs run end to end from a temp folder with relative paths (the work dirs land under that folder). The
scripts that need the real Gemma 3 270M (engine_speed, estimated_search, fitness_estimate, demo_lm_seeds)
write their configs with absolute data paths; the relative ``--work`` case of fitness_estimate, which
once joined the work dir twice, is run in tests/demo/test_lm_stage.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parent.parent / "perf"
SCRIPTS = sorted(p.name for p in PERF.glob("*.py"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_every_perf_script_is_covered():
    assert set(SCRIPTS) == {"demo_lm_seeds.py", "engine_speed.py", "estimated_search.py", "evolution_speed.py",
                            "fid_speed.py", "fitness_estimate.py", "lm_eval_overhead.py", "merge_speed.py",
                            "scoring_speed.py"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_from_another_folder(script, tmp_path):
    proc = run([str(PERF / script), "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:") and list(tmp_path.iterdir()) == []  # --help writes nothing


def test_merge_speed_relative_workdir(tmp_path):
    proc = run([str(PERF / "merge_speed.py"), "--size-gb", "0.002", "--methods", "linear,ties", "--workdir", "rel/work"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name for p in (tmp_path / "rel" / "work").iterdir()} >= {"a", "b", "linear.yaml", "ties.yaml"}
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| linear |", "| ties |"))]
    assert len(rows) == 2, proc.stdout


@pytest.mark.parametrize("args, expect", [
    (["fid_speed.py", "--n", "64", "--dim", "8", "--repeat", "1"], "tsugiki (chol+eigvalsh)"),
    (["scoring_speed.py", "--pairs", "4", "--repeat", "1"], "equal numbers: yes"),
    (["evolution_speed.py", "--hidden", "32", "--layers", "2", "--candidates", "2", "--repeats", "1"], "dare_ties"),
    (["lm_eval_overhead.py", "--model", "tiny", "--engine", "hf", "--docs", "4", "--max-new-tokens", "4"],
     "agree=100.0%"),
])
def test_tiny_runs_from_another_folder(args, expect, tmp_path):
    proc = run([str(PERF / args[0]), *args[1:]], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout
    assert list(tmp_path.iterdir()) == []  # these scripts work in memory or in temp dirs they remove
