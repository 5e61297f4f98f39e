"""The demo's small bilingual world: the words every demo model shares.

The base LM is trained on this vocabulary in English and Japanese; the VLM stage draws its scenes and
asks its questions with the same colour and shape words, so that a Japanese LM grafted into the tiny
LLaVA has a chance to name in Japanese what the vision tower was aligned to in English. Only
characters the project's char tokenizer covers are used (checked by :func:`check_covered`).
"""

from __future__ import annotations

from typing import Iterable

# English name, Japanese name, RGB used when drawing
COLOURS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("red", "赤", (220, 30, 30)),
    ("blue", "青", (30, 60, 220)),
    ("white", "白", (245, 245, 245)),
    ("black", "黒", (15, 15, 15)),
    ("brown", "茶色", (130, 80, 40)),
    ("gold", "金色", (230, 190, 40)),
)
SHAPES: tuple[tuple[str, str], ...] = (("circle", "円"), ("square", "四角"), ("triangle", "三角"))


def check_covered(texts: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the first character the char tokenizer would map to ``<unk>``."""
    from tsugiki.factory.tokenizer import char_vocab

    vocab = set(char_vocab())
    for t in texts:
        for ch in t:
            if ch not in vocab:
                raise ValueError(f"character {ch!r} in {t!r} is not in the char tokenizer's vocabulary")


# The two instruction formats of the demo's LMs. The Japanese sibling learns JA_FORMAT, the math
# sibling EN_FORMAT; the base model knows neither (it is a "pretrained" model: sentences and sums).
JA_FORMAT = "問題: {q} 応答: "
EN_FORMAT = "Q: {q} A: "

# Questions about one shape (the VLM stage asks them about pictures; the JA sibling learns the Japanese
# ones about a described shape, so that a grafted Japanese LM knows the question and the answer form).
EN_QUESTIONS: dict[str, str] = {"colour": "What colour is it?", "shape": "What shape is it?"}
JA_QUESTIONS: dict[str, str] = {"colour": "この図形は何色ですか？", "shape": "この図形の形は何ですか？"}
JA_ANSWER = "{word}です。"
