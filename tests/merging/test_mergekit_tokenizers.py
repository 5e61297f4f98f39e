"""Merges of models whose tokenizers differ (``tokenizer_source: base | MODEL | union``, ``tokenizer:`` token surgery
with ``pad_to_multiple_of``, slices), merged by tsugiki and compared with mergekit 0.1.5's own merges of the same
recipes on the same tiny checkpoints (recorded by scripts/make_mergekit_tokenizers.py; mergekit is not imported
here). mergekit orders a union's new tokens by set and hash-map iteration, so rows are compared token by token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from helpers import TEST_DATA, weights
from tsugiki.errors import RecipeError
from tsugiki.merging.execute import MergeOptions
from tsugiki.merging.recipe import load_recipe
from tsugiki.merging.to_disk import merge_to_disk

DATA = TEST_DATA / "mergekit_tokenizers"
RECIPES = sorted(DATA.glob("*.yaml"))
VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def _merge(path: Path, out: Path):
    recipe = load_recipe(path.read_text().replace("{root}", str(DATA)), source_name=path.name)
    merge_to_disk(recipe, out, MergeOptions(progress=False))
    return weights(out), AutoTokenizer.from_pretrained(str(out)).get_vocab(), json.loads((out / "config.json").read_text())


def test_every_case_is_recorded():
    assert {p.stem for p in RECIPES} == {"base_source_cuts_padding", "base_source_permutes", "model_source",
                                         "outside_source", "union", "union_linear", "surgery", "surgery_base_source",
                                         "union_slices"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_equals_mergekit(path, tmp_path):
    got, vocab, config = _merge(path, tmp_path / "out")
    want = load_file(str(path.with_suffix(".safetensors")))
    recorded = json.loads(path.with_suffix(".json").read_text())
    assert set(vocab) == set(recorded["vocab"])  # the same tokens (their order: see the module docstring)
    if "union" not in path.read_text():  # one model's tokenizer (and rules' new tokens after it): the same ids too
        assert vocab == recorded["vocab"]
    assert config["vocab_size"] == recorded["vocab_size"]
    assert sorted(got) == sorted(want)
    for name in want:
        if name in VOCAB_TENSORS:
            assert got[name].shape == want[name].shape, name
            rows = [(vocab[t], recorded["vocab"][t]) for t in vocab]
            for mine, theirs in rows:  # each token's row, wherever each put it
                assert (got[name][mine] - want[name][theirs]).abs().max() <= 1e-6, (name, mine, theirs)
            pad = len(vocab)
            if got[name].shape[0] > pad:  # padding: the mean row
                assert (got[name][pad:] - want[name][pad:]).abs().max() <= 1e-6
        else:
            assert (got[name] - want[name]).abs().max() <= 1e-6, name


def test_the_padding_defect_is_fixed(tmp_path):
    """tokenizer_source: base used to keep base's 16 embedding rows; the tokenizer has 11 (mergekit cuts to it)."""
    got, vocab, config = _merge(DATA / "base_source_cuts_padding.yaml", tmp_path / "out")
    assert len(vocab) == 11 and config["vocab_size"] == 11
    assert got["model.embed_tokens.weight"].shape[0] == 11 and got["lm_head.weight"].shape[0] == 11


def test_a_tokenizer_from_outside_the_merge(tmp_path):
    """tokenizer_source naming a model that is not merged used to fail with a KeyError: its vocabulary is the output's."""
    got, vocab, config = _merge(DATA / "outside_source.yaml", tmp_path / "out")
    m2 = AutoTokenizer.from_pretrained(str(DATA / "models" / "m2")).get_vocab()
    assert vocab == m2 and config["vocab_size"] == len(m2)


def test_union_order_is_deterministic_and_documented(tmp_path):
    """base's tokens, then the other models' new ordinary tokens (recipe order, each model's by id), then added
    tokens: m1 brings x (id 3) then y (id 6), m2 brings z, then m2's special <extra>."""
    _, vocab, _ = _merge(DATA / "union.yaml", tmp_path / "out")
    order = sorted(vocab, key=vocab.get)
    assert order == ["<unk>", "<s>", "</s>", *"abcdefgh", "x", "y", "z", "<extra>"]
    flags = {t.content: t.special for t in AutoTokenizer.from_pretrained(str(tmp_path / "out")).added_tokens_decoder.values()}
    assert flags["<extra>"] is True and flags["x"] is False  # each token keeps its special flag


def test_surgery_rows_by_hand(tmp_path):
    """Rules worked out by hand on the sources: a forced row, a zero row, a row of another token, padding."""
    got, vocab, _ = _merge(DATA / "surgery.yaml", tmp_path / "out")
    src = {m: load_file(str(DATA / "models" / m / "model.safetensors"))["model.embed_tokens.weight"]
           for m in ("base", "m1", "m2")}
    ids = {m: AutoTokenizer.from_pretrained(str(DATA / "models" / m)).get_vocab() for m in ("base", "m1", "m2")}
    # task_arithmetic, weights 0.5/0.5: out = base + 0.5 (m1 - base) + 0.5 (m2 - base) = 0.5 m1 + 0.5 m2 per row
    emb = got["model.embed_tokens.weight"]
    forced_a = src["m2"][ids["m2"]["a"]]  # a: forced from m2 into every model
    assert (emb[vocab["a"]] - forced_a).abs().max() <= 1e-6
    # x: zero for the models that lack it (base, m2; not forced), m1 keeps its own row
    assert (emb[vocab["x"]] - 0.5 * src["m1"][ids["m1"]["x"]]).abs().max() <= 1e-6
    assert emb.shape[0] == 16 and (emb[15:] - emb[:15].mean(0)).abs().max() > 0  # padded to 16, rows averaged pre-merge


@pytest.mark.parametrize("yaml_text, message", [
    ("tokenizer: {source: union, tokens: {x: {source: m9}}}", "tokenizer.tokens.x.source: token rule names model 'm9', which the recipe does not merge"),
    ("tokenizer: {tokens: {x: {source: {kind: model_token, model: a}}}}",
     "tokenizer.tokens.x.source: a model_token source takes exactly one of 'token' and 'token_id'"),
    ("tokenizer: {tokens: {x: {source: {kind: one}}}}", "tokenizer.tokens.x.source.kind: expected 'zero' or 'model_token'"),
    ("tokenizer: {pad_to_multiple_of: 0}", "tokenizer.pad_to_multiple_of: expected a positive integer"),
    ("tokenizer: {tokens: {x: {force: yes please}}}", "tokenizer.tokens.x.force: expected true or false"),
])
def test_bad_token_rules_are_one_line_with_file_and_line(yaml_text, message):
    text = f"merge_method: linear\nmodels:\n  - {{model: a, parameters: {{weight: 1}}}}\n{yaml_text}\n"
    with pytest.raises(RecipeError, match=r"^r\.yaml:4: " + message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_recipe(text, source_name="r.yaml")
    assert "\n" not in str(e.value)


def test_ps_search_over_models_whose_tokenizers_differ(tmp_path):
    """A PS space with tokenizer_source: union merges each candidate in memory into a model resized to the union
    vocabulary; the candidate equals its export (tsugiki merge's path), tokenizer included."""
    import torch

    from tsugiki.evolution import from_data, make_problem

    models = DATA / "models"
    config = from_data({
        "sources": {"base": str(models / "base"), "m1": str(models / "m1"), "m2": str(models / "m2")},
        "space": {"kind": "ps", "method": "task_arithmetic", "base_model": "base", "models": ["m1", "m2"],
                  "params": {"weight": [0, 1]}, "tokenizer_source": "union"},
        "fitness": {"function": "answer_loglik", "data": {"pairs": [{"prompt": "a b", "answer": "c"},
                                                                    {"prompt": "x y", "answer": "z"}]}},
        "search": {"seed": 0, "population": 2, "generations": 1}})
    problem = make_problem(config, tmp_path)
    values = {"m1.weight": 0.3, "m2.weight": 0.6}
    fitness = problem.evaluate(values)
    out = problem.export_as_evaluated(values, tmp_path / "best")
    on_disk = weights(out)
    for name, tensor in problem.model.state_dict().items():
        assert torch.equal(tensor, on_disk[name]), name
    assert problem.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(str(out)).get_vocab()
    assert on_disk["model.embed_tokens.weight"].shape[0] == 15 and fitness < 0
    with pytest.raises(Exception, match="tokenizer_source: expected base, union or a source name"):
        make_problem(from_data({**config.data, "space": {**config.data["space"], "tokenizer_source": "m9"}}), tmp_path)


def test_a_rule_without_a_source_only_adds_the_token(tmp_path):
    """``tokens: {T: {}}`` adds T and fills it as if it had no rule (it used to fail with a KeyError): a token no
    model has gets zero rows, one only m1 has gets m1's row."""
    recipe = load_recipe((DATA / "union.yaml").read_text().replace("{root}", str(DATA)).replace(
        "tokenizer_source: union", "tokenizer: {source: base, tokens: {'<brand-new>': {}, x: {}}}"), source_name="r")
    merge_to_disk(recipe, tmp_path / "out", MergeOptions(progress=False))
    got, vocab = weights(tmp_path / "out"), AutoTokenizer.from_pretrained(str(tmp_path / "out")).get_vocab()
    m1 = load_file(str(DATA / "models" / "m1" / "model.safetensors"))["model.embed_tokens.weight"]
    x = AutoTokenizer.from_pretrained(str(DATA / "models" / "m1")).get_vocab()["x"]
    emb = got["model.embed_tokens.weight"]
    assert not emb[vocab["<brand-new>"]].any()
    # ties of base + m1 + m2 over rows that are all m1's x row: every task vector 0 -> the base's row: m1's
    assert (emb[vocab["x"]] - m1[x]).abs().max() <= 1e-6
