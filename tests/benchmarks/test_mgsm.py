"""MGSM answer extraction in both modes, scoring (acc, acc_ja), the prompt, and the vendored data."""

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsugiki.benchmarks.loaders import load_mgsm
from tsugiki.benchmarks.mgsm import (
    JA_ALPACA_COT_TEMPLATE,
    extract_answer,
    extract_robust,
    extract_sakana,
    score_mgsm,
)
from tsugiki.errors import BenchmarkError


def seed_extract(completion):
    """evomerge/eval/ja_mgsm.py::extract_answer_number, literally."""
    matches = re.findall(r"\d*\.?\d+", completion)
    if not matches:
        return None
    text = matches[-1]
    return float(text.replace(",", ""))


# (response, sakana, robust)
CASES = [
    ("答えは18です。", 18.0, 18),
    ("1,000", 0.0, 1000),                                   # seed: the last match is "000"
    ("1,000,000ドル", 0.0, 1000000),
    ("-5", 5.0, -5),                                        # seed: the sign is not part of the match
    ("\u22127", 7.0, -7),                                   # U+2212 MINUS SIGN
    ("The answer is -3 degrees.", 3.0, -3),
    ("3-5=-2", 2.0, -2),                                    # "3-5" is a subtraction, "-2" a negative
    ("答えは18です。検算: 18×2=36", 36.0, 18),               # stated answer beats a trailing check
    ("答えは 2 です。2 + 3 = 5", 5.0, 2),
    ("１８個", 18.0, 18),                                    # full-width digits (Python's \d matches them)
    ("答え：１，０００円", 0.0, 1000),                        # full-width colon and comma
    ("18.0", 18.0, 18),
    ("18.50", 18.5, Fraction(37, 2)),
    ("36/2", 2.0, 18),                                      # a fraction equal in value
    ("3/0", 0.0, 3),                                        # a zero denominator is ignored
    (".5", 0.5, Fraction(1, 2)),
    ("$1,234.50", 234.5, Fraction(2469, 2)),                 # seed: "1" and "234.50"
    ("The answer is 18.", 18.0, 18),
    ("Answer: 42", 42.0, 42),
    ("#### 42", 42.0, 42),
    ("\\boxed{7} ですが、確認すると 8 です", 8.0, 7),
    ("問題に答えるために、12個と6個を足すと18個です。", 18.0, 18),  # 答える is not a stated answer
    ("計算: 5+3=8。答えはわかりません", 8.0, 8),                # marker with no number after it
    ("3万5000円", 5000.0, 35000),                            # Japanese myriads written with digits
    ("1億2000万", 2000.0, 120000000),
    ("1.5万人", 1.5, 15000),
    ("5千円", 5.0, 5000),
    ("数字はありません", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("response, sakana, robust", CASES)
def test_extraction_cases(response, sakana, robust):
    assert extract_sakana(response) == sakana
    assert extract_answer(response, "sakana") == seed_extract(response) == sakana
    got = extract_robust(response)
    assert got == robust and (got is None or isinstance(got, Fraction))
    assert extract_answer(response) == robust  # robust is the default


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.,-答えは：１２ abc万", max_size=20))
def test_sakana_is_the_seeds_rule_on_any_text(text):
    assert extract_sakana(text) == seed_extract(text)


def test_unknown_extraction():
    with pytest.raises(BenchmarkError, match="unknown extraction 'smart'"):
        extract_answer("1", "smart")


def test_acc_and_acc_ja_in_both_modes():
    responses = ["答えは1,000です。", "The answer is 1,000.", "答えは-5です。", "答えは7です。", "わかりません"]
    answers = [1000, 1000, -5, 8, 3]
    robust = score_mgsm(responses, answers)
    assert [i["correct"] for i in robust.per_item] == [True, True, True, False, False]
    assert [i["correct_ja"] for i in robust.per_item] == [True, False, True, False, False]  # English is not ja
    assert robust.scores["acc"].value == 60.0 and robust.scores["acc_ja"].value == 40.0
    assert robust.per_item[0]["extracted"] == 1000 and isinstance(robust.per_item[0]["extracted"], int)
    sakana = score_mgsm(responses, answers, extraction="sakana")
    assert [i["extracted"] for i in sakana.per_item] == [0.0, 0.0, 5.0, 7.0, None]
    assert sakana.scores["acc"].value == 0.0
    low, high = robust.scores["acc"].low, robust.scores["acc"].high
    assert 0 <= low <= 60 <= high <= 100


def test_acc_ja_needs_probability_above_one_half():
    class Fixed:
        def ja_prob(self, text):
            return 0.5

    res = score_mgsm(["答えは3"], [3], language_id=Fixed())
    assert res.per_item[0]["correct"] and not res.per_item[0]["correct_ja"]


def test_answers_as_text_and_bad_answers():
    assert score_mgsm(["18", "1000"], ["18", "1,000"], language_filter=False).scores["acc"].value == 100.0
    with pytest.raises(BenchmarkError, match="answer 1: 'many' is not a number"):
        score_mgsm(["18"], ["many"])
    with pytest.raises(BenchmarkError, match="2 responses for 1 answers"):
        score_mgsm(["1", "2"], [1])
    with pytest.raises(BenchmarkError, match="response 1 is NoneType"):
        score_mgsm([None], [1])
    empty = score_mgsm([""], [0])
    assert empty.per_item[0] == {"extracted": None, "correct": False, "ja_response": pytest.approx(0.0097, abs=1e-3),
                                 "correct_ja": False}


def test_seed_prompt_verbatim():
    assert JA_ALPACA_COT_TEMPLATE.format(input="Q") == (
        "以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
        "一歩一歩考えましょう。\n\n### 指示:\nQ\n\n### 応答:")


def test_vendored_mgsm():
    ja, en = load_mgsm("ja"), load_mgsm("en")
    assert len(ja) == len(en) == 250
    assert ja[0].answer == en[0].answer == 18 and ja[0].question.startswith("ジャネットのアヒル")
    assert [i.answer for i in ja] == [i.answer for i in en]
    assert ja[146].answer == 2125  # written "2,125" in the file
    with pytest.raises(BenchmarkError, match="no MGSM data for language 'fr'"):
        load_mgsm("fr")
