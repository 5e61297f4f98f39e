"""MGSM-JA: the seed's prompt, answer extraction (``sakana`` and ``robust``), ``acc`` and ``acc_ja``.

Seed definitions (SakanaAI/evolutionary-model-merge): ``evomerge/models/prompt_templates.py``
(``JA_ALPACA_COT_TEMPLATE``), ``evomerge/models/causallm.py`` (greedy, 1024 new tokens, stop
strings), ``evomerge/eval/ja_mgsm.py`` (``extract_answer_number``, ``compute_score``).

Scores are percentages (the paper's tables): ``acc`` = 100 x mean(correct); ``acc_ja`` = 100 x
mean(correct and fastText's P(ja) of the whole response > 0.5). Intervals: 95% bootstrap.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Literal, Sequence

from tsugiki.benchmarks.stats import BootstrapStream, Estimate
from tsugiki.errors import BenchmarkError

# The seed's zero-shot Japanese Alpaca-style chain-of-thought prompt, verbatim.
JA_ALPACA_COT_TEMPLATE = (
    "以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
    "一歩一歩考えましょう。\n\n### 指示:\n{input}\n\n### 応答:"
)
# The same prompt in English (not in the seed; for the English comparison set).
EN_ALPACA_COT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
    "Let's think step by step.\n\n### Instruction:\n{input}\n\n### Response:"
)
# The seed's stop strings (vLLM ``SamplingParams(stop=...)``), used for both languages.
SEED_STOP_STRINGS = ("Instruction:", "Instruction", "Response:", "Response")
SEED_MAX_NEW_TOKENS = 1024
JA_THRESHOLD = 0.5  # acc_ja: P(ja) must be *greater* than this (the VQA filter uses >=)

Extraction = Literal["sakana", "robust"]
EXTRACTIONS: tuple[str, ...] = ("sakana", "robust")

# --------------------------------------------------------------------------- sakana

_SEED_NUMBER = re.compile(r"\d*\.?\d+")


def extract_sakana(response: str) -> float | None:
    """The seed's ``extract_answer_number``, flaws kept so published numbers reproduce: the *last*
    match of ``\\d*\\.?\\d+`` read as a float. Commas split numbers ("1,000" reads as 0.0), a minus
    sign is ignored ("-5" reads as 5.0), a trailing check ("18 x 2 = 36") wins over the answer, and
    Python's ``\\d`` also matches full-width digits ("１８" reads as 18.0). No match: None."""
    matches = _SEED_NUMBER.findall(response)
    if not matches:
        return None
    try:
        return float(matches[-1])
    except ValueError:  # a digit float() refuses; the seed would crash here
        return None


# --------------------------------------------------------------------------- robust

# A number in NFKC-normalised text: optional minus (not after a letter or digit, so "3-5" is not
# -5), an integer part with or without thousands separators, decimals, or a fraction.
_NUMBER = re.compile(
    r"(?P<sign>(?<![0-9A-Za-z])-)?"
    r"(?:(?P<int>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.(?P<dec>[0-9]+))?(?:/(?P<den>[0-9]+))?"
    r"|\.(?P<frac_only>[0-9]+))"
)
# Japanese myriads written with digits: 3万5000 = 35000, 1億2000万 = 120000000, 5千 = 5000.
_UNITS = {"億": 10**8, "万": 10**4, "千": 10**3}
_JA_AMOUNT = re.compile(r"(?P<sign>(?<![0-9A-Za-z])-)?(?P<body>(?:[0-9]+(?:\.[0-9]+)?[億万千])+[0-9]*)")
_JA_PIECE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([億万千])")
# Where a stated final answer begins: 答えは / 答え: / 答: (also 解答は, 最終的な答えは), "answer is",
# "Answer:", GSM8K's "####", LaTeX's \boxed{.
_FINAL_ANSWER = re.compile(r"答え?\s*(?:は|:|=)|answer\s*(?:is|:)|####|\\boxed\{", re.IGNORECASE)


def _normalise(text: str) -> str:
    """NFKC (full-width digits, comma, minus and colon to ASCII) plus U+2212 MINUS SIGN to '-'."""
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-")


def _ja_amount(m: re.Match) -> Fraction | None:
    total, last_unit = Fraction(0), None
    body = m["body"]
    pos = 0
    for piece in _JA_PIECE.finditer(body):
        unit = _UNITS[piece[2]]
        if last_unit is not None and unit >= last_unit:
            return None  # "5千3万": not a well-formed amount
        total += Fraction(piece[1]) * unit
        last_unit, pos = unit, piece.end()
    if body[pos:]:
        total += int(body[pos:])
    return -total if m["sign"] else total


def _plain_number(m: re.Match) -> Fraction:
    if m["frac_only"] is not None:
        value = Fraction(f"0.{m['frac_only']}")
    else:
        value = Fraction(m["int"].replace(",", "") + (f".{m['dec']}" if m["dec"] else ""))
        if m["den"] and int(m["den"]) != 0 and not m["dec"]:
            value /= int(m["den"])
    return -value if m["sign"] else value


def _numbers(text: str) -> list[tuple[int, Fraction]]:
    """(start, value) of every number in normalised ``text``, left to right."""
    found: list[tuple[int, int, Fraction]] = []
    taken: list[tuple[int, int]] = []
    for m in _JA_AMOUNT.finditer(text):
        value = _ja_amount(m)
        if value is not None:
            found.append((m.start(), m.end(), value))
            taken.append((m.start(), m.end()))
    for m in _NUMBER.finditer(text):
        if not any(s <= m.start() < e for s, e in taken):
            found.append((m.start(), m.end(), _plain_number(m)))
    return [(start, value) for start, _, value in sorted(found, key=lambda f: f[0])]


def extract_robust(response: str) -> Fraction | None:
    """The answer a careful reader would take, as an exact fraction (None if there is no number).

    Text is NFKC-normalised first (full-width digits, ``，``, ``－``, ``：``), then:
    1. if the response states a final answer (``答えは``, ``答え:``, ``答:``, ``The answer is``,
       ``Answer:``, ``####``, ``\\boxed{``), the first number after the *last* such marker;
    2. otherwise (or if no number follows the marker) the last number in the response.
    Numbers: thousands separators (``1,000``), negatives (``-5``, but not the ``-`` in ``3-5``),
    decimals and fractions kept exact (``18.0`` and ``36/2`` both equal 18), and Japanese myriads
    written with digits (``3万5000``, ``1億2000万``, ``5千``)."""
    text = _normalise(response)
    numbers = _numbers(text)
    if not numbers:
        return None
    markers = list(_FINAL_ANSWER.finditer(text))
    if markers:
        after = markers[-1].end()
        stated = next((value for start, value in numbers if start >= after), None)
        if stated is not None:
            return stated
    return numbers[-1][1]


EXTRACTORS: dict[str, Callable[[str], float | Fraction | None]] = {"sakana": extract_sakana, "robust": extract_robust}


def extract_answer(response: str, extraction: str = "robust"):
    if extraction not in EXTRACTORS:
        raise BenchmarkError(f"unknown extraction {extraction!r}; choose one of {', '.join(EXTRACTIONS)}")
    return EXTRACTORS[extraction](response)


def json_number(value) -> int | float | None:
    """An extracted value for JSON: integral values as int, others as float."""
    if value is None:
        return None
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    return value


# --------------------------------------------------------------------------- scoring


def parse_answer(answer, where: str = "answer") -> int | Fraction:
    """A gold answer: an int, or a string of one (``"18"``, ``"1,000"``, ``"-3"``)."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float, str)):
        raise BenchmarkError(f"{where}: expected a number, got {answer!r}")
    if isinstance(answer, str):
        try:
            return Fraction(answer.strip().replace(",", ""))
        except ValueError:
            raise BenchmarkError(f"{where}: {answer!r} is not a number") from None
    return answer


@dataclass(frozen=True)
class MgsmResult:
    """``scores``: ``acc`` and ``acc_ja`` (percent, with intervals); ``per_item`` in input order."""

    scores: dict[str, Estimate]
    per_item: list[dict] = field(repr=False)


def score_mgsm(responses: Sequence[str], answers: Sequence, *, extraction: str = "robust",
               language_filter: bool = True, language_id=None, bootstrap: BootstrapStream | None = None) -> MgsmResult:
    """Extract a number from each response and compare it with the gold answer (exact equality,
    as the seed's ``answer == prediction``)."""
    from tsugiki.benchmarks.text import check_texts

    responses, answers = check_texts(responses, "response"), list(answers)
    if len(responses) != len(answers):
        raise BenchmarkError(f"{len(responses)} responses for {len(answers)} answers")
    if not responses:
        raise BenchmarkError("no responses to score")
    gold = [parse_answer(a, f"answer {i + 1}") for i, a in enumerate(answers)]
    extracted = [extract_answer(r, extraction) for r in responses]
    correct = [e is not None and e == g for e, g in zip(extracted, gold)]
    per_item = [{"extracted": json_number(e), "correct": c} for e, c in zip(extracted, correct)]
    bootstrap = bootstrap or BootstrapStream()
    scores = {"acc": bootstrap.mean_estimate(correct).scaled(100)}
    if language_filter:
        if language_id is None:
            from tsugiki.benchmarks.langid import default_language_id
            language_id = default_language_id()
        for item, resp in zip(per_item, responses):
            p = language_id.ja_prob(resp)
            item.update(ja_response=p, correct_ja=item["correct"] and p > JA_THRESHOLD)
        scores["acc_ja"] = bootstrap.mean_estimate([i["correct_ja"] for i in per_item]).scaled(100)
    return MgsmResult(scores, per_item)
