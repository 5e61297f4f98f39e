"""Predictors (files, callables, a tiny HF LM) and the runner's results on disk."""

import json

import pytest

from tsugiki.benchmarks.items import MathItem
from tsugiki.benchmarks.predictors import CallablePredictor, PredictionsFile
from tsugiki.engines.hf import truncate_at_stop
from tsugiki.benchmarks.results import find_results, read_result, write_result
from tsugiki.benchmarks.runner import evaluate, text_generator
from tsugiki.benchmarks.specs import BENCHMARKS
from tsugiki.errors import BenchmarkError

ITEMS = [MathItem(str(i), f"{i}+1は？", i + 1) for i in range(3)]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_predictions_by_id_and_in_order(tmp_path):
    by_id = jsonl(tmp_path / "a.jsonl", [{"id": "2", "prediction": "c"}, {"id": 0, "response": "a"}, {"id": "1", "prediction": "b"}])
    assert PredictionsFile(by_id).predict(ITEMS) == ["a", "b", "c"]
    in_order = jsonl(tmp_path / "b.jsonl", [{"prediction": t} for t in "xyz"])
    assert PredictionsFile(in_order, name="m").predict(ITEMS) == ["x", "y", "z"]
    with pytest.raises(BenchmarkError, match="3 predictions for 2 items"):
        PredictionsFile(in_order).predict(ITEMS[:2])


def test_prediction_file_mismatches(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"id": "0", "prediction": "a"}, {"id": "9", "prediction": "z"}])
    with pytest.raises(BenchmarkError, match=r"no prediction for 2 of 3 items \(ids 1, 2\)"):
        PredictionsFile(f).predict(ITEMS)
    with pytest.raises(BenchmarkError, match=r"1 predictions for ids the benchmark does not have \(9\)"):
        PredictionsFile(f).predict(ITEMS[:1])
    assert PredictionsFile(f, allow_extra=True).predict(ITEMS[:1]) == ["a"]
    cases = [([{"id": "0", "prediction": "a"}, {"prediction": "b"}], "1 of 2 lines have an id"),
             ([{"id": "0", "prediction": "a"}, {"id": "0", "prediction": "b"}], ":2: id 0 appears twice"),
             ([{"id": "0", "prediction": None}], ":1: prediction must be text, got NoneType"),
             ([{"id": "0", "text": "a"}], ":1: needs exactly one of 'prediction' or 'response'"),
             ([], "no predictions")]
    for rows, message in cases:
        with pytest.raises(BenchmarkError, match=message):
            PredictionsFile(jsonl(tmp_path / "bad.jsonl", rows))


def test_callable_predictor_must_return_one_text_per_item():
    with pytest.raises(BenchmarkError, match="returned 1 predictions for 3 items"):
        CallablePredictor(lambda items: ["x"]).predict(ITEMS)
    with pytest.raises(BenchmarkError, match="prediction for item 0 is int"):
        CallablePredictor(lambda items: [1, "a", "b"]).predict(ITEMS)


def test_truncate_at_stop():
    assert truncate_at_stop("答えは3\n### Instruction: next", ("Instruction:", "Response")) == "答えは3\n### "
    assert truncate_at_stop("no stop", ("Response",)) == "no stop"
    assert truncate_at_stop("ResponseInstruction", ("Instruction", "Response")) == ""


def test_runner_with_a_callable_and_results_round_trip(tmp_path):
    spec = BENCHMARKS.get("mgsm-ja")
    pred = CallablePredictor(lambda items: [f"答えは{i.answer}です。" if int(i.id) % 2 else "わかりません" for i in items],
                             name="half/right", batch_size=4)
    result = evaluate(spec, pred, limit=10, progress=True)
    assert result.n == 10 and result.scores["acc"].value == 50.0 and result.primary == "acc_ja"
    assert result.settings["extraction"] == "robust" and result.settings["limit"] == 10
    path = write_result(result, tmp_path)
    assert path == tmp_path / "half_right" / "mgsm-ja.json"
    items = [json.loads(l) for l in (tmp_path / "half_right" / "mgsm-ja.items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == [str(i) for i in range(10)] and items[1]["correct"] is True
    back = read_result(path)
    assert back.scores == result.scores and back.model == "half/right"
    assert [r.benchmark for r in find_results([tmp_path])] == ["mgsm-ja"]
    (tmp_path / "other.json").write_text("{}")  # not a result: skipped in a folder, refused by name
    assert len(find_results([tmp_path])) == 1
    with pytest.raises(BenchmarkError, match="not a tsugiki benchmark result"):
        find_results([tmp_path / "other.json"])


def test_sakana_extraction_through_the_runner():
    pred = CallablePredictor(lambda items: ["1,000"] * len(items), name="m")
    out = evaluate("mgsm-ja", pred, limit=3, metric_options={"extraction": "sakana"})
    assert out.settings["extraction"] == "sakana" and out.items[0]["extracted"] == 0.0


def test_text_generator_on_a_tiny_lm(tiny_siblings):
    spec = BENCHMARKS.get("mgsm-ja")
    gen = text_generator(spec, tiny_siblings.base, max_new_tokens=6, batch_size=2, name="tiny", threads=1)
    first = gen.predict(ITEMS)
    assert len(first) == 3 and all(isinstance(t, str) for t in first)
    assert gen.predict(ITEMS) == first  # greedy: deterministic
    en = gen.for_prompt(BENCHMARKS.get("mgsm-en").prompt, ("Response",), 4)
    assert en.engine is gen.engine and en.max_new_tokens == 4 and gen.max_new_tokens == 6
    assert evaluate(spec, gen, limit=2).settings["generation"]["max_new_tokens"] == 6


def test_unloadable_model(tmp_path):
    with pytest.raises(BenchmarkError, match="cannot load causal LM"):
        text_generator(BENCHMARKS.get("mgsm-ja"), tmp_path)
    with pytest.raises(BenchmarkError, match="not a text-generation benchmark"):
        text_generator(BENCHMARKS.get("ja-vlm-wild"), tmp_path)
