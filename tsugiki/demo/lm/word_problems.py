"""Arithmetic word problems in English and Japanese, and the Japanese sibling's instructions.

The seed paper merged a Japanese instruction model with English math models and asked the result
grade-school word problems in Japanese (MGSM-JA). The miniature here, on the real Gemma 3 270M base:

- the *MATH* sibling learns two-step word problems asked in English and answered with short worked
  steps (``7 + 4 = 11, 11 - 2 = 9. The answer is 9.``);
- the *JA* sibling learns Japanese instructions: short facts, descriptive questions answered with a
  short content answer (as in JA-VG-VQA-500: ``赤``, ``3本``), and one-step sums answered in Japanese
  (``3 + 5 = 8。答えは 8 です。``); it never sees a word problem;
- the *target* is two-step word problems asked in Japanese and answered in Japanese.

Every problem is a pair of a template and numbers. Numbers are split once, by a hash of the problem's
kind and operands, into ``train`` (the MATH sibling's), ``fitness``, ``validation`` and ``test``; the
Japanese templates are split too (one set for fitness, one for validation, two for test), so no search
and no training ever sees a held-out problem's numbers or wording.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from tsugiki.evolution.data import Pair

Split = Literal["train", "fitness", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "fitness", "validation", "test")
_SPLIT_BOUNDS = (("train", 55), ("fitness", 70), ("validation", 80), ("test", 100))  # percent, cumulative

EN_PROMPT = "Question: {q}\nAnswer:"
JA_PROMPT = "問題: {q}\n答え:"

# (English plural, Japanese word, Japanese counter)
ITEMS = (("apples", "りんご", "個"), ("pencils", "鉛筆", "本"), ("cards", "カード", "枚"), ("books", "本", "冊"),
         ("stickers", "シール", "枚"), ("candies", "あめ", "個"), ("flowers", "花", "本"), ("coins", "コイン", "枚"))
EN_NAMES = (("Ken", "He"), ("Mary", "She"), ("Tom", "He"), ("Lisa", "She"), ("Sam", "He"), ("Emma", "She"))
JA_NAMES = ("太郎", "花子", "健", "さくら", "翔太", "美咲")

# Two kinds of two-step problem: a + b - c and c x a + b (operands named after the ``add_sub`` form).
EN_TEMPLATES = {
    "add_sub": (
        "{name} has {a} {items}. {pron} gets {b} more and gives {c} to a friend. How many {items} does {name} have now?",
        "There are {a} {items} in a box. {name} puts in {b} more, then takes out {c}. How many {items} are in the box?",
        "{name} bought {a} {items} and then {b} more. {pron} used {c} of them. How many {items} are left?",
    ),
    "mul_add": (
        "{name} has {c} bags with {a} {items} in each bag, and {b} more {items}. How many {items} does {name} have in all?",
        "There are {c} boxes of {a} {items} and {b} loose {items}. How many {items} are there?",
        "{name} collects {a} {items} a day for {c} days. {pron} already had {b}. How many {items} does {name} have now?",
    ),
}
# Japanese templates per split: fitness, validation, test (two).
JA_TEMPLATES = {
    "add_sub": {
        "fitness": ("{name}は{item}を{a}{ctr}持っています。{b}{ctr}もらって、{c}{ctr}あげました。{name}は今{item}を何{ctr}持っていますか？",),
        "validation": ("箱に{item}が{a}{ctr}入っています。{name}が{b}{ctr}入れて、{c}{ctr}取り出しました。箱の中の{item}は何{ctr}ですか？",),
        "test": ("{name}は{item}を{a}{ctr}買い、さらに{b}{ctr}買いました。そのうち{c}{ctr}使いました。残りは何{ctr}ですか？",
                 "机の上に{item}が{a}{ctr}あります。{name}が{b}{ctr}置いて、{c}{ctr}持っていきました。机の上の{item}は何{ctr}になりましたか？"),
    },
    "mul_add": {
        "fitness": ("{name}は{item}が{a}{ctr}ずつ入った袋を{c}つと、ほかに{item}を{b}{ctr}持っています。{item}は全部で何{ctr}ですか？",),
        "validation": ("{item}が{a}{ctr}ずつ入った箱が{c}箱あり、ほかに{b}{ctr}あります。{item}は全部で何{ctr}ありますか？",),
        "test": ("{name}は毎日{item}を{a}{ctr}ずつ{c}日間集めました。はじめに{b}{ctr}持っていました。{item}は全部で何{ctr}になりましたか？",
                 "{c}人の子どもが{item}を{a}{ctr}ずつ持っています。先生は{b}{ctr}持っています。{item}は全部で何{ctr}ありますか？"),
    },
}


@dataclass(frozen=True)
class Problem:
    kind: str  # add_sub | mul_add
    a: int
    b: int
    c: int

    @property
    def value(self) -> int:
        return self.a + self.b - self.c if self.kind == "add_sub" else self.c * self.a + self.b

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.a}/{self.b}/{self.c}"

    def steps(self) -> tuple[str, str]:
        if self.kind == "add_sub":
            s = self.a + self.b
            return f"{self.a} + {self.b} = {s}", f"{s} - {self.c} = {self.value}"
        p = self.c * self.a
        return f"{self.c} × {self.a} = {p}", f"{p} + {self.b} = {self.value}"

    def en_answer(self) -> str:
        one, two = self.steps()
        return f" {one}, {two}. The answer is {self.value}."

    def ja_answer(self) -> str:
        one, two = self.steps()
        return f" {one}、{two}。答えは {self.value} です。"

    def mixed_answer(self) -> str:
        """The MATH sibling's steps closed the way the JA sibling closes a sum (``8 × 5 = 40, 40 + 1 = 41。答えは
        41 です。``): what merges that work both steps in Japanese write (a teacher-forced fitness reference)."""
        one, two = self.steps()
        return f" {one}, {two}。答えは {self.value} です。"


def all_problems() -> list[Problem]:
    out = [Problem("add_sub", a, b, c) for a in range(2, 16) for b in range(2, 16) for c in range(1, 10)]
    out += [Problem("mul_add", a, b, c) for a in range(2, 10) for b in range(1, 16) for c in range(2, 10)]
    return out


def split_of(problem: Problem) -> str:
    h = int(hashlib.sha256(problem.key.encode()).hexdigest()[:8], 16) % 100
    return next(name for name, bound in _SPLIT_BOUNDS if h < bound)


def problems(split: str) -> list[Problem]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return [p for p in all_problems() if split_of(p) == split]


def en_question(p: Problem, rng: random.Random) -> str:
    items, _, _ = rng.choice(ITEMS)
    name, pron = rng.choice(EN_NAMES)
    return rng.choice(EN_TEMPLATES[p.kind]).format(name=name, pron=pron, items=items, a=p.a, b=p.b, c=p.c)


def ja_question(p: Problem, split: str, rng: random.Random) -> str:
    _, item, ctr = rng.choice(ITEMS)
    return rng.choice(JA_TEMPLATES[p.kind][split]).format(name=rng.choice(JA_NAMES), item=item, ctr=ctr,
                                                         a=p.a, b=p.b, c=p.c)


def target_items(split: str, n: int | None = None, seed: int = 0) -> list[Pair]:
    """Japanese word problems of ``split`` (fitness, validation or test): ``prompt`` is the question (wrap
    it in :data:`JA_PROMPT`), ``answer`` the number; ids ``wp_ja/<split>/<kind>/<a>/<b>/<c>``."""
    if split == "train":
        raise ValueError("the train split's numbers are the MATH sibling's; ask target items of fitness, validation or test")
    rng = random.Random(f"target/{split}/{seed}")
    pool = problems(split)
    rng.shuffle(pool)
    pool = pool if n is None else pool[:n]
    return [Pair(ja_question(p, split, rng), str(p.value), f"wp_ja/{split}/{p.key}") for p in pool]


def problem_of(item_id: str) -> Problem:
    kind, a, b, c = item_id.split("/")[-4:]
    return Problem(kind, int(a), int(b), int(c))


# ----------------------------------------------------------------------------- sibling corpora
Example = tuple[str, str]  # (prompt, response): the loss is on the response


def math_corpus(n: int, seed: int) -> list[Example]:
    """The MATH sibling's data: English word problems of the ``train`` numbers, worked in two steps."""
    rng = random.Random(f"math/{seed}")
    pool = problems("train")
    return [(EN_PROMPT.format(q=en_question(p, rng)), p.en_answer()) for p in (rng.choice(pool) for _ in range(n))]


# Short facts, answered as short content (JA-VG-VQA-style answers carry no formulaic suffix).
JA_FACTS = (
    ("日本の首都はどこですか？", "東京"), ("一週間は何日ですか？", "7日"), ("一年は何か月ですか？", "12か月"),
    ("富士山は何県と何県にありますか？", "静岡県と山梨県"), ("空は晴れた日に何色ですか？", "青"),
    ("雪は何色ですか？", "白"), ("日本でいちばん高い山は何ですか？", "富士山"), ("犬の足は何本ですか？", "4本"),
    ("りんごはふつう何色ですか？", "赤"), ("バナナは何色ですか？", "黄色"), ("一日は何時間ですか？", "24時間"),
    ("大阪はどの国の都市ですか？", "日本"), ("朝ごはんはいつ食べますか？", "朝"), ("魚はどこに住んでいますか？", "水の中"),
    ("猫はなんと鳴きますか？", "ニャー"), ("信号の「止まれ」は何色ですか？", "赤"), ("三角形の角はいくつですか？", "3つ"),
    ("四角形の辺はいくつですか？", "4つ"), ("夏の次の季節は何ですか？", "秋"), ("冬は暑いですか、寒いですか？", "寒い"),
)
_JA_COLOURS = ("赤", "青", "白", "黒", "茶色", "金色", "黄色", "緑")
_JA_OBJECTS = (("ボール", "個"), ("車", "台"), ("鳥", "羽"), ("ペン", "本"), ("皿", "枚"), ("犬", "匹"))
_JA_SHAPES = ("円", "四角", "三角")
_JA_PLACES = ("机の上", "箱の中", "庭", "道の上", "棚の上")


def _colour_adj(colour: str) -> str:
    return f"{colour}い" if colour in ("赤", "青", "白", "黒") else f"{colour}の"


def _ja_descriptive(rng: random.Random) -> Example:
    """A described scene and a question about it — colour, count, place or shape — answered with the content
    only. (The VLM stage asks about colours and shapes in pictures; this sibling only ever reads text.)"""
    obj, ctr = rng.choice(_JA_OBJECTS)
    colour, place, n = rng.choice(_JA_COLOURS), rng.choice(_JA_PLACES), rng.randint(1, 9)
    kind = rng.randrange(5)
    if kind >= 3:
        shape = rng.choice(_JA_SHAPES)
        scene = f"紙に{_colour_adj(colour)}{shape}が描かれています。"
        if kind == 3:
            return JA_PROMPT.format(q=scene + "描かれているのはどんな形ですか？"), f" {shape}"
        return JA_PROMPT.format(q=scene + "その図形は何色ですか？"), f" {colour}"
    scene = f"{place}に{_colour_adj(colour)}{obj}が{n}{ctr}あります。"
    if kind == 0:
        return JA_PROMPT.format(q=scene + f"{obj}は何色ですか？"), f" {colour}"
    if kind == 1:
        return JA_PROMPT.format(q=scene + f"{obj}はいくつありますか？"), f" {n}{ctr}"
    return JA_PROMPT.format(q=scene + f"{obj}はどこにありますか？"), f" {place}"


def _ja_one_step(rng: random.Random) -> Example:
    a, b = rng.randint(2, 15), rng.randint(1, 15)
    kind = rng.randrange(3)
    if kind == 0:
        return JA_PROMPT.format(q=f"{a}と{b}を足すといくつですか？"), f" {a} + {b} = {a + b}。答えは {a + b} です。"
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return JA_PROMPT.format(q=f"{a}から{b}を引くといくつですか？"), f" {a} - {b} = {a - b}。答えは {a - b} です。"
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return JA_PROMPT.format(q=f"{a}に{b}をかけるといくつですか？"), f" {a} × {b} = {a * b}。答えは {a * b} です。"


def ja_corpus(n: int, seed: int) -> list[Example]:
    """The JA sibling's instructions: 20 % facts, 40 % descriptive questions, 40 % one-step sums."""
    rng = random.Random(f"ja/{seed}")
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.2:
            q, a = rng.choice(JA_FACTS)
            out.append((JA_PROMPT.format(q=q), f" {a}"))
        elif r < 0.6:
            out.append(_ja_descriptive(rng))
        else:
            out.append(_ja_one_step(rng))
    return out
