"""`tsugiki evolve` refuses what cannot run before it builds or writes anything: each refusal is one
line (the config's FILE:LINE and key where there is one), exit 2, and the run dir is left as it was."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tsugiki.cli import main
from tsugiki.evolution import runner
from helpers import REPO

CONFIGS = REPO / "configs"
TINY_PS = """name: refused
tiny_models: {arch: llama, n: 2, steps: 3}
space: {kind: ps, method: linear, models: [variant_0, variant_1], params: {weight: [0.0, 1.0]}}
fitness:
  function: answer_loglik
  data: {generator: arithmetic, split: fitness, n: 4}
search: {population: 2, generations: 1}
"""
BOX = "name: box\nspace: {kind: box, params: {x: [-3, 3]}}\nfitness: {function: neg_sphere}\nsearch: {population: 2, generations: 1}\n"


def one_error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tsugiki: error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def listing(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir()} if d.exists() else None


@pytest.fixture
def nothing_built(monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("a refused run built its sources")

    monkeypatch.setattr(runner, "prepare_sources", no_build)


def test_missing_source_names_the_config_line_and_key(tmp_path, capsys, nothing_built):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_PS.replace("tiny_models: {arch: llama, n: 2, steps: 3}", "sources: {a: ./nope, b: ./nope}")
                   .replace("[variant_0, variant_1]", "[a, b]"))
    for extra in (["-o", str(tmp_path / "run"), "-q"], ["--plan"]):
        assert main(["evolve", str(cfg), *extra]) == 2
        one_error_line(capsys, f"{cfg}:2: sources.a: ./nope: no such file or folder (and not a hub id)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("old, new, where", [
    ("function: answer_loglik", "function: answer_logl", "fitness.function: unknown fitness function 'answer_logl'; "
                                                         "did you mean 'answer_loglik'?"),
    ("function: answer_loglik", "function: weighted_sum\n  args: {terms: [{function: exact_matc}]}",
     "fitness.args.terms[0].function: unknown fitness function 'exact_matc'"),
    ("{generator: arithmetic, split: fitness, n: 4}", "{file: missing.jsonl}", "fitness.data: "),
    ("generator: arithmetic", "generator: arithmetc", "fitness.data: unknown data generator 'arithmetc'"),
    ("split: fitness", "split: train", "fitness.data: split must be one of"),
])
@pytest.mark.parametrize("existed", [False, True])
def test_what_a_config_names_is_checked_before_anything_is_built(tmp_path, capsys, nothing_built, old, new, where, existed):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_PS.replace(old, new))
    run = tmp_path / "run"
    if existed:
        run.mkdir()
    assert main(["evolve", str(cfg), "-o", str(run), "-q"]) == 2
    line = one_error_line(capsys, f"{cfg}:", where)
    if "file:" in new:
        assert f"{tmp_path / 'missing.jsonl'}: no such file" in line
    assert listing(run) == ({} if existed else None)  # no config.yaml, .lock or models/; no new dir


def test_non_empty_folder_or_file_as_run_dir_is_refused_untouched(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BOX)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    assert main(["evolve", str(cfg), "-o", str(mine), "-q"]) == 2
    one_error_line(capsys, f"{mine}: exists and is not a tsugiki run dir (holds 'thesis.txt')")
    assert listing(mine) == {"thesis.txt": b"x"}  # no .lock dropped
    assert main(["evolve", str(cfg), "-o", str(mine / "thesis.txt"), "-q"]) == 2
    one_error_line(capsys, f"{mine / 'thesis.txt'}: not a folder")
    assert main(["evolve", str(cfg), "-o", str(mine / "thesis.txt" / "run"), "-q"]) == 2  # a file on the way
    one_error_line(capsys, f"{mine / 'thesis.txt' / 'run'}: cannot write the run dir here")
    assert main(["evolve", "--resume", str(mine), "-q"]) == 2
    one_error_line(capsys, f"{mine}: not a run dir")
    assert listing(mine) == {"thesis.txt": b"x"}


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("existed", [False, True])
def test_read_only_run_dir_is_one_line(tmp_path, capsys, monkeypatch, code, existed):
    """The tests run as root: the location's refusal is simulated at the run's first write (the run dir
    made, or its lock file created)."""
    from tsugiki import fileio

    cfg = tmp_path / "c.yaml"
    cfg.write_text(BOX)
    run = tmp_path / "run"
    if existed:
        run.mkdir()

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code), str(run))

    mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: refuse() if self == run else mkdir(self, *a, **k))
    monkeypatch.setattr(fileio, "try_flock", refuse)
    assert main(["evolve", str(cfg), "-o", str(run), "-q"]) == 2
    one_error_line(capsys, f"{run}: cannot write the run dir here ({os.strerror(code)})")
    assert listing(run) == ({} if existed else None)


@pytest.mark.parametrize("name, dims", [("tiny-ps", 12), ("tiny-vlm-ps", 4), ("tiny-ps-dfs", 28), ("tiny-dfs", 22)])
def test_plan_of_tiny_models_needs_no_run_dir_and_builds_nothing(tmp_path, capsys, monkeypatch, nothing_built, name, dims):
    monkeypatch.chdir(tmp_path)
    assert main(["evolve", str(CONFIGS / f"{name}.yaml"), "--plan"]) == 0
    assert f"{dims} dimensions" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_tiny_config_json_is_the_built_ones(tiny_siblings):
    from tsugiki.factory import TinyLMSpec
    from tsugiki.factory.lm import config_json

    assert config_json(TinyLMSpec("llama")) == json.loads((tiny_siblings.base / "config.json").read_text())
