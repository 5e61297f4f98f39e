"""Optimisers as a registry (search.optimizer: cma, nsga2, random) and multi-objective fitness: the CMA-ES
path is unchanged, NSGA-II recovers ZDT1's known front, every optimiser resumes exactly, refusals, and
choosing a point of the front."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tsugiki.errors import EvolutionError
from tsugiki.evolution import evolve as _evolve
from tsugiki.evolution import from_data, load_config
from tsugiki.evolution.front import Front, choose, non_dominated, pick
from tsugiki.evolution.optimizers import OPTIMIZERS
from tsugiki.evolution.rundir import RunDir

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]  # not from helpers: a run loads this file by path (its fitness functions), without tests/ on sys.path
evolve = functools.partial(_evolve, allow_code=True)  # the configs name this file's functions


# ---- objectives named in configs as "<this file>:<name>" --------------------------------------------
def zdt1_f1(ctx, data=None):
    return ctx.params["x1"]


def zdt1_f2(ctx, data=None):
    """ZDT1 (Zitzler, Deb, Thiele 2000): g = 1 + 9 mean(x2..xn), f2 = g (1 - sqrt(f1 / g)); both minimised,
    the front is x2..xn = 0, f2 = 1 - sqrt(f1)."""
    xs = [ctx.params[f"x{i}"] for i in range(1, len(ctx.params) + 1)]
    g = 1 + 9 * sum(xs[1:]) / (len(xs) - 1)
    return g * (1 - math.sqrt(xs[0] / g))


def near(ctx, data=None):
    """-(x-1)^2 - y^2, shifted on the validation split; fails (an exception) when y > 1.5."""
    if ctx.params["y"] > 1.5:
        raise RuntimeError("candidate exploded")
    return -((ctx.params["x"] - 1) ** 2) - ctx.params["y"] ** 2 - (0.1 if ctx.split == "validation" else 0.0)


def far(ctx, data=None, *, sleep: float = 0.0):
    if sleep:
        import time

        time.sleep(sleep)
    return (ctx.params["x"] + 1) ** 2 + ctx.params["y"] ** 2  # minimised


def zdt1(optimizer: str, population: int, generations: int, n: int = 5) -> dict:
    return {"name": "zdt1", "space": {"kind": "box", "params": {f"x{i}": {"bounds": [0, 1], "transform": "clip"}
                                                                for i in range(1, n + 1)}},
            "fitness": [{"function": f"{HERE}:zdt1_f1", "name": "f1", "direction": "minimize"},
                        {"function": f"{HERE}:zdt1_f2", "name": "f2", "direction": "minimize"}],
            "search": {"optimizer": optimizer, "seed": 0, "population": population, "generations": generations}}


def two_objectives(optimizer: str, generations: int = 6, validation: bool = True, **args) -> dict:
    pairs = {"pairs": [{"prompt": "p", "answer": "a"}]}
    cfg = {"name": "mo", "space": {"kind": "box", "params": {"x": [-2, 2], "y": {"bounds": [-2, 2], "transform": "clip"}}},
           "fitness": [{"function": f"{HERE}:near", "name": "near"},
                       {"function": f"{HERE}:far", "name": "far", "direction": "minimize", "args": args}],
           "search": {"optimizer": optimizer, "seed": 1, "population": 6, "generations": generations}}
    if validation:
        cfg["validation"] = [{"data": pairs}, {"data": pairs, "name": "far"}]
    return cfg


def history(run: Path) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in RunDir(run).read_jsonl("history.jsonl")]


def gens(run: Path) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "seconds"} for g in RunDir(run).read_jsonl("generations.jsonl")]


# ---- the CMA-ES path is unchanged --------------------------------------------------------------------
# history.jsonl (x, fitness) and generations.jsonl of this run, recorded with the code before optimisers
# were a registry (commit b61773a)
CMA_BOX = {"name": "b", "space": {"kind": "box", "params": {"x": [-5, 5], "y": {"bounds": [-1, 3], "transform": "clip"}}},
           "fitness": {"function": "neg_sphere", "args": {"center": 1.0}},
           "search": {"seed": 5, "population": 4, "sigma": 0.7, "generations": 3}}
CMA_HISTORY = [
    [[-0.5613519976774132, -0.4270744735118309], -9.605781140761804], [[-0.17385313546667397, 0.7943190245295043], -3.4410199827572514],
    [[0.7952325727427498, 0.5767963994112524], -0.8856401276350367], [[-0.3868531243753627, -0.04935998256888552], -7.822999593731193],
    [[1.1320750088567237, 1.4891188196319607], -6.440519808960017], [[1.3365280538822084, 0.2854886020558969], -4.419509514907707],
    [[-0.2634709171288656, 1.3811515860314791], -6.73867176424058], [[1.6559141767730612, 0.24840964323892223], -6.757833831472677],
    [[0.4866801198220645, 0.8071988965727672], -1.547280453436887], [[1.6801164078260586, 0.8879443811808754], -8.309023445087083],
    [[0.8990481177417697, 0.9729605551958941], -4.805708545154922], [[1.7414928749945964, 0.5403618081551916], -6.319971503630864]]
CMA_SIGMAS = [0.6249416176342858, 0.7007527017131387, 0.5511692420591255]


@pytest.mark.parametrize("explicit", [False, True])
def test_cma_history_is_unchanged(tmp_path, explicit):
    cfg = json.loads(json.dumps(CMA_BOX))
    if explicit:
        cfg["search"]["optimizer"] = "cma"
    evolve(from_data(cfg), tmp_path / "run", plots=False)
    hist = RunDir(tmp_path / "run").read_jsonl("history.jsonl")
    assert [[h["x"], h["fitness"]] for h in hist] == CMA_HISTORY
    assert all("objectives" not in h for h in hist)
    rows = gens(tmp_path / "run")
    assert [r["sigma"] for r in rows] == CMA_SIGMAS
    assert list(rows[0]) == ["generation", "evaluations", "population", "failures", "best_index", "best_fitness",
                             "mean_fitness", "validation", "best_so_far", "sigma"]
    assert json.loads((tmp_path / "run" / "best.json").read_text())["x"] == CMA_HISTORY[2][0]
    assert not (tmp_path / "run" / "front.json").exists()


def test_fingerprints_of_existing_configs_are_unchanged():
    config = load_config(ROOT / "configs" / "tiny-ps.yaml")
    assert config.fingerprint() == "3646f45dfc1426b6"  # as before search.optimizer existed
    assert "optimizer" not in config.data["search"]
    explicit = from_data(dict(config.data, search=dict(config.data["search"], optimizer="cma")))
    assert explicit.fingerprint() == config.fingerprint()
    other = from_data(dict(config.data, search={k: v for k, v in config.data["search"].items()
                                                if k not in ("sigma", "cma_options")} | {"optimizer": "nsga2"}))
    assert other.fingerprint() != config.fingerprint()
    assert from_data(other.data).data == other.data  # what a run dir's config.yaml holds reads back


def test_the_registry_holds_what_configs_may_name():
    """search.optimizer is checked against OPTIMIZERS itself: every registered name is accepted, others refused."""
    base = {"space": {"kind": "box", "params": {"x": [0, 1]}}, "fitness": {"function": "neg_sphere"}}
    for name in OPTIMIZERS.names():
        assert from_data(dict(base, search={"optimizer": name})).spec.search.optimizer == name
    with pytest.raises(EvolutionError, match=r"unknown optimizer 'cmaes'.*\(known: cma, nsga2, random\)"):
        from_data(dict(base, search={"optimizer": "cmaes"}))


# ---- NSGA-II on ZDT1 -----------------------------------------------------------------------------------
def generational_distance(points: np.ndarray) -> float:
    """Mean distance of (f1, f2) points to ZDT1's true front f2 = 1 - sqrt(f1), f1 in [0, 1]."""
    f1 = np.linspace(0.0, 1.0, 20001)
    true = np.stack([f1, 1 - np.sqrt(f1)], axis=1)
    return float(np.mean([np.min(np.hypot(*(true - p).T)) for p in points]))


def test_nsga2_recovers_the_zdt1_front(tmp_path):
    """ZDT1 with 5 variables, population 40 x 60 generations (2400 evaluations, ~2 s): the front in front.json
    lies within 0.01 of the true front (generational distance, the mean distance of its points; measured
    0.0016 with 255 points, and 0.006 at 40 generations) and spans it; random search with the same budget
    does not come near (measured 1.56)."""
    result = evolve(from_data(zdt1("nsga2", 40, 60)), tmp_path / "nsga2", plots=False)
    assert result.evaluations == 2400
    front = json.loads((tmp_path / "nsga2" / "front.json").read_text())
    assert [o["name"] for o in front["objectives"]] == ["f1", "f2"]
    pts = np.array([[p["objectives"]["f1"], p["objectives"]["f2"]] for p in front["front"]])
    assert len(pts) >= 20
    assert generational_distance(pts) < 0.01
    assert pts[:, 0].min() < 0.05 and pts[:, 0].max() > 0.9  # the whole front, not one end of it
    evolve(from_data(zdt1("random", 40, 60)), tmp_path / "random", plots=False)
    rnd = json.loads((tmp_path / "random" / "front.json").read_text())["front"]
    assert generational_distance(np.array([[p["objectives"]["f1"], p["objectives"]["f2"]] for p in rnd])) > 0.1


# ---- resume is exact for every optimiser --------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["nsga2", "random"])
def test_interrupted_generation_and_partial_lines_resume_exactly(tmp_path, optimizer):
    evolve(from_data(two_objectives(optimizer, 4)), tmp_path / "ref", plots=False)
    run = tmp_path / "run"
    evolve(from_data(two_objectives(optimizer, 2)), run, plots=False)
    ref_lines = (tmp_path / "ref" / "history.jsonl").read_bytes().splitlines(keepends=True)
    with open(run / "history.jsonl", "ab") as f:  # a kill in generation 2: 3 of its lines and half a line
        f.write(b"".join(ref_lines[12:15]) + ref_lines[15][:20])
    with open(run / "generations.jsonl", "ab") as f:
        f.write(b'{"generation": 2, "evalua')
    evolve(from_data(two_objectives(optimizer, 4)), run, plots=False)
    assert history(run) == history(tmp_path / "ref") and gens(run) == gens(tmp_path / "ref")
    for name in ("best.json", "front.json", "best.yaml"):
        assert (run / name).read_text() == (tmp_path / "ref" / name).read_text()
    hist = RunDir(run).read_jsonl("history.jsonl")
    assert any(h["fitness"] is None and h["objectives"] is None for h in hist)  # failures are in the test
    assert all(set(h["objectives"]) == {"near", "far"} for h in hist if h["fitness"] is not None)


@pytest.mark.parametrize("optimizer", ["nsga2", "random"])
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path, optimizer):
    from helpers import evolve_and_kill

    cfg = two_objectives(optimizer, 8, sleep=0.01)
    reference = evolve(from_data(cfg), tmp_path / "ref", plots=False)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    killed = [evolve_and_kill([str(tmp_path / "c.yaml"), "-o", str(run)], run / "history.jsonl", 15),  # mid generation 2
              evolve_and_kill(["--resume", str(run)], run / "history.jsonl", 34)]
    assert all(killed), "the run finished before it could be killed"
    resumed = evolve(None, run, plots=False)
    assert history(run) == history(tmp_path / "ref") and gens(run) == gens(tmp_path / "ref")
    assert resumed.best == reference.best
    assert (run / "front.json").read_text() == (tmp_path / "ref" / "front.json").read_text()


@pytest.mark.parametrize("optimizer", ["nsga2", "random"])
def test_a_run_dir_that_does_not_replay_is_refused_untouched(tmp_path, optimizer):
    run = tmp_path / "run"
    evolve(from_data(two_objectives(optimizer, 3)), run, plots=False)
    hist = (run / "history.jsonl").read_bytes().splitlines(keepends=True)
    line = json.loads(hist[8])
    line["x"][0] = math.nextafter(line["x"][0], math.inf)  # one ulp: still refused
    hist[8] = (json.dumps(line) + "\n").encode()
    (run / "history.jsonl").write_bytes(b"".join(hist))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(EvolutionError, match=f"{run}: cannot resume: generation 1 candidate 2 .* not the vector {optimizer}"):
        evolve(from_data(two_objectives(optimizer, 5)), run, plots=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_validation_scores_the_new_front_points(tmp_path):
    evolve(from_data(two_objectives("nsga2", 3)), tmp_path / "run", plots=False)
    front = json.loads((tmp_path / "run" / "front.json").read_text())["front"]
    rows = gens(tmp_path / "run")
    validated = {(r["generation"], v["index"]) for r in rows for v in r["validated"]}
    assert {(p["generation"], p["index"]) for p in front} <= validated
    for p in front:  # the validation split of `near` is shifted by 0.1; `far` is the same function
        assert p["validation"]["near"] == pytest.approx(p["objectives"]["near"] - 0.1)
        assert p["validation"]["far"] == p["objectives"]["far"]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert (best["generation"], best["index"]) in {(p["generation"], p["index"]) for p in front}


# ---- refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda c: c["search"].update(optimizer="cma"), r"c.yaml: search.optimizer: cma optimises one fitness, not 2 objectives; use optimizer: nsga2 or random"),
    (lambda c: c["search"].update(optimizer="nsga"), r"search.optimizer: unknown optimizer 'nsga'; did you mean 'nsga2'\?"),
    (lambda c: c["fitness"][1].update(name="near"), r"fitness\[1\].name: objective name 'near' is used twice"),
    (lambda c: c["fitness"][0].update(direction="max"), r"fitness\[0\].direction: expected 'maximize' or 'minimize', got 'max'"),
    (lambda c: c["search"].update(cma_options={"tolx": 1e-9}), r"search.cma_options: cma_options is CMA-ES's; optimizer 'nsga2' does not use it"),
    (lambda c: c.update(validation={"data": {"pairs": [{"prompt": "p", "answer": "a"}]}}), r"validation: a multi-objective run validates each objective"),
    (lambda c: c["fitness"][1].update(estimate={"items": 2}), r"fitness\[1\].estimate: a multi-objective fitness is not estimated"),
])
def test_refusals_are_one_line_naming_the_key(change, message):
    cfg = two_objectives("nsga2")
    change(cfg)
    with pytest.raises(EvolutionError, match=message) as e:
        from_data(cfg, source_name="c.yaml")
    assert "\n" not in str(e.value)


# ---- choosing a point of the front -----------------------------------------------------------------------
def test_front_choice_by_index_and_by_weights(tmp_path):
    # a: maximised accuracy; b: minimised cost. Points (a, b): A (0.9, 10), B (0.6, 2), C (0.8, 5), D (0.5, 6)
    pts = {"A": (0.9, 10.0), "B": (0.6, 2.0), "C": (0.8, 5.0), "D": (0.5, 6.0)}
    front = Front(["a", "b"], ["maximize", "minimize"])
    new = front.add([{"generation": 0, "index": i, "objectives": {"a": a, "b": b}, "params": {"p": i}, "x": [float(i)]}
                     for i, (a, b) in enumerate(pts.values())])
    assert new == [0, 1, 2]  # D is dominated by B
    assert non_dominated([[0.9, -10], [0.6, -2], [0.8, -5], [0.5, -6]]) == [0, 1, 2]
    front.write(tmp_path)
    order = [e["params"]["p"] for e in json.loads((tmp_path / "front.json").read_text())["front"]]
    assert order == [0, 2, 1]  # best first in the first objective: A, C, B
    assert choose(tmp_path, index=1)["params"] == {"p": 2}
    # normalised over the front: a: A 1, C 2/3, B 0; b (signed): A 0, C 5/8, B 1
    assert choose(tmp_path, weights=[1, 0])["params"] == {"p": 0}  # A
    assert choose(tmp_path, weights=[0, 1])["params"] == {"p": 1}  # B
    assert choose(tmp_path, weights=[0.5, 0.5])["params"] == {"p": 2}  # C: 2/3 + 5/8 beats 1 and 1
    assert front.best()["index"] == 2 and pick([[0.9, 10], [0.6, 2], [0.8, 5]], ["maximize", "minimize"]) == 2
    with pytest.raises(EvolutionError, match="--front-index 3: the front has 3 points"):
        choose(tmp_path, index=3)
    with pytest.raises(EvolutionError, match="expected 2 non-negative numbers"):
        choose(tmp_path, weights=[1, -1])


def test_pareto_plot_and_front_table(tmp_path):
    evolve(from_data(two_objectives("nsga2", 3)), tmp_path / "run")
    assert (tmp_path / "run" / "plots" / "pareto.png").stat().st_size > 10_000
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Pareto front" in html and "plots/pareto.png" in html and "near (validation)" in html


@pytest.mark.parametrize("flags, message", [
    (["--front-weights", "1,x"], "--front-weights '1,x': expected 2 non-negative numbers, not all 0, separated by commas "
                                 "(one per objective: near, far)"),
    (["--front-weights", "0,0"], "--front-weights '0,0': expected 2 non-negative numbers"),
    (["--front-weights", "1,1,1"], "expected 2 non-negative numbers"),
    (["--front-index", "-1"], "--front-index -1: expected a position in front.json"),
    (["--front-index", "0", "--front-weights", "1,1"], "give --front-index or --front-weights, not both"),
])
def test_front_flags_are_refused_up_front(tmp_path, capsys, flags, message):
    from tsugiki.cli import main

    (tmp_path / "c.yaml").write_text(json.dumps(two_objectives("nsga2", 2)))
    code = main(["evolve", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "run"), "--export", str(tmp_path / "out"),
                 "-q", "--allow-code", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_front_flags_need_a_multi_objective_config(tmp_path, capsys):
    from tsugiki.cli import main

    (tmp_path / "c.yaml").write_text(json.dumps(CMA_BOX))
    assert main(["evolve", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "run"), "--export", str(tmp_path / "o"),
                 "-q", "--front-index", "0"]) == 2
    assert "has one fitness, no front" in capsys.readouterr().err


def test_two_objectives_on_a_merge_space(tiny_siblings, tmp_path):
    """A PS space with two answer_loglik objectives on different data: each candidate is merged once and
    scored on both (the same values as a one-fitness run of each objective scores it), then validated."""
    def ps(fitness, **extra):
        return {"name": "ps-mo", "sources": {"base": str(tiny_siblings.base), "a": str(tiny_siblings.variants[0]),
                                             "b": str(tiny_siblings.variants[1])},
                "space": {"kind": "ps", "method": "dare_ties", "base_model": "base", "models": ["a", "b"], "merge_seed": 0},
                "fitness": fitness, "search": {"seed": 0, "population": 3, "generations": 2, **extra.pop("search", {})}, **extra}

    def data(generator, split="fitness"):
        return {"generator": [generator], "split": split, "n": 4, "seed": 0}

    objectives = [{"function": "answer_loglik", "name": "arith", "data": data("arithmetic")},
                  {"function": "answer_loglik", "name": "ja", "data": data("ja_sentences")}]
    validation = [{"data": data("arithmetic", "validation")}, {"data": data("ja_sentences", "validation")}]
    evolve(from_data(ps(objectives, validation=validation, search={"optimizer": "random"}), base_dir=tmp_path), tmp_path / "mo")
    hist = RunDir(tmp_path / "mo").read_jsonl("history.jsonl")
    assert len(hist) == 6 and all(h["fitness"] is not None for h in hist)
    for name, obj in (("arith", objectives[0]), ("ja", objectives[1])):  # each objective alone, on the same vectors
        from tsugiki.evolution import make_problem

        one = make_problem(from_data(ps({k: v for k, v in obj.items() if k != "name"}), base_dir=tmp_path), tmp_path / "mo")
        for h in hist[:2]:
            assert one.evaluate(one.space.decode(h["x"]), "fitness", h["seed"]) == pytest.approx(h["objectives"][name], abs=1e-6)
    front = json.loads((tmp_path / "mo" / "front.json").read_text())["front"]
    assert front and all(set(p["validation"]) == {"arith", "ja"} for p in front)
    assert (tmp_path / "mo" / "plots" / "pareto.png").exists() and (tmp_path / "mo" / "best.yaml").exists()


@pytest.mark.parametrize("optimizer", ["nsga2", "random"])
def test_one_fitness_with_a_box_optimizer_searches_and_resumes(tmp_path, optimizer):
    cfg = {"name": "s", "space": {"kind": "box", "params": {"x": [-5, 5], "y": {"bounds": [-1, 3], "transform": "clip"}}},
           "fitness": {"function": "neg_sphere", "args": {"center": 0.5}},
           "search": {"optimizer": optimizer, "seed": 5, "generations": 30}}
    result = evolve(from_data(cfg), tmp_path / "ref", plots=False)
    assert result.evaluations == 30 * 6  # the default population for 2 dims: 4 + floor(3 ln 2)
    assert result.best["fitness"] > (-0.01 if optimizer == "nsga2" else -0.5)  # measured: -0.0005 and -0.08
    assert "sigma" not in gens(tmp_path / "ref")[0] and "objectives" not in history(tmp_path / "ref")[0]
    run = tmp_path / "run"
    evolve(from_data(dict(cfg, search=dict(cfg["search"], generations=3))), run, plots=False)
    ref_lines = (tmp_path / "ref" / "history.jsonl").read_bytes().splitlines(keepends=True)
    with open(run / "history.jsonl", "ab") as f:
        f.write(b"".join(ref_lines[18:20]) + ref_lines[20][:10])
    evolve(from_data(cfg), run, plots=False)
    assert history(run) == history(tmp_path / "ref") and gens(run) == gens(tmp_path / "ref")
    assert (run / "best.json").read_text() == (tmp_path / "ref" / "best.json").read_text()


def test_box_optimizers_map_the_unit_cube_per_transform():
    from tsugiki.evolution.optimizers import BoxOptimizer
    from tsugiki.evolution.space import Param, SearchSpace

    space = SearchSpace.of([Param("c", 2, 4, transform="clip"), Param("s", 2, 4), Param("n", transform="none")])
    opt = BoxOptimizer(from_data(CMA_BOX), space, ["maximize"])
    for u in ([0.0, 0.0, 0.0], [0.25, 0.25, 0.25], [1.0, 1.0, 1.0]):
        values = space.decode(opt.to_x(u))
        assert values["c"] == pytest.approx(2 + 2 * u[0]) and values["n"] == pytest.approx(2 * u[2] - 1)
        assert values["s"] == pytest.approx(min(max(2 + 2 * u[1], 2 + 2e-4), 4 - 2e-4), abs=1e-9)  # 1e-4 inside
