"""The evaluation engines (tsugiki.engines) against independent truth: the ``hf`` engine's greedy loop (rows
leave the batch) against transformers' own ``generate(stop_strings=...)``; the ``vllm`` engine (the real vLLM
CPU build, not a mock) against the ``hf`` engine: the same greedy texts, teacher-forced log-probs within 1e-4
in float32; a swapped-in model equal to a fresh engine on its dir, and the base restored by swapping it back."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from helpers import vllm_or_skip
from tsugiki.engines import ENGINES, EngineError, EngineOptions, fastest_available, open_engine
from tsugiki.engines.hf import truncate_at_stop
from tsugiki.factory import TinyLMSpec, build_siblings
from tsugiki.tokenizer_cache import load_tokenizer

PROMPTS = ["3と4を足すと", "雪は何色", "a b", "日本の首都は", "こんにちは、", "x"]
STOP = ["。", "\n"]
PAIRS = [("問題: 3 + 4 =", " 7。答えは 7 です。"), ("雪は", "白い"), ("a b", " c d e")]


@pytest.fixture(scope="module")
def llama_siblings(tmp_path_factory):
    """Tiny llama siblings with a head size vLLM's CPU attention takes (64), fine-tuned so texts differ."""
    spec = TinyLMSpec("llama", hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256,
                      max_position_embeddings=512, num_layers=2)
    return build_siblings(tmp_path_factory.mktemp("engine_llama"), n=1, spec=spec, kind="finetuned", steps=30)


def transformers_generate(model_dir, prompts, stop, max_new_tokens, batch_size):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        enc = tok(prompts[start:start + batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, stop_strings=stop or None,
                                 tokenizer=tok, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [truncate_at_stop(t, stop) for t in texts]
    return out


@pytest.mark.parametrize("which", ["tiny_gemma", "llama_siblings"])
def test_hf_engine_equals_transformers_generate(which, request):
    model_dir = request.getfixturevalue(which).base
    engine = open_engine("hf", str(model_dir), EngineOptions(batch_size=4))
    got = engine.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    assert got == transformers_generate(model_dir, PROMPTS, STOP, 24, 4)
    assert len(set(got)) > 1  # not one degenerate text for every prompt
    # without stop strings every row runs to the limit or EOS
    assert engine.generate(PROMPTS[:3], max_new_tokens=8) == transformers_generate(model_dir, PROMPTS[:3], [], 8, 4)


def test_hf_engine_answer_logprobs_by_hand(tiny_gemma):
    """Log-probs at the answer positions equal a plain full forward's log-softmax, token by token."""
    from transformers import AutoModelForCausalLM

    engine = open_engine("hf", str(tiny_gemma.base), EngineOptions())
    tok = load_tokenizer(tiny_gemma.base)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gemma.base)).eval()
    for (prompt, answer), (lp, hit) in zip(PAIRS, engine.answer_logprobs(PAIRS)):
        p = tok(prompt)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + a])).logits[0].float()
        want = torch.log_softmax(logits[len(p) - 1:-1], -1)
        assert torch.allclose(lp, want[torch.arange(len(a)), torch.tensor(a)], atol=1e-5)
        assert hit.tolist() == (want.argmax(-1) == torch.tensor(a)).tolist()


def test_hf_engine_swap_and_bad_weights(tiny_gemma):
    engine = open_engine("hf", str(tiny_gemma.base), EngineOptions())
    base = engine.generate(PROMPTS, stop=STOP, max_new_tokens=12)
    engine.load_weights(load_file(str(tiny_gemma.variants[0] / "model.safetensors")).items())
    assert engine.generate(PROMPTS, stop=STOP, max_new_tokens=12) == \
        open_engine("hf", str(tiny_gemma.variants[0])).generate(PROMPTS, stop=STOP, max_new_tokens=12)
    with pytest.raises(EngineError, match="shape"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])
    engine.load_weights(load_file(str(tiny_gemma.base / "model.safetensors")).items())
    assert engine.generate(PROMPTS, stop=STOP, max_new_tokens=12) == base


def test_unknown_engine_is_one_line():
    with pytest.raises(EngineError, match="did you mean 'vllm'"):
        open_engine("vlm", "x")
    assert fastest_available() in ENGINES.names()


# ---------------------------------------------------------------------------------------------- vLLM
@pytest.fixture
def vllm_gemma(tiny_gemma):  # one vLLM engine per process at a time: each test starts and closes its own
    vllm_or_skip()
    engine = open_engine("vllm", str(tiny_gemma.base), EngineOptions(dtype="float32", max_model_len=256, kv_cache_gib=1))
    yield engine
    engine.close()


def test_vllm_equals_hf_on_tiny_gemma(vllm_gemma, tiny_gemma):
    hf = open_engine("hf", str(tiny_gemma.base), EngineOptions(batch_size=3))
    assert vllm_gemma.generate(PROMPTS, stop=STOP, max_new_tokens=24) == hf.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    for (a, ha), (b, hb) in zip(hf.answer_logprobs(PAIRS), vllm_gemma.answer_logprobs(PAIRS)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4), (a, b)
        assert ha.tolist() == hb.tolist()
    assert vllm_gemma.describe()["engine"] == "vllm" and vllm_gemma.describe()["dtype"] == "float32"


def test_vllm_swap_equals_fresh_engine_and_swaps_back(vllm_gemma, tiny_gemma):
    """A swap, then the base swapped back. A fresh engine on the variant's dir is stood in for by the hf
    engine on it, which the test above shows equal to a fresh vLLM engine on the same kind of dir; the
    llama test below starts a second vLLM engine for the direct comparison."""
    base = vllm_gemma.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    variant = tiny_gemma.variants[0]
    vllm_gemma.load_weights(load_file(str(variant / "model.safetensors")).items())
    swapped = vllm_gemma.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    assert swapped == open_engine("hf", str(variant)).generate(PROMPTS, stop=STOP, max_new_tokens=24)
    assert swapped != base
    vllm_gemma.load_weights(load_file(str(tiny_gemma.base / "model.safetensors")).items())
    assert vllm_gemma.generate(PROMPTS, stop=STOP, max_new_tokens=24) == base


def test_asked_narrowing_filter_by_hand():
    """vLLM's per-tensor dtype warnings: float32 into bfloat16 / float16 (what ``auto`` asks for) are dropped;
    any other record passes."""
    import logging

    from tsugiki.engines.vllm import _asked_narrowing

    def record(msg, *args):
        return logging.LogRecord("vllm.model_executor.models.utils", logging.WARNING, "utils.py", 1, msg, args, None)

    fmt = "Attempted to load weight %s with dtype %s into parameter with dtype %s"
    assert not _asked_narrowing(record(fmt, "layers.0.o_proj.weight", torch.float32, torch.bfloat16))
    assert not _asked_narrowing(record(fmt, "norm.weight", torch.float32, torch.float16))
    assert _asked_narrowing(record(fmt, "norm.weight", torch.bfloat16, torch.float16))  # not a narrowing we asked for
    assert _asked_narrowing(record("Something else %s", "x"))


def test_partial_swap_notice_filter_by_hand():
    """vLLM's notices that a swap left tensors out (what load_model does on purpose) are dropped, by logger."""
    import logging

    from tsugiki.engines.vllm import _partial_swap_notice

    def record(logger, msg, *args):
        return logging.LogRecord(logger, logging.WARNING, "x.py", 1, msg, args, None)

    inplace, layerwise = "vllm.model_executor.model_loader.reload.inplace", "vllm.model_executor.model_loader.reload.layerwise"
    assert not _partial_swap_notice(record(inplace, "Following weights were not loaded from checkpoint: %s", {"a"}))
    assert not _partial_swap_notice(record(layerwise, "%s: Failed to load weights", "GemmaRMSNorm"))
    assert _partial_swap_notice(record(layerwise, "Something else"))
    assert _partial_swap_notice(record("vllm.other", "%s: Failed to load weights", "GemmaRMSNorm"))


def test_vllm_bfloat16_swap_prints_no_per_tensor_warnings(tiny_gemma, capfd):
    """A float32 checkpoint in the default-dtype (bfloat16) engine: start and swap print none of vLLM's
    per-tensor dtype warnings (one per tensor per swap, they flooded the demo's terminal)."""
    vllm_or_skip()
    capfd.readouterr()
    engine = open_engine("vllm", str(tiny_gemma.base), EngineOptions(max_model_len=256, kv_cache_gib=1))
    try:
        assert engine.describe()["dtype"] == "bfloat16"
        engine.load_weights(load_file(str(tiny_gemma.variants[0] / "model.safetensors")).items())
        assert engine.generate(PROMPTS[:2], stop=STOP, max_new_tokens=4)
    finally:
        engine.close()
    out = capfd.readouterr()
    assert "Attempted to load weight" not in out.out + out.err


def test_lm_eval_tasks_score_alike_on_both_engines(vllm_gemma, tiny_gemma, tmp_path):
    """The lm-eval wrapper serves both engines: the sample multiple-choice and generation tasks give the same
    per-doc answers on vLLM as on hf (float32; log-likelihoods within 1e-3, the same greedy text)."""
    pytest.importorskip("lm_eval")
    from tsugiki.benchmarks import harness
    from tsugiki.benchmarks.samples import SAMPLE_TASKS, write_sample_tasks

    include = str(write_sample_tasks(tmp_path))
    hf = open_engine("hf", str(tiny_gemma.base))
    for task in SAMPLE_TASKS:
        a = harness.evaluate_tasks(hf, [task], include_path=include)["samples"][task]
        b = harness.evaluate_tasks(vllm_gemma, [task], include_path=include)["samples"][task]
        for x, y in zip(a, b, strict=True):
            if task.endswith("gen"):
                assert x["filtered_resps"] == y["filtered_resps"]
            else:
                for (lx, gx), (ly, gy) in zip(x["filtered_resps"], y["filtered_resps"], strict=True):
                    assert lx == pytest.approx(ly, abs=1e-3) and gx == gy


def test_vllm_interrupted_generation_leaves_nothing_behind(vllm_gemma, monkeypatch):
    """A candidate's timeout (an exception raised between engine steps) interrupts a batch; the requests it left
    are aborted, so the next call gets its own outputs, not theirs."""
    from tsugiki.evolution.backends import CandidateTimeout

    expected = vllm_gemma.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    core = vllm_gemma.llm.llm_engine
    real, calls = core.step, []

    def step():
        calls.append(1)
        if len(calls) == 3:
            raise CandidateTimeout("timed out after 1 s")
        return real()

    monkeypatch.setattr(core, "step", step)
    with pytest.raises(CandidateTimeout):
        vllm_gemma.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    monkeypatch.undo()
    assert len(calls) == 3 and not core.has_unfinished_requests()
    assert vllm_gemma.generate(PROMPTS[::-1], stop=STOP, max_new_tokens=24) == expected[::-1]


def test_vllm_failed_swap_is_an_engine_error(vllm_gemma, tiny_gemma):
    """Refused before vLLM sees it (shape, name), and a swap that fails inside vLLM (here: a tensor of the
    wrong shape, with the check turned off) restarts the engine, so the next swap works."""
    with pytest.raises(EngineError, match="does not fit"):
        vllm_gemma.load_weights([("model.norm.weight", torch.zeros(3))])
    with pytest.raises(EngineError, match="no tensor 'model.extra'"):
        vllm_gemma.load_weights([("model.extra", torch.zeros(3))])
    vllm_gemma.shapes, shapes = None, vllm_gemma.shapes
    try:
        with pytest.raises(EngineError, match="could not take the weights.*restarted"):
            vllm_gemma.load_weights([("model.norm.weight", torch.zeros(3))])
    finally:
        vllm_gemma.shapes = shapes
    vllm_gemma.load_weights(load_file(str(tiny_gemma.base / "model.safetensors")).items())  # usable again
    assert vllm_gemma.generate(PROMPTS[:2], stop=STOP, max_new_tokens=8) == \
        open_engine("hf", str(tiny_gemma.base)).generate(PROMPTS[:2], stop=STOP, max_new_tokens=8)


def test_vllm_in_memory_merge_equals_fresh_engine_on_the_merged_dir(llama_siblings, tmp_path):
    """A candidate merged in memory (InMemoryMerger) goes in with load_model, no file written, and generates
    what a fresh vLLM engine on the same recipe merged to disk generates."""
    vllm_or_skip()
    from transformers import AutoModelForCausalLM

    from tsugiki.merging.execute import MergeOptions
    from tsugiki.merging.inmemory import InMemoryMerger
    from tsugiki.merging.recipe import Recipe
    from tsugiki.merging.to_disk import merge_to_disk

    base, variant = llama_siblings.base, llama_siblings.variants[0]
    recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                               "models": [{"model": str(variant), "parameters": {"weight": 0.7}}]})
    merged_dir = merge_to_disk(recipe, tmp_path / "merged", MergeOptions(progress=False)).out
    options = EngineOptions(dtype="float32", max_model_len=256, kv_cache_gib=1)
    engine = open_engine("vllm", str(base), options)
    try:
        before = engine.generate(PROMPTS, stop=STOP, max_new_tokens=24)
        assert before == open_engine("hf", str(base)).generate(PROMPTS, stop=STOP, max_new_tokens=24)
        model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
        InMemoryMerger(model, {str(base): str(base), str(variant): str(variant)}).apply(recipe)
        engine.load_model(model)
        swapped = engine.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    finally:
        engine.close()
    assert swapped != before
    fresh = open_engine("vllm", str(merged_dir), options)
    try:
        assert swapped == fresh.generate(PROMPTS, stop=STOP, max_new_tokens=24)
    finally:
        fresh.close()


def test_vllm_load_model_sends_only_what_the_merge_rewrote(tiny_gemma, tmp_path, capfd):
    """Candidates merged in place go in with load_model; after the first, only the tensors the merge wrote are
    sent (not the embedding and norms both sources share, as LoRA fine-tunes do), vLLM keeps the others
    without a warning, and the engine generates what the hf engine (equal to a fresh vLLM engine: tests above)
    generates on the same candidates merged to disk."""
    vllm_or_skip()
    from helpers import copy_model
    from transformers import AutoModelForCausalLM

    from tsugiki.merging.execute import MergeOptions
    from tsugiki.merging.inmemory import InMemoryMerger
    from tsugiki.merging.recipe import Recipe
    from tsugiki.merging.to_disk import merge_to_disk

    base, embed = tiny_gemma.base, "model.embed_tokens.weight"
    base_tensors = load_file(str(base / "model.safetensors"))
    kept = [n for n in base_tensors if n == embed or "norm" in n]  # as a LoRA fine-tune leaves them
    tuned = copy_model(tiny_gemma.variants[0], tmp_path / "tuned", lambda t: {**t, **{n: base_tensors[n].clone() for n in kept}})
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    merger = InMemoryMerger(model, {str(base): str(base), str(tuned): str(tuned)})
    engine = open_engine("vllm", str(base), EngineOptions(dtype="float32", max_model_len=256, kv_cache_gib=1))
    sent, load_weights = [], engine.load_weights

    def recording(weights):
        weights = list(weights)
        sent.append({name for name, _ in weights})
        load_weights(weights)

    engine.load_weights = recording
    texts = []
    try:
        for i, weight in enumerate((0.8, 0.3)):
            recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
                                       "models": [{"model": str(tuned), "parameters": {"weight": weight}}]})
            merger.apply(recipe)
            engine.load_model(model)
            texts.append(engine.generate(PROMPTS, stop=STOP, max_new_tokens=24))
            on_disk = merge_to_disk(recipe, tmp_path / f"merged_{i}", MergeOptions(progress=False)).out
            assert texts[-1] == open_engine("hf", str(on_disk)).generate(PROMPTS, stop=STOP, max_new_tokens=24)
        engine.load_model(model)  # nothing written since: nothing sent
    finally:
        engine.close()
    out = capfd.readouterr()
    assert "Failed to load weights" not in out.out + out.err and "were not loaded" not in out.out + out.err
    assert texts[0] != texts[1] and len(sent) == 2
    assert set(kept) <= sent[0] and not set(kept) & sent[1]
    assert {n for n in sent[0] if ".layers." in n} - set(kept) == {n for n in sent[1] if ".layers." in n} != set()


def test_engines_agree_on_gemma_3_270m(real_base):
    """The real model, float32: greedy texts identical for most prompts (a near-tie may flip a token in
    another float order), and teacher-forced log-probs of the hf engine's own continuations equal within
    1e-3 for every prompt."""
    vllm_or_skip()
    prompts = ["問題: 3 + 4 = ?\n答え:", "日本の首都は", "The capital of France is", "雪は何色ですか。", "1, 2, 3, 4,",
               "こんにちは、私の名前は"]
    hf = open_engine("hf", str(real_base), EngineOptions(batch_size=6))
    want = hf.generate(prompts, stop=["\n"], max_new_tokens=20)
    engine = open_engine("vllm", str(real_base), EngineOptions(dtype="float32", max_model_len=256, kv_cache_gib=1))
    try:
        got = engine.generate(prompts, stop=["\n"], max_new_tokens=20)
        pairs = [(p, w) for p, w in zip(prompts, want) if w]
        theirs = engine.answer_logprobs(pairs)
    finally:
        engine.close()
    assert sum(a == b for a, b in zip(got, want)) >= len(prompts) - 1, (got, want)
    for (lp_hf, _), (lp_vllm, _) in zip(hf.answer_logprobs(pairs), theirs):
        assert torch.allclose(lp_hf, lp_vllm, atol=1e-3), (lp_hf, lp_vllm)


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_resident_engine_swaps_same_shaped_models_and_restarts_for_others(name, tiny_gemma, llama_siblings, tmp_path):
    """Models with the running one's config, tokenizer and shapes are swapped in from their files (equal to a
    fresh engine on each dir), also when one config leaves transformers' defaults out and another spells them
    (as the GGUF import and peft's merged models differ); another architecture, or a config that differs, restarts the engine."""
    import json
    import shutil

    from tsugiki.engines.resident import ResidentEngine

    if name == "vllm":
        vllm_or_skip()
    spelled = shutil.copytree(tiny_gemma.variants[1], tmp_path / "spelled")
    cfg = json.loads((spelled / "config.json").read_text())
    assert "return_dict" not in cfg and "id2label" not in cfg
    (spelled / "config.json").write_text(json.dumps({
        **cfg, "return_dict": True, "output_attentions": False, "chunk_size_feed_forward": 0, "is_encoder_decoder": False,
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}))
    other = shutil.copytree(tiny_gemma.variants[0], tmp_path / "other")
    (other / "config.json").write_text(json.dumps({**cfg, "rope_theta": cfg.get("rope_theta", 10000.0) * 2}))
    resident = ResidentEngine(name, EngineOptions(dtype="float32", max_model_len=128, kv_cache_gib=1))
    try:
        got = {}
        for model_dir in (tiny_gemma.base, tiny_gemma.variants[0], spelled, tiny_gemma.base, llama_siblings.base):
            got[model_dir] = resident.load(model_dir).generate(PROMPTS, stop=STOP, max_new_tokens=16)
        assert (resident.starts, resident.swaps) == (2, 3)
        resident.load(tiny_gemma.base)
        resident.load(other)
        assert (resident.starts, resident.swaps) == (4, 3)
    finally:
        resident.close()
    for model_dir, texts in got.items():
        assert texts == open_engine("hf", str(model_dir)).generate(PROMPTS, stop=STOP, max_new_tokens=16), model_dir
