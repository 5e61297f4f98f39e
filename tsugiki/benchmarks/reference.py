"""The seed's ROUGE-JA scoring, re-implemented plainly, to check our numbers and time us against.

This follows SakanaAI/evolutionary-model-merge (``evomerge/eval/metrics.py`` and
``evomerge/eval/utils.py::compute_score``) call for call: a new MeCab tagger and
``rouge_score.RougeScorer`` per ``rouge_ja`` call (two per evaluation: unfiltered, filtered), every
pair tokenised inside the scorer, ``BootstrapAggregator`` on numpy's global generator seeded with 42
(the seed's ``set_seed(42)``), fastText run per pair with a model loaded once per benchmark object. It needs the ``rouge_score`` package; nothing in the evaluation path
imports this module.
"""

from __future__ import annotations

import re

import numpy as np

from tsugiki.benchmarks.langid import find_lid_model


class SeedMecabTokenizer:
    def __init__(self) -> None:
        from fugashi import Tagger

        self.tagger = Tagger("-Owakati")

    def normalize_answer(self, text: str) -> str:
        import emoji
        import neologdn

        text = "".join("" if emoji.is_emoji(c) else c for c in text)
        text = re.sub("[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF"
                      "\U0001F1E0-\U0001F1FF\U00002702-\U000027B0]+", "", text)
        text = neologdn.normalize(text)
        return " ".join(text.split())

    def tokenize(self, text: str) -> list[str]:
        return self.tagger.parse(self.normalize_answer(text)).split()


def seed_rouge_ja(refs: list[str], preds: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer, scoring

    types = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(types, tokenizer=SeedMecabTokenizer())
    aggregator = scoring.BootstrapAggregator()
    for ref, pred in zip(refs, preds):
        aggregator.add_scores(scorer.score(ref, pred))
    result = aggregator.aggregate()
    return {t: result[t].mid.fmeasure * 100 for t in types} | {
        f"{t}_interval": (result[t].low.fmeasure * 100, result[t].high.fmeasure * 100) for t in types}


class SeedLanguageDetector:
    def __init__(self) -> None:
        import fasttext

        self.model = fasttext.load_model(str(find_lid_model()))

    def __call__(self, text: str) -> dict:
        return dict(zip(*self.model.predict(text.replace("\n", ""), k=-1)))


def seed_compute_score(answers: list[str], predictions: list[str],
                       lang_detect: SeedLanguageDetector | None = None) -> dict[str, float]:
    """``compute_score`` with ``strict_japanese=True``, right after ``set_seed(42)``. The seed loads
    the fastText model once, when the benchmark object is built; pass it as ``lang_detect``."""
    np.random.seed(42)
    lang_detect = lang_detect or SeedLanguageDetector()
    res = seed_rouge_ja(answers, predictions)
    preds = []
    for answer, pred in zip(answers, predictions):
        if lang_detect(answer).get("__label__ja", 0.0) >= 0.5:
            if lang_detect(pred).get("__label__ja", 0.0) < 0.5:
                pred = ""
        preds.append(pred)
    res.update({f"{k}_ja" if not k.endswith("_interval") else k.replace("_interval", "_ja_interval"): v
                for k, v in seed_rouge_ja(answers, preds).items()})
    return res
