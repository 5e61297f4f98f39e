"""The ``lm_eval`` fitness: an lm-evaluation-harness task scored on the in-memory candidate equals lm-eval's own run
(its hf model) on the candidate exported to disk; per-doc scores serve estimated fitness; validation and test
sections name lm-eval tasks too. Local task YAMLs over local JSONL only."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from helpers import write_lm_eval_task  # noqa: E402
from tsugiki.benchmarks import harness  # noqa: E402
from tsugiki.errors import EvolutionError  # noqa: E402
from tsugiki.evolution import evolve, from_data, make_problem  # noqa: E402
from tsugiki.evolution.data import generate  # noqa: E402

VALUES = {"variant_0.weight": 0.6, "variant_0.density": 0.5, "variant_1.weight": 0.4, "variant_1.density": 0.8}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Sums as multiple choice (fitness), the same kind of sums held out (validation), and a few-shot task."""
    folder = tmp_path_factory.mktemp("lm_eval_fitness_tasks")
    mc = {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "choices",
          "doc_to_target": "label", "metric_list": [{"metric": "acc"}]}
    for name, split in (("sums", "fitness"), ("sums-held-out", "validation")):
        rows = [{"question": p.prompt, "choices": [p.answer, str(int(p.answer) + 1), str(int(p.answer) + 2)], "label": 0}
                for p in generate(["arithmetic"], split, 10, 0)]
        write_lm_eval_task(folder, name, rows, mc)
    write_lm_eval_task(folder, "sums-fewshot", [{"question": f"{a}+{b}=", "choices": [str(a + b), "0"], "label": 0}
                                         for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]], {**mc, "num_fewshot": 1,
                                                                                       "fewshot_split": "test"})
    return folder


def _config(sib, tasks, **fitness) -> dict:
    return {"sources": {"base": str(sib.base), **{f"variant_{i}": str(v) for i, v in enumerate(sib.variants)}},
            "space": {"kind": "ps", "method": "dare_ties", "base_model": "base", "models": ["variant_0", "variant_1"],
                      "params": {"weight": [0, 1], "density": [0.1, 1]}, "merge_seed": 0},
            "fitness": {"function": "lm_eval", "args": {"tasks": ["sums"], "include_path": str(tasks)}, **fitness},
            "search": {"seed": 0, "population": 3, "generations": 1}}


def test_fitness_on_the_in_memory_candidate_equals_lm_evals_run_on_its_export(tiny_siblings, tasks, tmp_path):
    import lm_eval

    problem = make_problem(from_data(_config(tiny_siblings, tasks)), tmp_path)
    assert [p.id for p in problem.data["fitness"]] == [f"lm-eval:sums/{i}" for i in range(10)]
    fitness = problem.evaluate(VALUES)
    per_doc = problem.evaluate_items(VALUES)
    out = problem.export_as_evaluated(VALUES, tmp_path / "best")
    ref = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(out), "dtype": "float32"}, tasks=["sums"],
                                  task_manager=harness.task_manager(str(tasks)), log_samples=True, device="cpu",
                                  batch_size=4, verbosity="ERROR")
    assert fitness == ref["results"]["sums"]["acc,none"]
    assert per_doc == [s["acc"] for s in sorted(ref["samples"]["sums"], key=lambda s: s["doc_id"])]
    assert 0 < fitness < 1  # the check means something: the candidate gets some sums and misses some


def test_estimated_fitness_scores_a_subset_as_the_full_set_does(tiny_siblings, tasks, tmp_path):
    cfg = _config(tiny_siblings, tasks, estimate={"method": "subsample", "items": 4, "calibration": 0,
                                                  "full_every": 0})
    result = evolve(from_data(cfg), tmp_path / "run", plots=False)
    assert result.evaluations == 3
    items = json.loads((tmp_path / "run" / "estimator.json").read_text())["estimator"]["items"]
    assert len(items) == 4
    problem = make_problem(from_data(cfg), tmp_path / "run")
    for line in map(json.loads, (tmp_path / "run" / "history.jsonl").read_text().splitlines()):
        full = problem.evaluate_items(line["params"])  # every doc, in one lm-eval run
        assert line["item_scores"] == [full[i] for i in items]  # a doc scores the same in a subset run
        assert line["fitness"] == pytest.approx(sum(line["item_scores"]) / 4)


def test_fewshot_task_refuses_a_subset(tiny_siblings, tasks, tmp_path):
    cfg = _config(tiny_siblings, tasks)
    cfg["fitness"]["args"]["tasks"] = ["sums-fewshot"]
    problem = make_problem(from_data(cfg), tmp_path)
    assert len(problem.evaluate_items(VALUES)) == 4  # all docs: fine
    with pytest.raises(EvolutionError, match="few-shot tasks score only on all their docs"):
        problem.evaluate_items(VALUES, items=[0, 1])


def test_validation_and_test_name_lm_eval_tasks(tiny_siblings, tasks, tmp_path):
    cfg = _config(tiny_siblings, tasks)
    cfg["validation"] = {"args": {"tasks": ["sums-held-out"], "include_path": str(tasks)}}
    cfg["test"] = {"function": "lm_eval", "args": {"tasks": ["sums-held-out"], "include_path": str(tasks)}}
    with pytest.raises(EvolutionError, match="validation data shares 10 item"):  # validation and test: one set
        make_problem(from_data(cfg), tmp_path)
    del cfg["test"]
    problem = make_problem(from_data(cfg), tmp_path)
    assert [p.id for p in problem.data["validation"]][:2] == ["lm-eval:sums-held-out/0", "lm-eval:sums-held-out/1"]
    assert 0 <= problem.evaluate(VALUES, "validation") <= 1
    cfg["test"] = {"function": "lm_eval", "args": {"tasks": ["sums"], "include_path": str(tasks)}}
    with pytest.raises(EvolutionError, match="fitness data shares 10 item"):
        make_problem(from_data(cfg), tmp_path)


def test_bad_lm_eval_fitness_is_one_line(tiny_siblings, tasks, tmp_path):
    cfg = _config(tiny_siblings, tasks)
    cfg["fitness"]["args"]["tasks"] = ["sum"]
    with pytest.raises(EvolutionError, match=r"fitness\.args: lm-eval has no task .sum.*did you mean .*sums"):
        make_problem(from_data(cfg), tmp_path)
    cfg["fitness"]["args"] = {}
    with pytest.raises(EvolutionError, match="fitness.args: missing a required argument: 'tasks'"):
        make_problem(from_data(cfg), tmp_path)
    cfg["fitness"]["args"] = {"tasks": 3}
    with pytest.raises(EvolutionError, match="fitness.args: lm_eval: tasks must be a task name or a list of them"):
        make_problem(from_data(cfg), tmp_path)
    cfg["fitness"]["args"] = {"tasks": "sums", "include_path": "tasks-here"}
    data = from_data(cfg, base_dir=tmp_path).data
    assert data["fitness"]["args"]["include_path"] == str(tmp_path / "tasks-here")  # relative to the config


def test_lm_eval_objectives_of_a_multi_objective_search(tiny_siblings, tasks, tmp_path):
    """Two lm-eval objectives (and lm-eval validation) in one NSGA-II search: each recorded objective is what the
    one-fitness lm_eval scores on the same candidate."""
    cfg = _config(tiny_siblings, tasks)
    one = cfg.pop("fitness")
    cfg["fitness"] = [dict(one, name="sums"),
                      {"function": "lm_eval", "name": "fewshot", "args": {"tasks": ["sums-fewshot"],
                                                                          "include_path": str(tasks)}}]
    held_out = {"tasks": ["sums-held-out"], "include_path": str(tasks)}
    cfg["validation"] = [{"args": held_out}, {"args": dict(held_out, limit=4)}]
    cfg["search"] = {"seed": 0, "population": 2, "generations": 1, "optimizer": "nsga2"}
    evolve(from_data(cfg), tmp_path / "run", plots=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    single = make_problem(from_data(_config(tiny_siblings, tasks)), tmp_path / "single")
    for line in history:
        assert line["objectives"]["sums"] == single.evaluate(line["params"])
    front = json.loads((tmp_path / "run" / "front.json").read_text())["front"]
    assert front and all(set(p["validation"]) == {"sums", "fewshot"} for p in front)
