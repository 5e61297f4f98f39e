"""Estimated fitness in a run (fitness.estimate): the calibration pass, the estimator it keeps, estimated
candidates, full-set checks of each generation's best, exact resume after SIGKILL, config errors; and the
per-item forms of the built-in fitness functions against their scalar forms."""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from tsugiki.errors import EvolutionError
from tsugiki.evolution import evolve as _evolve
from tsugiki.evolution import from_data, make_problem
from tsugiki.evolution.data import Pair
from tsugiki.evolution.estimate import IRTEstimate, estimator_from_json
from tsugiki.evolution.fitness import FITNESS, EvalContext
from tsugiki.evolution.rundir import RunDir

HERE = Path(__file__).resolve()
evolve = functools.partial(_evolve, allow_code=True)
N_ITEMS = 40


# ---- a model-free fitness with items, named in configs as "<this file>:item_sphere" -----------------
def _item_params(pair: Pair) -> tuple[float, float]:
    i = int(pair.prompt)
    return 0.5 + (i % 5) * 0.3, -2.0 + (i % 8) * 0.6  # discrimination, difficulty


def item_sphere_items(ctx, data, *, sleep: float = 0.0):
    """Item i: sigmoid(a_i * ability - b_i), ability = 2 - (x - 1)^2 - (y + 2)^2 (best at x=1, y=-2)."""
    if sleep:
        time.sleep(sleep)
    ability = 2 - (ctx.params["x"] - 1) ** 2 - (ctx.params["y"] + 2) ** 2
    return [1 / (1 + math.exp(-(a * ability - b))) for a, b in map(_item_params, data)]


def item_sphere(ctx, data, *, sleep: float = 0.0):
    return sum(item_sphere_items(ctx, data, sleep=sleep)) / len(data)


item_sphere.items = item_sphere_items
item_sphere.item_range = lambda args: (0.0, 1.0)
item_sphere.needs_model = False


def unbounded(ctx, data):
    return sum(unbounded_items(ctx, data)) / len(data)


def unbounded_items(ctx, data):
    return [-(ctx.params["x"] ** 2) * (1 + int(p.prompt) % 3) for p in data]


unbounded.items = unbounded_items


def odd_seeds_fail(ctx, data):
    return sum(odd_seeds_fail_items(ctx, data)) / len(data)


def odd_seeds_fail_items(ctx, data):
    if ctx.seed % 2 and ctx.params:  # calibration candidate j gets seed estimate.seed + j
        raise RuntimeError("candidate exploded")
    return item_sphere_items(ctx, data)


odd_seeds_fail.items = odd_seeds_fail_items
odd_seeds_fail.item_range = lambda args: (0.0, 1.0)


def no_items(ctx, data):
    return -ctx.params["x"] ** 2


def config(estimate: dict | None = None, fn: str = "item_sphere", **search) -> dict:
    fitness = {"function": f"{HERE}:{fn}", "args": search.pop("args", {}),
               "data": {"pairs": [{"prompt": str(i), "answer": "-"} for i in range(N_ITEMS)]}}
    if estimate is not None:
        fitness["estimate"] = estimate
    return {"name": "est", "space": {"kind": "box", "params": {"x": [-4, 4], "y": [-4, 4]}}, "fitness": fitness,
            "search": {"seed": 1, "population": 6, "sigma": 1.0, "generations": 6, **search}}


def full_mean(params: dict) -> float:
    ctx = EvalContext(params)
    return item_sphere(ctx, [Pair(str(i), "-") for i in range(N_ITEMS)])


@pytest.mark.parametrize("method", ["subsample", "anchors", "irt"])
def test_estimated_run_records_estimates_and_full_scores(tmp_path, method):
    run = tmp_path / "run"
    result = evolve(from_data(config({"method": method, "items": 6, "calibration": 5, "full_every": 2})), run,
                    plots=False)
    rd = RunDir(run)
    calibration = rd.read_jsonl("calibration.jsonl")
    if method == "subsample":  # a random subset needs no calibration
        assert calibration == [] and not (run / "calibration.jsonl").exists()
    else:
        assert [c["label"] for c in calibration] == [f"random {j}" for j in range(5)]  # a box space has no sources
    for c in calibration:  # each calibration model is scored on every item, by the function's items form
        assert c["scores"] == pytest.approx(item_sphere_items(EvalContext(_decode(c["x"])),
                                                              [Pair(str(i), "-") for i in range(N_ITEMS)]), abs=1e-12)
    stored = json.loads((run / "estimator.json").read_text())
    estimator = estimator_from_json(stored["estimator"])
    assert stored["n_items"] == N_ITEMS and stored["models"] == (0 if method == "subsample" else 5)
    assert len(estimator.items) == 6 if method != "anchors" else 1 <= len(estimator.items) <= 6
    history = rd.read_jsonl("history.jsonl")
    assert len(history) == result.evaluations == 36
    for h in history:  # candidates are scored on the estimator's items only; the fitness is the estimate
        assert len(h["item_scores"]) == len(estimator.items)
        expected = [item_sphere_items(EvalContext(h["params"]), [Pair(str(i), "-")])[0] for i in estimator.items]
        assert h["item_scores"] == pytest.approx(expected, abs=1e-12)
        assert h["fitness"] == estimator.estimate(np.asarray(h["item_scores"]))
    gens = rd.read_jsonl("generations.jsonl")
    for g in gens:
        best = history[g["generation"] * 6 + g["best_index"]]
        assert g["best_fitness"] == best["fitness"]
        if g["generation"] % 2 == 0:
            assert g["best_full_fitness"] == pytest.approx(full_mean(best["params"]), abs=1e-12)
            assert g["items_scored"] == 6 * len(estimator.items) + N_ITEMS
        else:
            assert "best_full_fitness" not in g and g["items_scored"] == 6 * len(estimator.items)
    # the run's best: the checked generation best with the highest full-set score, its estimate beside it
    checked = max((g for g in gens if "best_full_fitness" in g), key=lambda g: g["best_full_fitness"])
    assert (result.best["generation"], result.best["index"]) == (checked["generation"], checked["best_index"])
    assert result.best["fitness"] == checked["best_full_fitness"] and result.best["estimate"] == checked["best_fitness"]
    assert json.loads((run / "best.json").read_text())["fitness"] == checked["best_full_fitness"]


def test_without_full_set_checks_the_best_is_the_highest_estimate(tmp_path):
    result = evolve(from_data(config({"method": "anchors", "items": 5, "calibration": 3, "full_every": 0},
                                     generations=3)), tmp_path / "run", plots=False)
    history = RunDir(tmp_path / "run").read_jsonl("history.jsonl")
    assert result.best["fitness"] == max(h["fitness"] for h in history) and "estimate" not in result.best
    assert all("best_full_fitness" not in g for g in RunDir(tmp_path / "run").read_jsonl("generations.jsonl"))


def _decode(x: list[float]) -> dict:
    return make_problem(from_data(config()), Path(".")).space.decode(x)


def test_estimate_follows_the_full_fitness(tmp_path):
    """On a smooth problem the estimated search ends near the optimum the full fitness finds."""
    est = evolve(from_data(config({"method": "irt", "items": 6, "calibration": 8}, generations=20)), tmp_path / "e",
                 plots=False)
    assert full_mean(est.best["params"]) > full_mean({"x": 1.0, "y": -2.0}) - 0.02


def _logs(run: Path) -> dict[str, list[dict]]:
    rd = RunDir(run)
    return {name: [{k: v for k, v in h.items() if k != "seconds"} for h in rd.read_jsonl(name)]
            for name in ("calibration.jsonl", "history.jsonl", "generations.jsonl")}


def test_sigkill_in_calibration_and_search_resumes_exactly(tmp_path):
    from helpers import evolve_and_kill  # here: `tsugiki evolve` imports this file as the fitness's module

    cfg = config({"method": "irt", "items": 6, "calibration": 6}, generations=5, args={"sleep": 0.02})
    reference = evolve(from_data(cfg), tmp_path / "ref", plots=False)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    killed = [evolve_and_kill([str(tmp_path / "c.yaml"), "-o", str(run)], run / "calibration.jsonl", 3),
              evolve_and_kill(["--resume", str(run)], run / "history.jsonl", 9)]
    assert all(killed), "the run finished before it could be killed"
    resumed = evolve(None, run, plots=False)
    assert _logs(run) == _logs(tmp_path / "ref")
    assert (run / "estimator.json").read_bytes() == (tmp_path / "ref" / "estimator.json").read_bytes()
    assert resumed.best == reference.best


def test_extended_estimated_run_reuses_its_calibration(tmp_path):
    run = tmp_path / "run"
    evolve(from_data(config({"method": "anchors", "items": 5, "calibration": 4}, generations=2)), run, plots=False)
    before = (run / "calibration.jsonl").read_bytes(), (run / "estimator.json").read_bytes()
    evolve(from_data(config({"method": "anchors", "items": 5, "calibration": 4}, generations=4)), run, plots=False)
    assert ((run / "calibration.jsonl").read_bytes(), (run / "estimator.json").read_bytes()) == before
    evolve(from_data(config({"method": "anchors", "items": 5, "calibration": 4}, generations=4)), tmp_path / "ref",
           plots=False)
    assert _logs(run) == _logs(tmp_path / "ref")


@pytest.mark.parametrize("estimate, fn, message", [
    ({"method": "irt", "items": 4}, "no_items", r"fitness\.estimate: fitness function .* scores no items"),
    ({"method": "irt", "items": 40}, "item_sphere", r"fitness\.estimate\.items: 40 items of 40: nothing to save"),
    ({"method": "irt", "items": 4}, "unbounded", r"fitness\.estimate\.method: irt needs item scores in a bounded range"),
    ({"method": "mean", "items": 4}, "item_sphere", r"fitness\.estimate\.method: .*subsample, anchors, irt"),
    ({"method": "irt"}, "item_sphere", r"fitness\.estimate: missing required key 'items'"),
    ({"method": "irt", "items": 4, "sources": "yes"}, "item_sphere", r"fitness\.estimate\.sources"),
])
def test_bad_estimates_are_refused_before_anything_runs(tmp_path, estimate, fn, message):
    with pytest.raises(EvolutionError, match=message):
        evolve(from_data(config(estimate, fn)), tmp_path / "run")
    assert not (tmp_path / "run" / "calibration.jsonl").exists()


def test_unbounded_items_estimate_with_subsample(tmp_path):
    run = tmp_path / "run"
    evolve(from_data(config({"method": "subsample", "items": 8, "calibration": 2}, "unbounded", generations=2)), run,
           plots=False)
    h = RunDir(run).read_jsonl("history.jsonl")[0]
    assert h["fitness"] == pytest.approx(np.mean(h["item_scores"]))


def test_validation_is_never_estimated(tmp_path):
    cfg = config()
    cfg["validation"] = {"data": cfg["fitness"]["data"], "estimate": {"method": "irt", "items": 3}}
    with pytest.raises(EvolutionError, match="validation.estimate: only the fitness is estimated"):
        from_data(cfg)


def test_configs_without_estimate_keep_their_fingerprint():
    """Adding the estimate key changed nothing for configs without it: old run dirs still resume."""
    c = from_data(config())
    assert "estimate" not in c.data["fitness"]
    assert from_data(config({"method": "irt", "items": 3})).fingerprint() != c.fingerprint()


# ---- per-item forms of the built-ins ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tiny_mistral_siblings):
    from tsugiki.evolution.sources import load_causal_lm

    model, tok = load_causal_lm(str(tiny_mistral_siblings.variants[1]), "cpu")
    return EvalContext({}, model=model, tokenizer=tok)


PAIRS = [Pair("2+3=", "5"), Pair("7+1=", "8"), Pair("12+30=", "42"), Pair("こんにちは", "世界"), Pair("9+9=", "18")]


@pytest.mark.parametrize("name, args", [
    ("teacher_forced_accuracy", {}), ("teacher_forced_accuracy", {"prob_weight": 0.1, "append_eos": True}),
    ("answer_loglik", {}),
    ("weighted_sum", {"terms": [{"function": "answer_loglik", "weight": 0.5},
                                {"function": "teacher_forced_accuracy", "weight": -2, "args": {"prob_weight": 1}}]}),
])
def test_item_scores_average_to_the_fitness(lm, name, args):
    spec = FITNESS.get(name)
    items = spec.items(lm, PAIRS, **args)
    assert len(items) == len(PAIRS)
    assert sum(items) / len(items) == pytest.approx(spec.fn(lm, PAIRS, **args), abs=1e-9)
    assert [spec.items(lm, [p], **args)[0] for p in PAIRS] == pytest.approx(items, abs=1e-6)  # item by item
    low_high = spec.item_range(args) if spec.item_range else None
    if low_high is not None:
        assert all(low_high[0] <= v <= low_high[1] for v in items)


def test_weighted_sum_range_is_the_weighted_bounds():
    r = FITNESS.get("weighted_sum").item_range({"terms": [
        {"function": "teacher_forced_accuracy", "weight": 2, "args": {"prob_weight": 0.5}},
        {"function": "mgsm_accuracy", "weight": -1}]})
    assert r == (-1.0, 3.0)
    assert FITNESS.get("weighted_sum").item_range({"terms": [{"function": "answer_loglik"}]}) is None


def test_mgsm_items_match_the_benchmark_scorer(lm):
    spec = FITNESS.get("mgsm_accuracy")
    args = {"template": "{input}", "max_new_tokens": 4, "stop": ["\n"], "extraction": "robust"}
    data = [Pair(p.prompt, p.answer) for p in PAIRS if p.answer.isdigit()]
    items = spec.items(lm, data, **args)
    assert set(items) <= {0.0, 1.0}
    assert sum(items) / len(items) == pytest.approx(spec.fn(lm, data, **args), abs=1e-12)


def test_ps_sources_score_as_the_models_themselves(tiny_siblings, tmp_path):
    """A PS space's calibration scores each source as it is: the same item scores as the loaded model."""
    from tsugiki.evolution.sources import load_causal_lm

    cfg = {"sources": {"base": str(tiny_siblings.base), "v0": str(tiny_siblings.variants[0]),
                       "v1": str(tiny_siblings.variants[1])},
           "space": {"kind": "ps", "method": "ties", "base_model": "base", "models": ["v0", "v1"]},
           "fitness": {"function": "answer_loglik", "data": {"generator": "arithmetic", "split": "fitness", "n": 6}},
           "search": {"population": 2, "generations": 1}}
    problem = make_problem(from_data(cfg), tmp_path)
    assert problem.scorable_sources() == ["base", "v0", "v1"]
    for name in ("v1", "base"):
        model, tok = load_causal_lm(cfg["sources"][name], "cpu")
        direct = FITNESS.get("answer_loglik").items(EvalContext({}, model=model, tokenizer=tok), problem.data["fitness"])
        assert problem.evaluate_items({}, source=name) == pytest.approx(direct, abs=1e-5)


def test_irt_estimate_maps_a_score_range():
    """Item scores in [0, 2] are estimated as twice those of the same responses in [0, 1]."""
    rng = np.random.default_rng(0)
    r = (rng.random((12, 30)) < rng.random(30)).astype(float)
    unit = IRTEstimate.fit(r, 6, seed=0)
    double = IRTEstimate.fit(2 * r, 6, seed=0, score_range=(0.0, 2.0))
    assert list(unit.items) == list(double.items)
    scores = r[0, unit.items]
    assert double.estimate(2 * scores) == pytest.approx(2 * unit.estimate(scores), abs=1e-9)


def test_report_and_summary_show_the_estimate_against_the_full_set(tmp_path):
    from tsugiki.evolution import summary

    run = tmp_path / "run"
    evolve(from_data(config({"method": "irt", "items": 5, "calibration": 4}, generations=3)), run)
    gens = RunDir(run).read_jsonl("generations.jsonl")
    errors = [abs(g["best_fitness"] - g["best_full_fitness"]) for g in gens]
    assert f"mean |error| {sum(errors) / 3:.4g} over 3 generations" in summary(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<th>best on the full set</th>" in page and "<th>items scored</th>" in page
    for g in gens:
        assert f'<td class="n">{g["best_full_fitness"]:.4g}</td>' in page
    assert (run / "plots" / "fitness.png").is_file()


def test_plan_says_how_fitness_is_estimated():
    from tsugiki.evolution.plan import plan_space

    plan = plan_space(from_data(config({"method": "irt", "items": 5, "calibration": 4, "full_every": 2})), {})
    assert ("note: fitness estimated (irt): each candidate scores 5 of the fitness items; first a calibration pass "
            "scores the sources and 4 random candidates on every item; the best of one generation in 2 also on every "
            "item") in plan.summary()
    assert "estimated" not in plan_space(from_data(config()), {}).summary()


def test_estimated_run_in_worker_processes_equals_serial(tmp_path):
    est = {"method": "anchors", "items": 5, "calibration": 3}
    evolve(from_data(config(est, generations=2)), tmp_path / "serial", plots=False)
    evolve(from_data(config(est, generations=2, workers=2)), tmp_path / "parallel", plots=False)
    assert _logs(tmp_path / "parallel") == _logs(tmp_path / "serial")


def test_failed_calibration_models_are_recorded_and_left_out(tmp_path):
    run = tmp_path / "run"
    evolve(from_data(config({"method": "anchors", "items": 5, "calibration": 5}, "odd_seeds_fail", generations=1)), run,
           plots=False)
    calibration = RunDir(run).read_jsonl("calibration.jsonl")
    assert [c["scores"] is None for c in calibration] == [False, True, False, True, False]
    assert all("candidate exploded" in c["error"] for c in calibration if c["scores"] is None)
    assert json.loads((run / "estimator.json").read_text())["models"] == 3
    with pytest.raises(EvolutionError, match="calibration scored 1 of 2 models on the full set; the estimator needs at least 2"):
        evolve(from_data(config({"method": "anchors", "items": 5, "calibration": 2}, "odd_seeds_fail")), tmp_path / "r2")
