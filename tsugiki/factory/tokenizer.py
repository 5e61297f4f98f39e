"""A deterministic character-level tokenizer for tiny Japanese + ASCII test models.

Every character is one token: a BPE model with no merges and no pre-tokenizer, so any
text splits into single characters, characters outside the vocabulary become ``<unk>``,
and the ``Fuse`` decoder joins tokens back with no separator (``decode(encode(t)) == t``
for covered text). Built offline from literals in this file; same vocabulary every call.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0, 1, 2, 3
VOCAB_MULTIPLE = 64

JA_PUNCT = "\u3000、。〃々〆〇〈〉《》「」『』【】〒〔〕〜・ー（）？！：；＿～…‥％＋－＝＜＞＆＊／＠＃￥"
FULLWIDTH_DIGITS = "".join(chr(c) for c in range(ord("０"), ord("９") + 1))
HIRAGANA = "".join(chr(c) for c in range(0x3041, 0x3097)) + "ゝゞ"  # ぁ..ゖ
KATAKANA = "".join(chr(c) for c in range(0x30A1, 0x30FB)) + "ヽヾ"  # ァ..ヺ
# A fixed set of common kanji (roughly the first school grades plus frequent extras).
KANJI = (
    "一二三四五六七八九十百千万円年月日時分半今週曜朝昼夜毎"
    "人子女男父母兄弟姉妹友名私自分先生学校室教員医者"
    "上下左右中前後内外東西南北間近遠高低大小長短多少新古"
    "山川田林森天空雨雪風花草木竹石金土水火気電車道駅店"
    "本文字語話言読書聞見来行帰出入休止歩走立座開閉始終"
    "会社仕事作使買売食飲物料理家族国語英数算答問題計算"
    "手足目耳口頭顔体心力声音色赤青白黒明暗強弱早遅"
    "春夏秋冬海町村都市県区場所地図紙何誰方法正誤"
    "思考知分解説明確認記録通信送受持待話歌楽"
    "好悪良安重軽同違以外全部毎回度番号次最初後"
    "犬猫鳥魚牛馬虫貝米茶肉飯野菜果茶酒薬病院"
    "合計平均整理由意味感情愛美少年画映英和漢字"
    "発表実験結果用意点線形角円半径面積体積速度"
    "京都大阪東京北海道沖縄横浜名古屋神戸福岡"
    "元気天気電話番組新聞雑誌写真映画音楽旅行"
    "世界晴曇僕君彼達様的性化対関係現在過去未来生活"
    "経済政治歴史科学技術研究情報報告質疑応特別"
    "変更追加削除選択設定状態結合接木進化評価試"
    "です方向機械学習模型言葉文章翻訳要約"
)


def _unique(chars: str) -> list[str]:
    """Characters of ``chars`` in first-seen order, without repeats."""
    return list(dict.fromkeys(chars))


def char_vocab() -> list[str]:
    """The ordered token list (before padding): special tokens, then every covered character."""
    chars = _unique(
        string.printable + JA_PUNCT + FULLWIDTH_DIGITS + HIRAGANA + KATAKANA + KANJI
    )
    return list(SPECIAL_TOKENS) + [c for c in chars if c not in SPECIAL_TOKENS]


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_char_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Build the character tokenizer; its vocabulary is padded with ``<reserved_i>`` tokens to a
    multiple of 64 (and to at least ``vocab_size`` when given)."""
    tokens = char_vocab()
    target = max(len(tokens), vocab_size or 0)
    target = -(-target // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    tokens += [f"<reserved_{i}>" for i in range(target - len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # Like Llama: ``encode(text)`` prepends ``<s>``; ``add_special_tokens=False`` does not.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )
