"""Japanese text normalisation and MeCab word tokenisation, as the seed's ROUGE evaluation does it.

The seed (SakanaAI/evolutionary-model-merge, ``evomerge/eval/metrics.py``, ``MecabTokenizer``)
normalises a text by (1) deleting every character for which ``emoji.is_emoji`` is true, then every
character in five pictograph ranges, (2) ``neologdn.normalize`` (full/half width, long vowels,
spaces between Japanese characters), (3) collapsing whitespace runs to one space. There is no
lower-casing and no punctuation removal despite the seed's docstring. Tokens are MeCab's wakati
output (fugashi + unidic-lite) split on whitespace.

Differences from the seed are speed only: the emoji deletions are one ``str.translate`` table (the
same set of characters, checked by a test against ``emoji.is_emoji``), and one tagger is built
once per process instead of once per ``rouge_ja`` call.
"""

from __future__ import annotations

import functools

from tsugiki.errors import BenchmarkError

# The seed's second pass: ranges of pictographs deleted after the per-character emoji check.
SEED_EMOJI_RANGES = (
    ("\U0001F600", "\U0001F64F"),  # emoticons
    ("\U0001F300", "\U0001F5FF"),  # symbols & pictographs
    ("\U0001F680", "\U0001F6FF"),  # transport & map symbols
    ("\U0001F1E0", "\U0001F1FF"),  # flags (regional indicators)
    ("\U00002702", "\U000027B0"),  # dingbats
)


def _require(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError:
        raise BenchmarkError(f"Japanese scoring needs the {pip_name!r} package (pip install {pip_name})") from None


@functools.cache
def emoji_deletions() -> dict[int, None]:
    """A ``str.translate`` table deleting every character the seed deletes: those for which
    ``emoji.is_emoji(c)`` holds (single characters in ``EMOJI_DATA``) and the five ranges."""
    emoji = _require("emoji", "emoji")
    table: dict[int, None] = {ord(c): None for c in emoji.EMOJI_DATA if len(c) == 1}
    for lo, hi in SEED_EMOJI_RANGES:
        table.update(dict.fromkeys(range(ord(lo), ord(hi) + 1)))
    return table


def normalize_ja(text: str) -> str:
    """The seed's ``MecabTokenizer.normalize_answer``: drop emoji, ``neologdn.normalize``, collapse spaces."""
    neologdn = _require("neologdn", "neologdn")
    text = text.translate(emoji_deletions())
    text = neologdn.normalize(text)
    return " ".join(text.split())


class MecabTokenizer:
    """MeCab wakati tokenizer (fugashi + unidic-lite) over normalised text; has the ``tokenize``
    method ``rouge_score.RougeScorer`` expects, so it can also be passed to that scorer."""

    def __init__(self) -> None:
        fugashi = _require("fugashi", "fugashi")
        _require("unidic_lite", "unidic-lite")
        try:
            self._tagger = fugashi.Tagger("-Owakati")
        except RuntimeError as e:  # no dictionary found
            raise BenchmarkError(f"could not start MeCab (fugashi + unidic-lite): {e}") from None

    def tokenize(self, text: str) -> list[str]:
        return self._tagger.parse(normalize_ja(text)).split()


@functools.cache
def default_tokenizer() -> MecabTokenizer:
    """One tagger per process (building one takes milliseconds, but the seed builds one per call)."""
    return MecabTokenizer()


def tokenize_ja(text: str) -> list[str]:
    """Normalise ``text`` and split it into MeCab words, e.g. ``"猫が好きです。"`` → ``猫 が 好き です 。``."""
    return default_tokenizer().tokenize(text)


def check_texts(texts, what: str) -> list[str]:
    """``texts`` as a list, or a BenchmarkError naming the first entry that is not text or not valid
    Unicode (a lone surrogate from a ``\\ud800`` JSON escape would crash MeCab and fastText)."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BenchmarkError(f"{what} {i + 1} is {type(t).__name__}, not text")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BenchmarkError(f"{what} {i + 1} is not valid Unicode ({e.reason} at character {e.start + 1})") from None
    return texts
