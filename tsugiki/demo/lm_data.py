"""Training and evaluation data of the demo's language models, generated offline and deterministically.

The seed paper merged a Japanese LLM with English math LLMs and asked the result MGSM in Japanese. The
tiny analogue here:

- the *base* model is "pretrained" on sentences of a small bilingual world (colours and shapes, numbers in
  English and Japanese sentences) and on bare two-operand sums (``3+4=7``, ``9-5=4``); it knows no
  instruction format;
- the *JA* sibling learns the Japanese instruction format (:data:`world.JA_FORMAT`) on Japanese questions
  about the world and on *two*-operand sums;
- the *MATH* sibling learns a harder skill, *three*-operand sums (``3+4-2``), asked in the English format
  (:data:`world.EN_FORMAT`);
- the target is the harder skill asked and answered in Japanese, on problems no model saw in training.

Answers show their computation before the answer, as chain-of-thought answers do: ``design="steps"``
as two two-operand steps (``3+4=7, 7-2=5 なので、答えは 5 です。``), ``"worked"`` in one go
(``3+4-2=5 なので、…``); ``"direct"`` answers with the number only (``答えは 5 です。``).
``"symbolic"``: the math sibling is trained on bare sums (``3+4-2=5``, a math corpus rather than
instructions) and questions are asked as such sums (``問題: 3+4-2= 応答: 答えは 5 です。``), so that the
math skill is used where it was learned, inside the Japanese format.
"""

from __future__ import annotations

import random
from typing import Literal

from tsugiki.demo.world import COLOURS, EN_FORMAT, JA_ANSWER, JA_FORMAT, JA_QUESTIONS, SHAPES
from tsugiki.evolution.data import Pair, split_of

Design = Literal["symbolic", "steps", "worked", "direct"]
DESIGNS: tuple[str, ...] = ("symbolic", "steps", "worked", "direct")


# ----------------------------------------------------------------------------- arithmetic universes
def _value(expr: str) -> int:
    total, sign, digits = 0, 1, ""
    for ch in expr + "+":
        if ch.isdigit():
            digits += ch
        else:
            total += sign * int(digits)
            sign, digits = (1 if ch == "+" else -1), ""
    return total


def easy_problems() -> list[tuple[str, int]]:
    """Two one-digit operands, ``+`` or ``-``, never negative: 155 problems."""
    out = [(f"{a}+{b}", a + b) for a in range(10) for b in range(10)]
    out += [(f"{a}-{b}", a - b) for a in range(10) for b in range(a + 1)]
    return out


def hard_problems() -> list[tuple[str, int]]:
    """Three one-digit operands with ``+``/``-``, every partial result ≥ 0 (the skill to compose)."""
    out = []
    for a in range(10):
        for b in range(10):
            for c in range(10):
                for o1 in "+-":
                    for o2 in "+-":
                        expr = f"{a}{o1}{b}{o2}{c}"
                        first = _value(expr[:3])
                        if first >= 0 and _value(expr) >= 0:
                            out.append((expr, _value(expr)))
    return out


def hard_split(split: str) -> list[tuple[str, int]]:
    """The fixed ``fitness`` / ``validation`` / ``test`` parts (40/30/30 %) of :func:`hard_problems`."""
    pairs = [Pair(e, str(v)) for e, v in hard_problems()]
    return [(p.prompt, int(p.answer)) for p in split_of(pairs, split)]


# ----------------------------------------------------------------------------- answers
def question(expr: str, design: Design) -> str:
    """The question as asked: ``symbolic`` writes it as the bare sum the math sibling was trained on
    (``3+4-2=``), the other designs as the expression alone."""
    return f"{expr}=" if design == "symbolic" else expr


def work(expr: str, value: int, design: Design) -> str:
    """The computation an answer shows: ``steps`` splits a three-operand sum into two two-operand ones
    (``3+4=7, 7-2=5``), each a sum the base model already knows; ``worked`` states it in one go
    (``3+4-2=5``); ``direct`` shows none."""
    if design in ("direct", "symbolic"):
        return ""
    if design == "steps" and len(expr) == 5:
        first = _value(expr[:3])
        return f"{expr[:3]}={first}, {first}{expr[3:]}={value}"
    return f"{expr}={value}"


def ja_answer(expr: str, value: int, design: Design) -> str:
    shown = work(expr, value, design)
    return f"{shown} なので、答えは {value} です。" if shown else f"答えは {value} です。"


def en_answer(expr: str, value: int, design: Design) -> str:
    shown = work(expr, value, design)
    return f"{shown}, so the answer is {value}." if shown else f"The answer is {value}."


def target_items(split: str, n: int | None = None, seed: int = 0) -> list[Pair]:
    """The target task: three-operand problems asked in Japanese; ``prompt`` is the question (the
    caller wraps it in :data:`JA_FORMAT`), ``answer`` the number; ids ``demo_math/<expr>``."""
    items = [Pair(e, str(v), f"demo_math/{e}") for e, v in hard_split(split)]
    random.Random(seed).shuffle(items)
    return items if n is None else items[:n]


def english_items(split: str, n: int | None = None, seed: int = 0) -> list[Pair]:
    """The same problems as :func:`target_items`, to be asked in English (what MATH was trained on)."""
    return [Pair(p.prompt, p.answer, f"demo_math_en/{p.prompt}") for p in target_items(split, n, seed)]


# ----------------------------------------------------------------------------- corpora
# (prompt, response) pairs: the loss is on the response only; the base's "prompt" is empty.
Example = tuple[str, str]

_EN_NUM = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_EN_PEOPLE = ["I", "you", "the teacher", "my friend", "the student", "the dog", "the cat"]
_EN_PLACES = ["Tokyo", "Osaka", "school", "the station", "the shop", "home", "the park"]
_JA_PEOPLE = ["私", "彼", "先生", "友達", "学生", "犬", "猫", "母"]
_JA_PLACES = ["東京", "大阪", "学校", "駅", "店", "家", "川", "山"]
_JA_VERBS = ["行きます", "来ました", "歩きます", "帰ります", "走りました"]


def _world_sentence(rng: random.Random) -> str:
    (en_c, ja_c, _), (en_s, ja_s) = rng.choice(COLOURS), rng.choice(SHAPES)
    kind = rng.randrange(6)
    if kind == 0:
        return f"the {en_s} is {en_c}."
    if kind == 1:
        return f"a {en_c} {en_s}."
    if kind == 2:
        return f"{ja_s}は{ja_c}です。"
    if kind == 3:
        return f"{ja_c}の{ja_s}です。"
    if kind == 4:  # bilingual glossary lines tie the two vocabularies together
        return f"{en_c} は {ja_c} です。"
    return f"{en_s} は {ja_s} です。"


def _sum_sentence(rng: random.Random) -> str:
    expr, value = rng.choice(easy_problems())
    kind = rng.randrange(4)
    if kind <= 1:
        return f"{expr}={value}"
    pretty = expr.replace("+", " + ").replace("-", " - ")
    return f"{pretty} is {value}." if kind == 2 else f"{pretty} は {value} です。"


def _plain_sentence(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.choice(_EN_PEOPLE)} went to {rng.choice(_EN_PLACES)}."
    return f"{rng.choice(_JA_PEOPLE)}は{rng.choice(_JA_PLACES)}へ{rng.choice(_JA_VERBS)}。"


def base_corpus(n: int, seed: int) -> list[Example]:
    """Pretraining text: 45 % world sentences, 35 % two-operand sums (bare and in sentences), 20 % other."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        text = _world_sentence(rng) if r < 0.45 else _sum_sentence(rng) if r < 0.8 else _plain_sentence(rng)
        out.append(("", text))
    return out


def _ja_world_qa(rng: random.Random) -> Example:
    """A Japanese question about a shape described in Japanese or English (the VLM stage asks the same
    questions about a picture, whose features the LLaVA aligned to English words)."""
    (en_c, ja_c, _), (en_s, ja_s) = rng.choice(COLOURS), rng.choice(SHAPES)
    described = rng.choice((f"{ja_c}の{ja_s}です。", f"{ja_s}は{ja_c}です。", f"a {en_c} {en_s}."))
    kind = rng.choice(("colour", "shape"))
    answer = JA_ANSWER.format(word=ja_c if kind == "colour" else ja_s)
    return JA_FORMAT.format(q=described + JA_QUESTIONS[kind]), answer


def ja_corpus(n: int, seed: int, design: Design) -> list[Example]:
    """The Japanese sibling's instructions: 50 % world Q/A, 50 % two-operand sums, Japanese format."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(_ja_world_qa(rng))
        else:
            expr, value = rng.choice(easy_problems())
            out.append((JA_FORMAT.format(q=question(expr, design)), ja_answer(expr, value, design)))
    return out


def math_corpus(n: int, seed: int, design: Design) -> list[Example]:
    """The math sibling's data: 80 % three-operand problems (never from the test split), 20 % two-operand
    ones; asked in the English format, or (``symbolic``) as bare sums ``3+4-2=5`` like a math corpus."""
    rng = random.Random(seed)
    train = hard_split("fitness") + hard_split("validation")
    out = []
    for _ in range(n):
        expr, value = rng.choice(train) if rng.random() < 0.8 else rng.choice(easy_problems())
        if design == "symbolic":
            out.append(("", f"{expr}={value}"))
        else:
            out.append((EN_FORMAT.format(q=expr), en_answer(expr, value, design)))
    return out
