"""The demo's LM data and siblings: word problems whose splits never meet, LoRA adapters that train and
materialise the same way every time, and materialised weights equal to W + (alpha / r) B A."""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import replace

import pytest
import torch
from helpers import weights

from tsugiki.demo.lm import siblings as S
from tsugiki.demo.lm import word_problems as wp


# ----------------------------------------------------------------------------- word problems
def test_values_and_worked_answers_by_hand():
    p = wp.Problem("add_sub", 7, 4, 2)
    assert p.value == 9 and p.en_answer() == " 7 + 4 = 11, 11 - 2 = 9. The answer is 9."
    assert p.ja_answer() == " 7 + 4 = 11、11 - 2 = 9。答えは 9 です。"
    q = wp.Problem("mul_add", 5, 3, 4)  # 4 bags of 5, and 3 more
    assert q.value == 23 and q.en_answer() == " 4 × 5 = 20, 20 + 3 = 23. The answer is 23."
    assert wp.problem_of("wp_ja/test/mul_add/5/3/4") == q


def test_number_splits_partition_the_problems_and_never_meet():
    parts = {s: {p.key for p in wp.problems(s)} for s in wp.SPLITS}
    assert sum(map(len, parts.values())) == len(wp.all_problems())
    for a in wp.SPLITS:
        for b in wp.SPLITS:
            assert a == b or not parts[a] & parts[b], (a, b)
    # the MATH sibling's corpus uses train numbers only, and its numbers appear in the question
    for prompt, answer in wp.math_corpus(200, seed=2):
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:")
        assert answer.endswith(".") and "The answer is" in answer


def test_target_items_use_their_split_numbers_and_wording():
    seen = {}
    for split in ("fitness", "validation", "test"):
        items = wp.target_items(split)
        assert items == wp.target_items(split)  # deterministic
        keys = {p.id.split("/", 2)[2] for p in items}
        assert keys == {p.key for p in wp.problems(split)}
        for p in items[:50]:
            prob = wp.problem_of(p.id)
            assert p.answer == str(prob.value) and str(prob.a) in p.prompt and str(prob.b) in p.prompt
        seen[split] = {p.prompt for p in items}
    # wording: no Japanese template is shared between splits
    for kind, by_split in wp.JA_TEMPLATES.items():
        flat = [t for ts in by_split.values() for t in ts]
        assert len(flat) == len(set(flat)), kind
    with pytest.raises(ValueError, match="train split"):
        wp.target_items("train")


def test_ja_corpus_never_holds_a_word_problem():
    import re

    for prompt, answer in wp.ja_corpus(2000, seed=1):
        assert prompt.startswith("問題: ") and prompt.endswith("\n答え:") and answer.startswith(" ")
        assert len(re.findall(r"\d+", prompt)) <= 2  # a word problem has three operands
        assert "、" not in answer  # one-step sums only: no second step


# ----------------------------------------------------------------------------- adapters
TINY = replace(S.JA, steps=2, batch_size=2, examples=8, warmup=1, threads=1)


def test_adapter_training_and_materialisation_are_deterministic(tiny_gemma, tmp_path):
    for i in range(2):
        S.train_adapter(tiny_gemma.base, TINY, tmp_path / f"a{i}", progress=False)
    a0, a1 = ((tmp_path / f"a{i}" / "adapter_model.safetensors").read_bytes() for i in range(2))
    assert a0 == a1
    m0 = S.materialise(tiny_gemma.base, tmp_path / "a0", tmp_path / "m0")
    m1 = S.materialise(tiny_gemma.base, tmp_path / "a1", tmp_path / "m1")
    w0, w1 = weights(m0), weights(m1)
    assert set(w0) == set(w1) and all(w0[k].equal(w1[k]) for k in w0)
    card = (tmp_path / "a0" / "README.md").read_text()
    assert "Gemma Terms of Use" in card and "r = 16" in card
    assert json.loads((tmp_path / "a0" / "adapter_config.json").read_text())["base_model_name_or_path"] == "google/gemma-3-270m"


def test_materialised_weights_are_base_plus_scaled_lora_product(tiny_gemma, tmp_path):
    """Independent truth: W' = W + (alpha / r) * B @ A for every adapted projection, everything else
    (the embedding, norms) bit for bit the base's."""
    S.train_adapter(tiny_gemma.base, TINY, tmp_path / "a", progress=False)
    out = S.materialise(tiny_gemma.base, tmp_path / "a", tmp_path / "m")
    base, merged, lora = weights(tiny_gemma.base), weights(out), weights(tmp_path / "a")
    scale = TINY.alpha / TINY.rank
    adapted = 0
    for name, w in base.items():
        stem = name.removesuffix(".weight")
        a = next((t for k, t in lora.items() if k.endswith(f"{stem}.lora_A.weight")), None)
        if a is None:
            assert merged[name].equal(w), name
            continue
        b = next(t for k, t in lora.items() if k.endswith(f"{stem}.lora_B.weight"))
        expected = w + scale * (b.float() @ a.float())
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
        adapted += 1
    assert adapted == 2 * len(TINY.targets)  # two layers


def test_shipped_adapters_match_their_recipes():
    for name, recipe in S.RECIPES.items():
        folder = S.SHIPPED_ADAPTERS / name
        config = json.loads((folder / "adapter_config.json").read_text())
        record = json.loads((folder / "training.json").read_text())
        assert config["r"] == recipe.rank and config["lora_alpha"] == recipe.alpha
        assert sorted(config["target_modules"]) == sorted(recipe.targets)
        assert record["recipe"]["steps"] == recipe.steps and len(record["losses"]) == recipe.steps
        assert record["recipe"]["seed"] == recipe.seed and record["recipe"]["corpus"] == name
        assert "Gemma Terms of Use" in (folder / "README.md").read_text()
    total = sum(f.stat().st_size for f in S.SHIPPED_ADAPTERS.rglob("*"))
    assert total <= 30 * 2**20


# ----------------------------------------------------------------------------- the teacher-forced design
def test_teacher_forced_fitness_data_are_fitness_split_prompts_with_mixed_references(tmp_path):
    from tsugiki.demo.lm import search as L  # budgets, data files and search configs

    assert wp.Problem("mul_add", 5, 1, 8).mixed_answer() == " 8 × 5 = 40, 40 + 1 = 41。答えは 41 です。"
    budget = replace(L.QUICK, fitness="teacher_forced", fitness_n=3, validation_n=2)
    files = L.write_data(tmp_path, budget)
    rows = {k: [json.loads(x) for x in files[k].read_text(encoding="utf-8").splitlines()] for k in ("fitness", "validation")}
    assert len(rows["fitness"]) == L.TF_SCALE * 3 and len(rows["validation"]) == L.TF_SCALE * 2
    test_keys = {wp.problem_of(json.loads(x)["id"]).key for x in files["test"].read_text(encoding="utf-8").splitlines()}
    for split, items in rows.items():
        for r in items:
            p = wp.problem_of(r["id"])
            assert r["id"].split("/")[1] == split and p.key not in test_keys
            assert r["prompt"].startswith("問題: ") and r["prompt"].endswith("\n答え:")
            assert r["answer"] == p.mixed_answer() and r["answer"].endswith(f"答えは {p.value} です。")
    config = L.ps_config({"base": "b", "ja": "j", "math": "m"}, files, 0, budget)
    assert config["fitness"]["function"] == "teacher_forced_accuracy" and config["fitness"]["args"]["append_eos"]
    with pytest.raises(ValueError):
        L._common(files, 0, replace(budget, fitness="loss"), 1)
    with pytest.raises(ValueError):
        replace(L.FULL, spaces=("DFS", "PS+DFS"))  # PS+DFS starts from the PS result


def test_search_data_written_under_a_relative_work_dir_resolve_once(tmp_path, monkeypatch):
    """A perf script's default work dir is relative (perf-out/...): the config the search reads names its data
    files so that resolving them against the config's own folder finds the files written (issue 31: the
    relative dir was joined twice)."""
    from tsugiki.demo.lm import search as L
    from tsugiki.demo.stage import evolve_config
    from tsugiki.evolution.data import load_pairs

    monkeypatch.chdir(tmp_path)
    budget = replace(L.QUICK, fitness="teacher_forced", fitness_n=2, validation_n=1)
    files = L.write_data(Path("perf-out/x/lm/data"), budget)
    for name in ("base", "ja", "math"):
        (tmp_path / "perf-out/x/lm/sources" / name).mkdir(parents=True)
    sources = {n: str(Path("perf-out/x/lm/sources") / n) for n in ("base", "ja", "math")}
    config = evolve_config(L.ps_config(sources, files, 0, budget), Path("perf-out/x/lm/runs/ps-s0"))
    for split, n in (("fitness", 2), ("validation", 1)):
        spec = config.data[split]["data"]
        assert Path(spec["file"]) == (tmp_path / files[split]).resolve()
        assert len(load_pairs(spec)) == L.TF_SCALE * n


def test_teacher_forced_exact_match_is_one_exactly_when_greedy_decoding_writes_the_reference(tiny_gemma):
    """The shortcut the teacher-forced fitness rests on, checked against real greedy generation: the greedy
    continuation (up to EOS) scores 1; the same text with one token changed scores 0."""
    from transformers import AutoModelForCausalLM

    from tsugiki.evolution.data import Pair
    from tsugiki.evolution.fitness import EvalContext, teacher_forced_accuracy
    from tsugiki.tokenizer_cache import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma.variants[0], dtype=torch.float32).eval()
    tok = load_tokenizer(tiny_gemma.variants[0])
    ctx = EvalContext(model=model, tokenizer=tok, params={})
    eos = tok.eos_token_id

    def greedy(prompt: str) -> list[int]:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, num_beams=1, max_new_tokens=4, pad_token_id=tok.pad_token_id,
                                 eos_token_id=None)
        return out[0, enc["input_ids"].shape[1]:].tolist()

    # a random model's tokens need not survive decode + encode; take the first prompt whose greedy text does
    for n in range(2, 40):
        prompt = wp.JA_PROMPT.format(q=f"健は鉛筆を{n}本持っています。")
        new = greedy(prompt)
        ref = tok.decode(new[:3])
        if tok(ref, add_special_tokens=False)["input_ids"] == new[:3]:
            break
    else:
        pytest.fail("no greedy continuation round-trips through the tokenizer")
    assert teacher_forced_accuracy(ctx, [Pair(prompt, ref)]) == 1.0
    # with EOS appended it is 1 only if greedy decoding would stop right after the reference
    assert teacher_forced_accuracy(ctx, [Pair(prompt, ref)], append_eos=True) == float(new[3] == eos)
    wrong = tok.decode(new[:2]) + " 猫"
    ids = tok(wrong, add_special_tokens=False)["input_ids"]
    assert ids[:2] == new[:2] and ids[2] != new[2]  # greedy's first two tokens, then another one
    assert teacher_forced_accuracy(ctx, [Pair(prompt, wrong)]) == 0.0
    assert teacher_forced_accuracy(ctx, [Pair(prompt, ref), Pair(prompt, wrong)]) == 0.5


# ----------------------------------------------------------------------------- the real MGSM-JA (--mgsm-ja)
def test_mgsm_ja_table_scores_the_vendored_set_and_reuses_its_record(tiny_gemma, tmp_path, monkeypatch):
    from tsugiki.benchmarks import runner
    from tsugiki.benchmarks.loaders import load_mgsm
    from tsugiki.benchmarks.mgsm import score_mgsm
    from tsugiki.demo.lm import stage as L

    monkeypatch.setattr(L, "MGSM_MAX_NEW_TOKENS", 6)
    table = L.mgsm_ja_table([("tiny base", tiny_gemma.base)], tmp_path, limit=3)
    assert table.title.startswith("The real MGSM-JA (3 problems") and [r[0] for r in table.rows] == ["tiny base"]
    record = json.loads((tmp_path / "tiny_base.json").read_text(encoding="utf-8"))
    assert record["n"] == 3 and len(record["responses"]) == 3
    answers = [i.answer for i in load_mgsm("ja")[:3]]
    again = score_mgsm(record["responses"], answers, extraction="sakana", language_filter=True).scores
    assert record["scores"]["acc_ja"][0] == again["acc_ja"].value and record["scores"]["acc"][0] == again["acc"].value
    assert table.rows[0][1].startswith(f"{again['acc_ja'].value:.1f} [")

    def no_rerun(*a, **k):
        raise AssertionError("scored twice")

    monkeypatch.setattr(runner, "evaluate", no_rerun)
    assert L.mgsm_ja_table([("tiny base", tiny_gemma.base)], tmp_path, limit=3).rows == table.rows


# ----------------------------------------------------------------------------- logits at answer positions only
@pytest.mark.parametrize("cap", [None, 0.05])  # the tiny model's logits are small: a small cap bites
def test_answer_loss_equals_cross_entropy_of_the_full_forward(tiny_gemma, cap):
    """The training loss that runs the LM head only at labelled positions equals the cross-entropy of the
    model's own full forward there, with and without Gemma's final logit soft-capping."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma.variants[1], dtype=torch.float32).eval()
    model.config.final_logit_softcapping = cap
    ids = torch.tensor([[2, 100, 200, 300, 400, 500], [2, 600, 700, 800, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 300, 400, 500], [-100, -100, 700, 800, -100, -100]])
    with torch.no_grad():
        got = S.answer_loss(model, ids, labels, pad_id=0)
        logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits[:, :-1]
    keep = labels[:, 1:] != -100
    want = torch.nn.functional.cross_entropy(logits[keep].float(), labels[:, 1:][keep])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    if cap:  # the cap changes the loss, so the test would see it missing
        model.config.final_logit_softcapping = None
        with torch.no_grad():
            assert not torch.allclose(S.answer_loss(model, ids, labels, pad_id=0), want, rtol=1e-4)


def test_dfs_loglik_fitness_reads_worked_answers(tmp_path):
    """dfs_fitness="loglik": the DFS and PS+DFS configs score the worked Japanese answer's log-likelihood on the
    fitness problems (the same problems PS answers), PS keeps the generated acc_ja."""
    from tsugiki.demo.lm import search as L

    budget = replace(L.QUICK, fitness_n=5, validation_n=3, dfs_fitness="loglik")
    files = L.write_data(tmp_path, budget)
    sources = {"base": "b", "ja": "j", "math": "m"}
    ps, dfs = L.ps_config(sources, files, 0, budget), L.dfs_config(sources, files, 0, budget)
    ps_dfs = L.ps_dfs_config(sources, files, 0, budget, tmp_path / "ps")
    assert ps["fitness"]["function"] == "mgsm_accuracy"
    for config in (dfs, ps_dfs):
        assert config["fitness"]["function"] == "answer_loglik" and config["fitness"]["args"]["append_eos"]
        rows = [json.loads(x) for x in Path(config["fitness"]["data"]["file"]).read_text(encoding="utf-8").splitlines()]
        assert [r["id"] for r in rows] == [json.loads(x)["id"] for x in files["fitness"].read_text(encoding="utf-8").splitlines()]
        assert all(r["answer"] == wp.problem_of(r["id"]).mixed_answer() for r in rows)
        assert len(Path(config["validation"]["data"]["file"]).read_text(encoding="utf-8").splitlines()) == 3
    assert ps_dfs["sources"]["ps"] == str((tmp_path / "ps").resolve()) and ps_dfs["space"]["kind"] == "dfs"
    with pytest.raises(ValueError, match="dfs_fitness"):
        L.dfs_config(sources, files, 0, replace(budget, dfs_fitness="nope"))


def test_default_budget_and_the_estimate_option(tmp_path):
    """The default run: PS in three search seeds, >= 100 fitness problems, >= 300 held-out problems, DFS and
    PS+DFS (with --dfs) scored by log-likelihood. ``estimate_items`` puts fitness.estimate into the PS config
    only, and the config loads (the evolve schema accepts it)."""
    from tsugiki.demo.lm import search as L
    from tsugiki.demo.stage import evolve_config

    assert L.FULL.seeds == (0, 1, 2) and L.FULL.spaces == ("PS",) and L.FULL.dfs_fitness == "loglik"
    assert L.FULL.fitness_n >= 100 and L.FULL.test_n >= 300
    budget = replace(L.QUICK, fitness_n=6, validation_n=2, estimate_items=3, estimate_method="subsample")
    files = L.write_data(tmp_path / "data", budget)
    sources = {n: str(tmp_path / n) for n in ("base", "ja", "math")}
    for n in sources.values():
        Path(n).mkdir()
    ps = L.ps_config(sources, files, 0, budget)
    assert ps["fitness"]["estimate"] == {"method": "subsample", "items": 3}
    assert "estimate" not in L.dfs_config(sources, files, 0, budget)["fitness"]
    assert "estimate" not in L.ps_config(sources, files, 0, replace(budget, estimate_items=0))["fitness"]
    config = evolve_config(ps, tmp_path / "run")
    assert config.spec.fitness.estimate.items == 3 and config.spec.fitness.estimate.method == "subsample"
