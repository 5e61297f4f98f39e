"""PS evolution scored by the vllm engine (the real vLLM CPU build; tox installs it): the same search as with
the hf engine (the same candidates, fitness within 1e-4 in float32), a candidate whose swap fails is isolated
like any failing candidate, one engine per worker process, exact resume after SIGKILL, and the config's refusals."""

from __future__ import annotations

import json
import os

import pytest

from tsugiki.errors import EvolutionError
from tsugiki.evolution import evolve, from_data, make_problem
from tsugiki.evolution.backends import Task, evaluate_task
from tsugiki.evolution.rundir import RunDir

from helpers import vllm_or_skip


def ps_config(tmp_path, engine=None, generations=2, population=4):
    cfg = {
        "name": "ps-engine",
        # hidden 128 with 4 heads: head size 32, which vLLM's CPU attention takes (the default tiny llama's 8 it does not)
        "tiny_models": {"arch": "llama", "n": 2, "kind": "finetuned", "seed": 0, "steps": 20, "hidden_size": 128},
        "space": {"kind": "ps", "method": "dare_ties", "base_model": "base", "models": ["variant_0", "variant_1"],
                  "merge_seed": 0},
        "fitness": {"function": "answer_loglik",
                    "data": {"generator": ["arithmetic", "ja_sentences"], "split": "fitness", "n": 12, "seed": 0}},
        "search": {"seed": 0, "population": population, "generations": generations},
    }
    if engine is not None:
        cfg["engine"] = engine
    return from_data(cfg, base_dir=tmp_path)


def history(run):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in RunDir(run).read_jsonl("history.jsonl")]


VLLM32 = {"name": "vllm", "dtype": "float32", "max_model_len": 128, "kv_cache_gib": 1}


def assert_same_search(run_a, run_b, result_a, result_b, *, abs_tol):
    """The same 8 candidates in the same order, no errors, fitness within ``abs_tol``, the same best."""
    a, b = history(run_a), history(run_b)
    assert len(a) == len(b) == 8 and all(h["error"] is None for h in a + b)
    for x, y in zip(a, b):
        assert x["x"] == y["x"]
        assert y["fitness"] == pytest.approx(x["fitness"], abs=abs_tol)
    assert result_b.best["params"] == result_a.best["params"]


def test_vllm_run_equals_hf_run(tmp_path):
    vllm_or_skip()
    hf = evolve(ps_config(tmp_path), tmp_path / "hf", plots=False)
    vl = evolve(ps_config(tmp_path, VLLM32), tmp_path / "vllm", plots=False)
    assert_same_search(tmp_path / "hf", tmp_path / "vllm", hf, vl, abs_tol=1e-4)


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_vllm_in_workers_equals_the_serial_run(tmp_path, backend):
    """workers: 2 starts one engine in each worker (spawned process or Ray actor); the history is the serial run's."""
    vllm_or_skip()
    if backend == "ray":
        if not os.environ.get("TSUGIKI_TEST_RAY"):
            pytest.skip("starts a local Ray cluster; set TSUGIKI_TEST_RAY=1 to run")
        pytest.importorskip("ray")
    config = ps_config(tmp_path, VLLM32)
    serial = evolve(config, tmp_path / "serial", plots=False)
    pooled = evolve(config.with_search(workers=2, backend=backend), tmp_path / "pool", plots=False)
    assert_same_search(tmp_path / "serial", tmp_path / "pool", serial, pooled, abs_tol=1e-6)


def test_failed_swap_fails_only_its_candidate(tmp_path, monkeypatch):
    vllm_or_skip()
    config = ps_config(tmp_path, VLLM32)
    evolve(config.with_search(generations=1, population=2), tmp_path / "run", plots=False)  # builds the sources
    problem = make_problem(config, tmp_path / "run")
    x0 = tuple(problem.space.x0())
    first = evaluate_task(problem, Task(0, x0), timeout=None, threads=1)
    assert first.error is None
    engine = problem.engine
    real = engine.llm.collective_rpc
    calls = []

    def flaky(method, *args, **kwargs):
        if method == "reload_weights":
            calls.append(method)
            if len(calls) == 1:
                raise RuntimeError("simulated failure inside vLLM")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(engine.llm, "collective_rpc", flaky)
    failed = evaluate_task(problem, Task(1, x0), timeout=None, threads=1)
    assert failed.fitness is None and "could not take the weights" in failed.error and not failed.fatal
    assert problem.engine.llm is not engine.llm or problem.engine.llm.collective_rpc is not flaky  # restarted
    again = evaluate_task(problem, Task(2, x0), timeout=None, threads=1)
    problem.close()
    assert again.error is None and again.fitness == pytest.approx(first.fitness, abs=1e-6)


def test_vllm_run_resumes_exactly_after_sigkill(tmp_path):
    vllm_or_skip()
    from helpers import evolve_and_kill

    reference = evolve(ps_config(tmp_path, VLLM32, generations=3), tmp_path / "ref", plots=False)
    (tmp_path / "c.yaml").write_text(json.dumps({**ps_config(tmp_path, VLLM32, generations=3).data}))
    run = tmp_path / "run"
    assert evolve_and_kill([str(tmp_path / "c.yaml"), "-o", str(run)], run / "history.jsonl", 6), \
        "the run finished before it could be killed"
    resumed = evolve(None, run, plots=False)
    assert history(run) == history(tmp_path / "ref")
    assert resumed.best == reference.best


def test_engine_section_is_checked(tmp_path):
    with pytest.raises(EvolutionError, match="engine.name.*'hf' or 'vllm'"):
        ps_config(tmp_path, {"name": "vlm"})
    with pytest.raises(EvolutionError, match="unknown key 'dtpye'"):
        ps_config(tmp_path, {"name": "vllm", "dtpye": "float32"})
    plain = ps_config(tmp_path)
    assert "engine" not in plain.data  # configs without it keep their data and fingerprint
    assert ps_config(tmp_path, {"name": "hf"}).fingerprint() != plain.fingerprint()


def test_dfs_space_refuses_the_vllm_engine(tmp_path):
    cfg = {
        "name": "dfs-engine",
        "tiny_models": {"arch": "llama", "n": 1, "kind": "finetuned", "seed": 0, "steps": 2},
        "space": {"kind": "dfs", "models": ["base", "variant_0"], "repeats": 1},
        "fitness": {"function": "answer_loglik", "data": {"generator": "arithmetic", "split": "fitness", "n": 4}},
        "search": {"generations": 1, "population": 2},
        "engine": {"name": "vllm"},
    }
    with pytest.raises(EvolutionError, match="engine 'vllm' cannot score a dfs space"):
        evolve(from_data(cfg, base_dir=tmp_path), tmp_path / "run", plots=False)


def test_exact_match_against_constructed_answers(tiny_gemma):
    """Answers built from transformers' own greedy text: the continuation up to a character that first occurs
    at position k, that character as the stop string. The true answer matches, a changed one does not, and
    the vllm engine scores the same."""
    from transformers import AutoModelForCausalLM

    from tsugiki.engines import EngineOptions, open_engine
    from tsugiki.evolution.data import Pair
    from tsugiki.evolution.fitness import FITNESS, EvalContext
    from tsugiki.tokenizer_cache import load_tokenizer

    tok = load_tokenizer(tiny_gemma.base)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma.base)).eval()
    pairs, stops = [], []
    for prompt in ["3と4を足すと", "雪は何色", "日本の首都は", "こんにちは、"]:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        k = next(i for i in range(3, len(text)) if text[i] not in text[:i] and not text[i].isspace())
        pairs += [Pair(prompt, text[:k + 1]), Pair(prompt, text[:k] + "X" + text[k])]
        stops.append(text[k])
    spec = FITNESS.get("exact_match")
    ctx = EvalContext({}, model=model, tokenizer=tok)
    want = [1.0, 0.0]
    for i, stop in enumerate(stops):
        assert spec.items(ctx, pairs[2 * i:2 * i + 2], stop=[stop], max_new_tokens=16) == want
    if ENGINES_VLLM():
        engine = open_engine("vllm", str(tiny_gemma.base), EngineOptions(dtype="float32", max_model_len=128,
                                                                         kv_cache_gib=1))
        try:
            vctx = EvalContext({}, engine=engine)
            for i, stop in enumerate(stops):
                assert spec.items(vctx, pairs[2 * i:2 * i + 2], stop=[stop], max_new_tokens=16) == want
        finally:
            engine.close()


def ENGINES_VLLM() -> bool:
    from tsugiki.engines import ENGINES

    try:
        vllm_or_skip()
    except pytest.skip.Exception:
        return False
    return ENGINES.get("vllm").available()


FREED_SCRIPT = """
import gc, sys, weakref
from pathlib import Path

import yaml

from tsugiki.evolution import from_data, make_problem
from tsugiki.evolution.sources import prepare_sources

work = Path(sys.argv[1])
config = from_data(yaml.safe_load((work / "config.yaml").read_text()), base_dir=work)
prepare_sources(config, work / "run")
assert "vllm" not in sys.modules  # imported first by the problem's setup, as in a demo run
problem = make_problem(config, work / "run")
problem.evaluate(problem.space.decode(problem.space.x0()))
refs = [weakref.ref(problem), weakref.ref(problem.model), weakref.ref(problem.merger)]
problem.close()
del problem
gc.collect()
print("alive:", sum(r() is not None for r in refs))
"""


def test_a_closed_vllm_problem_is_freed(tmp_path):
    """vLLM keeps an exception it caught while importing (torchcodec's, here) in a module global, with every frame
    then on the stack: imported from inside a problem's setup, the problem, its model and its sources stayed in
    memory after the search (4 GB per PS search on Gemma 3 270M). Run in a fresh process, where vLLM is not yet
    imported: after close, nothing of the problem is left."""
    import subprocess
    import sys

    import yaml

    vllm_or_skip()
    data = ps_config(tmp_path, VLLM32, generations=1, population=2).to_yaml()
    (tmp_path / "config.yaml").write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-c", FREED_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "alive: 0" in proc.stdout, proc.stdout[-2000:]
