"""The run machinery on model-free problems: optimum reached, failures survive, resume after SIGKILL
is exact, lock, incompatible configs, parallel == serial."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import pytest

from tsugiki.errors import EvolutionError
from tsugiki.evolution import evolve as _evolve
from tsugiki.evolution import from_data, summary
from tsugiki.evolution.rundir import RunDir

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]  # not from helpers: a run loads this file by path (its fitness functions), without tests/ on sys.path
# the configs here name this file's functions as their fitness: code, which runs only when allowed
evolve = functools.partial(_evolve, allow_code=True)


# ---- fitness functions named in configs as "<this file>:<name>" ------------------------------------
def flaky_sphere(ctx, data=None, *, sleep: float = 0.0):
    """-(x-1)^2-(y+2)^2, but NaN when x > 2 and an exception when y > 2 (both reachable)."""
    if sleep:
        time.sleep(sleep)
    x, y = ctx.params["x"], ctx.params["y"]
    if x > 2:
        return math.nan
    if y > 2:
        raise RuntimeError("candidate exploded")
    return -((x - 1) ** 2) - (y + 2) ** 2


def hang_sometimes(ctx, data=None):
    if ctx.params["x"] > 0:
        time.sleep(5)
    return -ctx.params["x"] ** 2


def box(tmp_path: Path, fn: str = "flaky_sphere", **search) -> dict:
    return {
        "name": "box",
        "space": {"kind": "box", "params": {"x": [-5, 5], "y": [-5, 5]}},
        "fitness": {"function": f"{HERE}:{fn}", "args": search.pop("args", {})},
        "search": {"seed": 3, "population": 6, "sigma": 1.0, "generations": 12, **search},
    }


def history(run: Path) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in RunDir(run).read_jsonl("history.jsonl")]


def test_reaches_optimum_and_failures_survive(tmp_path):
    result = evolve(from_data(box(tmp_path, generations=40)), tmp_path / "run")
    assert result.best["params"]["x"] == pytest.approx(1.0, abs=1e-2)
    assert result.best["params"]["y"] == pytest.approx(-2.0, abs=1e-2)
    hist = RunDir(tmp_path / "run").read_jsonl("history.jsonl")
    assert len(hist) == result.evaluations == 240
    errors = [h["error"] for h in hist if h["fitness"] is None]
    assert any("fitness is nan" in e for e in errors) and any("candidate exploded" in e for e in errors)
    assert result.failures == len(errors)
    assert (tmp_path / "run" / "best.yaml").exists() and (tmp_path / "run" / "plots" / "fitness.png").exists()
    assert "failed" in summary(tmp_path / "run")


def test_timeout_fails_the_candidate(tmp_path):
    cfg = box(tmp_path, "hang_sometimes", generations=1, population=4, timeout=0.2)
    cfg["space"]["params"] = {"x": {"bounds": [-1, 1], "init": 0.5}}
    result = evolve(from_data(cfg), tmp_path / "run")
    hist = RunDir(tmp_path / "run").read_jsonl("history.jsonl")
    timed_out = [h for h in hist if h["error"] and "timed out" in h["error"]]
    assert timed_out and all(h["seconds"] < 2 for h in timed_out)
    assert result.generations == 1


def test_extend_run_and_refuse_incompatible_config(tmp_path):
    run = tmp_path / "run"
    evolve(from_data(box(tmp_path, generations=3)), run)
    reference = tmp_path / "ref"
    evolve(from_data(box(tmp_path, generations=5)), reference)
    evolve(from_data(box(tmp_path, generations=5)), run)  # the same command with a larger budget continues
    assert history(run) == history(reference)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(EvolutionError, match=r"different config \(search\.seed"):
        evolve(from_data(box(tmp_path, generations=5, seed=4)), run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EvolutionError, match="not a tsugiki run dir"):
        evolve(from_data(box(tmp_path)), tmp_path / "other")


def test_lock_refuses_a_second_writer(tmp_path):
    holder = RunDir(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(EvolutionError, match=f"another process \\(pid {os.getpid()}\\)"):
            evolve(from_data(box(tmp_path)), tmp_path / "run")
    finally:
        holder.unlock()


def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path):
    from helpers import evolve_and_kill  # here: `tsugiki evolve` imports this file as the fitness's module

    cfg = box(tmp_path, generations=10, args={"sleep": 0.01})
    reference = evolve(from_data(cfg), tmp_path / "ref", plots=False)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    killed = [evolve_and_kill([str(tmp_path / "c.yaml"), "-o", str(run)], run / "history.jsonl", 17),  # mid generation 2
              evolve_and_kill(["--resume", str(run)], run / "history.jsonl", 40)]
    assert all(killed), "the run finished before it could be killed"
    resumed = evolve(None, run, plots=False)
    assert history(run) == history(tmp_path / "ref")
    assert resumed.best == reference.best
    assert (run / "best.yaml").read_text() == (tmp_path / "ref" / "best.yaml").read_text()
    assert RunDir(run).read_jsonl("generations.jsonl")[-1]["best_so_far"] == reference.best["fitness"]


def test_parallel_workers_equal_serial(tmp_path):
    serial = evolve(from_data(box(tmp_path, generations=3)), tmp_path / "serial", plots=False)
    parallel = evolve(from_data(box(tmp_path, generations=3, workers=2)), tmp_path / "parallel", plots=False)
    assert history(tmp_path / "parallel") == history(tmp_path / "serial")
    assert parallel.best == serial.best


def test_ray_backend_equals_serial(tmp_path):
    if os.environ.get("TSUGIKI_TEST_RAY") != "1":
        pytest.skip("starts a local Ray cluster (~15 s); set TSUGIKI_TEST_RAY=1 to run")
    pytest.importorskip("ray")
    serial = evolve(from_data(box(tmp_path, generations=2)), tmp_path / "serial", plots=False)
    ray_run = evolve(from_data(box(tmp_path, generations=2, workers=2, backend="ray")), tmp_path / "ray", plots=False)
    assert history(tmp_path / "ray") == history(tmp_path / "serial")
    assert ray_run.best == serial.best


def test_backend_names_are_the_registry_s(tmp_path, capsys):
    import re

    import yaml

    from tsugiki.cli import main
    from tsugiki.errors import UnknownNameError
    from tsugiki.evolution.backends import BACKENDS, ProcessBackend, SerialBackend, make_backend
    from tsugiki.evolution.search_config import BACKEND_NAMES

    assert sorted(BACKENDS.names()) == sorted(BACKEND_NAMES)
    config = from_data(box(tmp_path, generations=1))
    (tmp_path / "box.yaml").write_text(yaml.safe_dump(dict(config.data)))
    # `tsugiki evolve --backend` is checked as the config's search.backend: its names, one line, nothing written
    assert main(["evolve", str(tmp_path / "box.yaml"), "-o", str(tmp_path / "run"), "--backend", "rey",
                 "--allow-code"]) == 2
    listed = re.search(r"search\.backend: expected (.*), got 'rey'", capsys.readouterr().err).group(1)
    assert sorted(re.findall(r"'(\w+)'", listed)) == sorted(BACKEND_NAMES)
    assert not (tmp_path / "run").exists()
    kw = dict(timeout=None, threads=1)
    one = make_backend("local", "the problem", config, tmp_path, workers=1, **kw)
    assert isinstance(one, SerialBackend) and one.problem == "the problem"
    pool = make_backend("local", None, config, tmp_path, workers=2, **kw)
    try:
        assert isinstance(pool, ProcessBackend) and pool.workers == 2
    finally:
        pool.close()
    with pytest.raises(UnknownNameError, match=r"unknown backend 'rey'; did you mean 'ray'\?"):
        make_backend("rey", None, config, tmp_path, workers=1, **kw)



# ---- resume is a replay of the logs: no pickle, exact, and refuses what does not replay -------------
def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


class _Planted:
    """Unpickling this creates a file: proof that a run dir's pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_never_unpickles(tmp_path):
    import pickle

    run, marker = tmp_path / "run", tmp_path / "unpickled"
    evolve(from_data(box(tmp_path, generations=2)), run, plots=False)
    assert not (run / "state.pkl").exists() and json.loads((run / "run.json").read_text())["format"] == 2
    (run / "state.pkl").write_bytes(pickle.dumps(_Planted(marker)))  # what an old or hostile run dir may hold
    evolve(from_data(box(tmp_path, generations=4)), run, plots=False)
    assert not marker.exists()
    src = REPO / "tsugiki" / "evolution"
    assert not [p.name for p in src.rglob("*.py") if "import pickle" in p.read_text() or "pickle.load" in p.read_text()]


def test_interrupted_generation_and_partial_lines_resume_exactly(tmp_path):
    evolve(from_data(box(tmp_path, generations=4)), tmp_path / "ref", plots=False)
    run = tmp_path / "run"
    evolve(from_data(box(tmp_path, generations=2)), run, plots=False)
    ref_lines = (tmp_path / "ref" / "history.jsonl").read_bytes().splitlines(keepends=True)
    with open(run / "history.jsonl", "ab") as f:  # a kill in generation 2: 3 of its lines and half a line
        f.write(b"".join(ref_lines[12:15]) + ref_lines[15][:20])
    with open(run / "generations.jsonl", "ab") as f:
        f.write(b'{"generation": 2, "evalua')
    evolve(None, run, plots=False)  # the run's own budget (2 generations) is spent: the lines wait
    assert len(RunDir(run).read_jsonl("history.jsonl")) == 15
    evolve(from_data(box(tmp_path, generations=4)), run, plots=False)
    assert history(run) == history(tmp_path / "ref")
    assert [g["generation"] for g in RunDir(run).read_jsonl("generations.jsonl")] == [0, 1, 2, 3]
    assert (run / "best.json").read_text() == (tmp_path / "ref" / "best.json").read_text()


@pytest.mark.parametrize("damage", ["x", "fitness", "missing line", "generation line", "pending x"])
def test_run_dir_that_does_not_replay_is_refused_untouched(tmp_path, damage):
    run = tmp_path / "run"
    evolve(from_data(box(tmp_path, generations=3)), run, plots=False)
    hist = (run / "history.jsonl").read_bytes().splitlines(keepends=True)
    gens = (run / "generations.jsonl").read_bytes().splitlines(keepends=True)
    line = json.loads(hist[8])  # generation 1, candidate 2
    if damage == "x":
        line["x"][0] = math.nextafter(line["x"][0], math.inf)  # one ulp: still refused
        hist[8] = (json.dumps(line) + "\n").encode()
    elif damage == "fitness":
        line["fitness"] = (line["fitness"] or 0.0) + 1.0
        hist[8] = (json.dumps(line) + "\n").encode()
    elif damage == "missing line":
        del hist[8]
    elif damage == "generation line":
        gens[1] = b"not json\n"
    else:  # a line of the interrupted generation that is not what CMA-ES asks
        extra = json.loads(hist[-1])
        extra.update(generation=3, index=0)
        hist.append((json.dumps(extra) + "\n").encode())
    (run / "history.jsonl").write_bytes(b"".join(hist))
    (run / "generations.jsonl").write_bytes(b"".join(gens))
    before = _files(run)
    with pytest.raises(EvolutionError, match=f"{run}.*(cannot resume|damaged)"):
        evolve(from_data(box(tmp_path, generations=5)), run, plots=False)
    assert _files(run) == before


def test_edited_config_yaml_is_refused(tmp_path):
    run = tmp_path / "run"
    evolve(from_data(box(tmp_path, generations=2)), run, plots=False)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("sigma: 1.0", "sigma: 2.0"))
    before = _files(run)
    with pytest.raises(EvolutionError, match="differs from the config the run was started with"):
        evolve(None, run, plots=False)
    assert _files(run) == before


def test_kept_problem_serves_search_seeds_and_changes_no_result(tiny_siblings, tmp_path, monkeypatch):
    """Runs whose configs differ only in name and search seed share one set-up problem (KeptProblem): the
    models load once, and every history is the one a fresh problem writes; any other difference gets a new
    problem, and the old one is closed."""
    from tsugiki.evolution import KeptProblem, evolve, from_data
    from tsugiki.evolution.kinds.ps.kind import PSProblem

    def config(seed: int, method: str = "dare_ties") -> dict:
        return {"name": f"ps-s{seed}", "sources": {"base": str(tiny_siblings.base), "a": str(tiny_siblings.variants[0]),
                                                   "b": str(tiny_siblings.variants[1])},
                "space": {"kind": "ps", "method": method, "base_model": "base", "models": ["a", "b"], "merge_seed": 0},
                "fitness": {"function": "answer_loglik", "data": {"generator": ["arithmetic"], "split": "fitness", "n": 4, "seed": 0}},
                "search": {"seed": seed, "population": 3, "generations": 2}}

    setups, closes = [], []
    real_setup, real_close = PSProblem.setup, PSProblem.close
    monkeypatch.setattr(PSProblem, "setup", lambda self: (setups.append(self), real_setup(self))[1])
    monkeypatch.setattr(PSProblem, "close", lambda self: (closes.append(self), real_close(self))[1])
    for seed in (0, 1):
        evolve(from_data(config(seed), base_dir=tmp_path), tmp_path / f"fresh-{seed}")
    assert len(setups) == 2
    setups.clear()
    with KeptProblem() as kept:
        for seed in (0, 1):
            evolve(from_data(config(seed), base_dir=tmp_path), tmp_path / f"kept-{seed}", keep=kept)
        assert len(setups) == 1 and kept.problem is setups[0] and kept.problem not in closes
        evolve(from_data(config(2, method="ties"), base_dir=tmp_path), tmp_path / "other", keep=kept)
        assert len(setups) == 2 and setups[0] in closes and kept.problem is setups[1]
    assert setups[1] in closes and kept.problem is None
    for seed in (0, 1):
        assert history(tmp_path / f"kept-{seed}") == history(tmp_path / f"fresh-{seed}")
        assert json.loads((tmp_path / f"kept-{seed}" / "best.json").read_text()) == \
            json.loads((tmp_path / f"fresh-{seed}" / "best.json").read_text())
