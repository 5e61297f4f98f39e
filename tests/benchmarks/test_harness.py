"""lm-evaluation-harness tasks through tsugiki (``tsugiki eval lm-eval:TASK``): the same numbers as lm-eval's own
``simple_evaluate`` with its ``hf`` model on the same model dir, for a multiple-choice, a generation and a rolling
log-likelihood task (local task YAMLs over local JSONL, never the hub)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("lm_eval")

from helpers import write_lm_eval_task  # noqa: E402
from tsugiki.benchmarks import harness  # noqa: E402
from tsugiki.benchmarks.results import read_result  # noqa: E402
from tsugiki.benchmarks.samples import write_sample_tasks  # noqa: E402
from tsugiki.cli import main  # noqa: E402
from tsugiki.errors import BenchmarkError  # noqa: E402

PROMPTS = [f"質問: {a}たす{b}は？\n答え:" for a, b in [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (5, 3)]]


@pytest.fixture(scope="module")
def tasks(tiny_siblings, tmp_path_factory):
    """A generation task whose targets are the model's own greedy answers on every other item (so exact_match is
    1/2 only if both harnesses generate alike), a rolling-loglikelihood task, and the sample tasks."""
    from tsugiki.engines import EngineOptions, open_engine

    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    write_sample_tasks(folder)
    engine = open_engine("hf", tiny_siblings.base, EngineOptions(dtype="float32"))
    answers = engine.generate(PROMPTS, stop=["\n"], max_new_tokens=6)
    rows = [{"question": p, "answer": a if i % 2 == 0 else a + "x"} for i, (p, a) in enumerate(zip(PROMPTS, answers))]
    write_lm_eval_task(folder, "own-answers", rows, version=2.0, spec={
        "output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "answer",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]})
    write_lm_eval_task(folder, "rolling", [{"text": p + " 日本語の文です。"} for p in PROMPTS], version=2.0, spec={
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}]})
    return folder


def _reference(model_dir, task, folder):
    """lm-eval's own run: its hf model on the model dir."""
    import lm_eval

    return lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
                                   tasks=[task], task_manager=harness.task_manager(str(folder)), log_samples=True,
                                   device="cpu", batch_size=4, verbosity="ERROR")


@pytest.mark.parametrize("task", ["ja-sample-mc", "own-answers", "rolling"])
def test_task_through_tsugiki_equals_lm_evals_own_run(tiny_siblings, tasks, tmp_path, task):
    out = tmp_path / "results"
    assert main(["eval", f"lm-eval:{task}", "--model", f"tiny={tiny_siblings.base}", "--lm-eval-include", str(tasks),
                 "--results-dir", str(out), "--dtype", "float32", "-q"]) == 0
    result = read_result(out / "tiny" / f"lm-eval_{task}.json")
    ref = _reference(tiny_siblings.base, task, tasks)
    row = ref["results"][task]
    expected = {harness.score_name(k): v for k, v in row.items() if harness.score_name(k)}
    assert set(result.scores) == set(expected)
    for name, value in expected.items():
        assert result.scores[name].value == pytest.approx(value, rel=1e-5, abs=1e-6), name
        se = row[f"{name.partition(',')[0]}_stderr,none"]
        if isinstance(se, float):
            assert result.scores[name].high - result.scores[name].value == pytest.approx(1.96 * se, rel=1e-3)
    assert result.n == len(ref["samples"][task])
    assert result.version == ("1.0" if task.startswith("ja-") else "2.0")
    items = [json.loads(line) for line in (out / "tiny" / f"lm-eval_{task}.items.jsonl").read_text().splitlines()]
    for mine, theirs in zip(items, ref["samples"][task], strict=True):
        assert mine["id"] == theirs["doc_id"]
        if task == "own-answers":  # generation: the same text
            assert mine["prediction"] == list(theirs["filtered_resps"])
        elif task == "ja-sample-mc":  # one loglikelihood per choice, the same greedy flags
            for (lp, greedy), (ref_lp, ref_greedy) in zip(mine["prediction"], theirs["filtered_resps"], strict=True):
                assert lp == pytest.approx(ref_lp, abs=1e-4) and greedy == ref_greedy
    if task == "own-answers":
        assert result.scores["exact_match"].value == 0.5  # the model's own answers on every other item
    assert (out / "leaderboard.html").is_file()


def test_unknown_task_is_one_line_with_lm_evals_nearest_names(tiny_siblings, tasks, tmp_path, capsys):
    assert main(["eval", "lm-eval:ja-sample-m", "--model", str(tiny_siblings.base), "--lm-eval-include", str(tasks),
                 "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'ja-sample-m'" in err and "ja-sample-mc" in err
    assert not any(tmp_path.iterdir())  # nothing evaluated, nothing written


def test_sampling_task_is_refused(tiny_siblings, tasks, tmp_path):
    from tsugiki.engines import open_engine

    write_lm_eval_task(tmp_path, "sampled", [{"q": "a", "a": "b"}], {
        "output_type": "generate_until", "doc_to_text": "{{q}}", "doc_to_target": "a",
        "generation_kwargs": {"until": ["\n"], "do_sample": True, "temperature": 0.7},
        "metric_list": [{"metric": "exact_match"}]})
    harness.task_manager.cache_clear()
    with pytest.raises(BenchmarkError, match="asks for sampling"):
        harness.evaluate_tasks(open_engine("hf", tiny_siblings.base), ["sampled"], include_path=str(tmp_path))


def test_score_names_keep_lm_evals_keys():
    assert harness.score_name("acc,none") == "acc"
    assert harness.score_name("exact_match,strict-match") == "exact_match,strict-match"
    assert harness.score_name("acc_stderr,none") is None and harness.score_name("alias") is None
    with pytest.raises(BenchmarkError, match="name an lm-eval task"):
        harness.task_name("lm-eval:")


def test_rolling_matches_a_hand_computed_perplexity(tiny_siblings, tasks):
    """word_perplexity = exp(-sum loglik / words), the sum taken by hand from the engine's token scores."""
    from tsugiki.engines import open_engine

    engine = open_engine("hf", tiny_siblings.base)
    out = harness.evaluate_tasks(engine, ["rolling"], include_path=str(tasks))
    tok = engine.tokenizer
    total = words = 0.0
    for s in out["samples"]["rolling"]:
        text = s["doc"]["text"]
        ids = tok.encode(text)
        seq = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id] + ids
        (lp, _), = engine.sequence_logprobs([seq], [1])
        total += float(lp.sum())
        words += len(text.split())
    assert out["results"]["rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-5)


def test_lm_eval_runs_no_git_probe(tiny_siblings, tasks, tmp_path, monkeypatch, capfd):
    """lm-eval's own `git describe` of the working folder is skipped (outside a checkout it printed `fatal: not a
    git repository` on every call), and put back afterwards."""
    import lm_eval.evaluator as evaluator

    from tsugiki.engines import open_engine

    probe = evaluator.get_git_commit_hash
    monkeypatch.chdir(tmp_path)  # not a git checkout
    out = harness.evaluate_tasks(open_engine("hf", tiny_siblings.base), ["ja-sample-mc"], include_path=str(tasks))
    assert out["git_hash"] is None and evaluator.get_git_commit_hash is probe
    assert "fatal" not in capfd.readouterr().err
