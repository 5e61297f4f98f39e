"""Japanese ROUGE-L: hand-counted MeCab tokens, the language filter, and equality with the seed's
pipeline (rouge_score + BootstrapAggregator after np.random.seed(42))."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, scoring

from tsugiki.benchmarks.reference import SeedMecabTokenizer, seed_compute_score
from tsugiki.benchmarks.rouge import lcs_length, rouge_ja
from tsugiki.benchmarks.stats import BootstrapStream
from tsugiki.errors import BenchmarkError


def f(lcs, n_pred, n_ref):
    p, r = lcs / n_pred, lcs / n_ref
    return 100 * 2 * p * r / (p + r)


# (reference, prediction, expected rougeL x100) with the MeCab words counted by hand:
HAND = [
    # 猫|が|好き|です|。  vs  犬|が|好き|です|。 : LCS が好きです。 = 4 of 5 and 5
    ("猫が好きです。", "犬が好きです。", f(4, 5, 5)),
    # 私|は|東京|へ|行き|ます  vs  私|は|大阪|へ|行き|まし|た : LCS 私は へ 行き = 4 of 7 and 6
    ("私は東京へ行きます", "私は大阪へ行きました", f(4, 7, 6)),
    # 今日|は|良い|天気|です|ね  vs  今日|は|天気|が|良い|です|ね : LCS 今日は天気ですね = 5 of 7 and 6
    ("今日は良い天気ですね", "今日は天気が良いですね", f(5, 7, 6)),
    # 赤色|です|。 vs 赤い : nothing shared
    ("赤色です。", "赤い", 0.0),
    # ＵＦＯ　です😀 normalises to UFO|です, identical to the reference
    ("UFOです", "ＵＦＯ　です😀", 100.0),
]


@pytest.mark.parametrize("ref, pred, expected", HAND)
def test_hand_checked_pairs(ref, pred, expected):
    res = rouge_ja([ref], [pred])
    assert res.rougeL == pytest.approx(expected, abs=1e-9)  # one pair: every resample is that pair
    assert res.rougeL_ja == pytest.approx(expected, abs=1e-9)  # Japanese prediction: kept


def test_hand_values():
    assert [round(e, 4) for *_, e in HAND] == [80.0, 61.5385, 76.9231, 0.0, 100.0]


def test_english_prediction_for_japanese_reference_scores_zero_in_rougeL_ja():
    # UFO|が|飛ん|で|い|ます (6) vs A|UFO|is|flying|. (5): LCS "UFO" = 1
    res = rouge_ja(["UFOが飛んでいます"], ["A UFO is flying."])
    assert res.rougeL == pytest.approx(f(1, 5, 6))
    assert res.rougeL_ja == 0.0
    assert res.per_item[0]["filtered"] is True


def test_ufo_reference_keeps_its_score():
    # "UFO" is not Japanese for fastText, so an English prediction is kept: LCS 1 of 5 and 1
    res = rouge_ja(["UFO"], ["A UFO is flying."])
    assert res.rougeL == res.rougeL_ja == pytest.approx(f(1, 5, 1))
    assert res.per_item[0]["filtered"] is False


@pytest.mark.parametrize("pred", ["", "   \n", "🎉🎉", "😀 🌟"])
def test_empty_or_emoji_only_prediction_scores_zero(pred):
    res = rouge_ja(["猫が好きです。", "UFO"], [pred, pred])
    assert res.rougeL == res.rougeL_ja == 0.0
    assert all(item["rougeL"] == 0.0 for item in res.per_item)


def test_bad_input_is_a_clear_error():
    with pytest.raises(BenchmarkError, match="2 predictions for 1 references"):
        rouge_ja(["a"], ["a", "b"])
    with pytest.raises(BenchmarkError, match="no pairs"):
        rouge_ja([], [])
    with pytest.raises(BenchmarkError, match="prediction 1 is NoneType"):
        rouge_ja(["a"], [None])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=40), st.lists(st.sampled_from("abcde"), max_size=40))
def test_bit_parallel_lcs_equals_rouge_scores_table(a, b):
    expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
    assert lcs_length(a, b) == expected


def test_lcs_longer_than_a_machine_word():
    rng = random.Random(1)
    a = [rng.choice("abc") for _ in range(300)]
    b = [rng.choice("abc") for _ in range(250)]
    assert lcs_length(a, b) == rouge_scorer._lcs_table(a, b)[-1][-1]


def test_bootstrap_is_bit_for_bit_the_aggregators_stream():
    rng = np.random.RandomState(7)
    rows = [[scoring.Score(*rng.rand(3)) for _ in range(3)] for _ in range(37)]
    np.random.seed(42)
    agg = scoring.BootstrapAggregator()
    for r in rows:
        agg.add_scores({"a": r[0], "b": r[1], "c": r[2]})
    expected = agg.aggregate()
    stream = BootstrapStream()
    for j, name in enumerate("abc"):  # aggregated in insertion order, one block of the stream each
        low, mid, high = stream.percentiles([r[j].fmeasure for r in rows])
        assert (low, mid, high) == (expected[name].low.fmeasure, expected[name].mid.fmeasure, expected[name].high.fmeasure)


JA = ["猫が好きです。", "私は東京へ行きます", "今日は良い天気ですね😀", "白い犬が走っています", "赤いりんご", "UFO",
      "二人", "青い空と白い雲が見えます。", "ＵＦＯが２機", "テーブルの上に本があります"]
EN = ["The cat", "a dog is running", "UFO", "two people", "I like cats 🐱", "", "   ", "🎉🎉"]


def test_corpus_scores_equal_the_seeds_pipeline_exactly():
    rng = random.Random(0)
    refs = [rng.choice(JA) + rng.choice(["", rng.choice(JA)]) for _ in range(60)]
    preds = [rng.choice(JA + EN) + rng.choice(["", rng.choice(JA + EN)]) for _ in range(60)]
    seed = seed_compute_score(refs, preds)
    ours = rouge_ja(refs, preds)
    for k in ("rouge1", "rouge2", "rougeL", "rouge1_ja", "rouge2_ja", "rougeL_ja"):
        assert ours.scores[k].value == seed[k], k
    assert (ours.scores["rougeL_ja"].low, ours.scores["rougeL_ja"].high) == seed["rougeL_ja_interval"]
    assert ours.rougeL_ja < ours.rougeL  # some English predictions were dropped


def test_per_pair_scores_equal_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=SeedMecabTokenizer())
    refs, preds = JA + EN, list(reversed(JA)) + JA[:8]
    res = rouge_ja(refs, preds, language_filter=False)
    for ref, pred, item in zip(refs, preds, res.per_item):
        expected = scorer.score(ref, pred)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert item[k] == 100 * expected[k].fmeasure
