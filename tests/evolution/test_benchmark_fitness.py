"""Benchmark-backed fitness (MGSM accuracy, Japanese ROUGE-L), fitness/test disjointness, and PS on the
language model inside a VLM, on tiny real checkpoints; each checked against an independent computation."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from tsugiki.benchmarks.rouge import rouge_ja
from tsugiki.errors import EvolutionError
from tsugiki.evolution import evolve, from_data, load_config, make_problem
from tsugiki.evolution.data import Pair, generate
from tsugiki.evolution.fitness import FITNESS, EvalContext
from tsugiki.evolution.sources import load_causal_lm, prepare_sources
from tsugiki.factory.lm import TinyLMSpec, build_siblings
from tsugiki.vlm.generate import GenerationSettings, VQAPredictor
from helpers import REPO

VLM_CONFIG = REPO / "configs" / "tiny-vlm-ps.yaml"



@pytest.fixture(scope="module")
def arithmetic_lm(tmp_path_factory):
    """variant_1 of a finetuned tiny set was trained on one-digit sums: it gets some of them right."""
    sib = build_siblings(tmp_path_factory.mktemp("ft"), n=2, spec=TinyLMSpec("llama"), kind="finetuned", steps=40)
    return load_causal_lm(str(sib.variants[1]))


def _seed_rule(text: str, answer: str) -> bool:
    """The seed's extraction written out independently: the last number in the response."""
    nums = re.findall(r"\d*\.?\d+", text.replace(",", ""))
    return bool(nums) and float(nums[-1]) == float(answer)


def test_mgsm_accuracy_equals_direct_greedy_generation(arithmetic_lm):
    model, tok = arithmetic_lm
    data = generate(["arithmetic"], "fitness", 16, 0)
    args = {"template": "{input}", "max_new_tokens": 3, "stop": ["\n"], "extraction": "sakana", "batch_size": 5}
    ctx = EvalContext({}, model=model, tokenizer=tok)
    got = FITNESS.get("mgsm_accuracy").fn(ctx, data, **args)
    correct = 0
    for p in data:  # one at a time, no padding, straight model.generate
        ids = tok(p.prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=3, do_sample=False, num_beams=1, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        correct += _seed_rule(text, p.answer)
    assert got == pytest.approx(correct / len(data))
    assert 0 < got <= 1  # the arithmetic sibling solves some sums
    assert FITNESS.get("mgsm_accuracy").fn(EvalContext({}, model=model, tokenizer=tok), data, **args) == got
    robust = FITNESS.get("mgsm_accuracy").fn(EvalContext({}, model=model, tokenizer=tok), data[:4], max_new_tokens=4)
    assert 0 <= robust <= 1  # the seed's Japanese CoT prompt and stop strings


def test_mgsm_accuracy_bad_args(arithmetic_lm):
    model, tok = arithmetic_lm
    ctx = EvalContext({}, model=model, tokenizer=tok)
    with pytest.raises(EvolutionError, match="extraction"):
        FITNESS.get("mgsm_accuracy").fn(ctx, [Pair("1+1=", "2")], extraction="regex")
    with pytest.raises(EvolutionError, match="template"):
        FITNESS.get("mgsm_accuracy").fn(ctx, [Pair("1+1=", "2")], template="fr")


# ------------------------------------------------------------------------------ disjointness

_OVERLAP = """\
name: overlap
sources: {m: org/model}
space:
  kind: box
  params: {x: [0, 1]}
fitness:
  function: neg_sphere
  data:
    pairs:
      - {id: q1, question: "1+1=", answer: "2"}
      - {id: q2, question: "2+2=", answer: "4"}
test:
  data:
    pairs:
      - {id: %s, question: "%s", answer: "9"}
search: {generations: 1}
"""


@pytest.mark.parametrize("ident, question, how", [("q2", "4+5=", "id 'q2'"), ("t9", "1+1=", "text '1+1='")])
def test_fitness_items_overlapping_the_test_set_are_refused_with_file_and_line(tmp_path, ident, question, how):
    cfg = load_config(_OVERLAP % (ident, question), source_name="cfg.yaml")
    with pytest.raises(EvolutionError) as e:
        make_problem(cfg, tmp_path)
    msg = str(e.value)
    assert msg.startswith("cfg.yaml:9: fitness.data: ") and "test data" in msg and how in msg


def test_disjoint_sets_pass_and_validation_is_checked_against_test(tmp_path):
    make_problem(load_config(_OVERLAP % ("t9", "4+5="), source_name="cfg.yaml"), tmp_path)
    data = {"space": {"kind": "box", "params": {"x": [0, 1]}}, "fitness": {"function": "neg_sphere"},
            "validation": {"data": {"generator": "arithmetic", "split": "validation"}},
            "test": {"data": {"generator": "arithmetic", "split": "validation", "n": 3}},
            "search": {"generations": 1}}
    with pytest.raises(EvolutionError, match="validation data shares 3 item"):
        make_problem(from_data(data), tmp_path)
    data["test"]["data"]["split"] = "test"
    make_problem(from_data(data), tmp_path)


def test_fitness_items_copied_from_the_mgsm_test_set_are_refused(tmp_path):
    from tsugiki.benchmarks.loaders import load_mgsm

    leaked = load_mgsm("ja")[17]
    data = {"space": {"kind": "box", "params": {"x": [0, 1]}}, "search": {"generations": 1},
            "fitness": {"function": "mgsm_accuracy", "data": {"pairs": [{"id": "own-1", "question": "1+1は？", "answer": "2"},
                                                                       {"question": leaked.question, "answer": str(leaked.answer)}]}},
            "test": {"data": {"mgsm": "ja"}}}
    with pytest.raises(EvolutionError, match="fitness data shares 1 item.*test data"):
        make_problem(from_data(data), tmp_path)
    data["fitness"]["data"]["pairs"].pop()
    make_problem(from_data(data), tmp_path)  # ids are namespaced (mgsm_ja/17): no false overlap by id


def test_vqa_items_are_compared_by_question_and_image():
    from tsugiki.evolution.data import check_disjoint

    fit, test = generate(["vqa_shapes"], "fitness", None, 0), generate(["vqa_shapes"], "test", None, 0)
    check_disjoint(fit, test)  # same questions, other images: disjoint
    assert {p.prompt for p in fit} == {p.prompt for p in test}
    clash = Pair(fit[0].prompt, "x", "other-id", fit[0].image.copy())
    with pytest.raises(EvolutionError, match="by id or text"):
        check_disjoint(fit, test + [clash], "test")


# ------------------------------------------------------------------------------ VLM

@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("vlm_run")
    cfg = load_config(VLM_CONFIG).with_search(generations=2)
    prepare_sources(cfg, run)
    return cfg, run


def test_rouge_l_ja_fitness_equals_rouge_of_independent_predictions(vlm_run):
    cfg, run = vlm_run
    vlm = run / "models" / "llava"
    data = generate(["vqa_shapes"], "fitness", 4, 0)
    settings = GenerationSettings(num_beams=1, repetition_penalty=1.0, max_new_tokens=8, do_sample=False)
    pred = VQAPredictor.from_pretrained(vlm, template="llava-mistral", settings=settings, batch_size=1, progress=False)
    answers = pred.predict([p.load_image() for p in data], [p.prompt for p in data])
    assert all(answers)
    fn = FITNESS.get("rougeL_ja").fn
    ctx = lambda: EvalContext({}, model=pred.model, tokenizer=pred.processor.tokenizer,  # noqa: E731
                              extra={"processor": pred.processor})
    args = {"template": "llava-mistral", "max_new_tokens": 8, "batch_size": 3}
    own = [Pair(p.prompt, a, p.id, p.image) for p, a in zip(data, answers)]
    assert fn(ctx(), own, language_filter=False, **args) == pytest.approx(1.0)  # references = its own answers
    got = fn(ctx(), data, **args)
    assert got == pytest.approx(rouge_ja([p.answer for p in data], answers).rougeL_ja / 100)
    assert 0 <= got <= 1 and fn(ctx(), data, **args) == got
    # stop: each answer cut before the first stop string it holds, by hand
    stop = [answers[0][1:3], "\n"]
    cut = [a[:min([i for s in stop if (i := a.find(s)) >= 0], default=len(a))].strip() for a in answers]
    assert cut[0] == answers[0][:1].strip()
    assert fn(ctx(), data, stop=stop, **args) == pytest.approx(rouge_ja([p.answer for p in data], cut).rougeL_ja / 100)
    cut_refs = [Pair(p.prompt, a, p.id, p.image) for p, a in zip(data, cut)]
    assert fn(ctx(), cut_refs, language_filter=False, stop=stop, **args) == pytest.approx(1.0)
    with pytest.raises(EvolutionError, match="processor"):
        fn(EvalContext({}, model=pred.model), data, **args)


def _vision(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items() if "language_model" not in k and not k.startswith("lm_head")}


def test_vlm_ps_merges_the_language_model_only_and_exports_a_grafted_vlm(vlm_run, tmp_path):
    cfg, run = vlm_run
    problem = make_problem(cfg, run)
    assert problem.vlm == "llava" and problem.space.dim == 4
    a = problem.space.decode(problem.space.x0())
    b = {k: (0.9 if k.endswith("weight") else 0.4) for k in a}
    problem.evaluate(a)
    vision0 = _vision(problem.model.state_dict())
    assert vision0 and any("vision_tower" in k for k in vision0) and any("projector" in k for k in vision0)
    lm_a = {k: v.clone() for k, v in problem.model.state_dict().items() if k not in vision0}
    problem.evaluate(b)
    state = problem.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in vision0.items())  # vision side untouched across candidates
    assert any(not torch.equal(state[k], v) for k, v in lm_a.items())  # language model re-merged
    source = LlavaForConditionalGeneration.from_pretrained(run / "models" / "llava").state_dict()
    assert all(torch.equal(source[k], v) for k, v in vision0.items())  # as on disk

    out = problem.export(b, tmp_path / "best")  # a grafted LLaVA dir that loads
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    exported = model.state_dict()
    assert all(torch.equal(exported[k], state[k]) for k in state)  # disk merge == in-memory candidate
    assert (out / "processor_config.json").exists() or (out / "preprocessor_config.json").exists()


def test_tiny_vlm_ps_config_runs_end_to_end(vlm_run, tmp_path):
    cfg, run = vlm_run
    result = evolve(cfg, run)
    assert result.evaluations == 2 * cfg.search["population"] and result.failures == 0
    assert result.best is not None and result.best["validation"] is not None
    assert (run / "best.yaml").read_text().count("dare_ties") == 1
