"""Japanese ROUGE with the seed's language filter: ``rougeL`` and ``rougeL_ja``.

Definitions (SakanaAI/evolutionary-model-merge, ``evomerge/eval/metrics.py`` ``rouge_ja`` and
``evomerge/eval/utils.py`` ``compute_score``):

- each text is normalised and split into MeCab words (``tsugiki.benchmarks.text``);
- per pair, ``rouge_score``'s ROUGE-1, ROUGE-2 and ROUGE-L (longest common subsequence)
  precision / recall / F; an empty token list on either side scores 0;
- corpus score: ``BootstrapAggregator`` (1000 resamples, ``np.random.seed(42)``), the *mid*
  F-measure x 100, with low/high the 95% interval;
- language filter (on the raw text, newlines removed): if the reference is Japanese
  (``P(ja) >= 0.5``) and the prediction is not (``P(ja) < 0.5``), the prediction becomes ``""``;
  a non-Japanese reference (e.g. "UFO") keeps the prediction as is. The filtered pass gives the
  ``*_ja`` scores.

The seed computes rouge1, rouge2, rougeL, then rouge1_ja, rouge2_ja, rougeL_ja, each bootstrap
reading the next block of one seeded stream; we do the same, so all six equal the seed's exactly.

Speed (same numbers): one tagger, each distinct text tokenised once and identified once, the
filtered pass reuses the unfiltered per-pair scores (a filtered pair scores 0), LCS by a
bit-parallel algorithm, vectorised bootstrap. ``perf/scoring_speed.py`` measures it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from tsugiki.benchmarks.stats import BootstrapStream, Estimate
from tsugiki.errors import BenchmarkError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
JA_THRESHOLD = 0.5


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b``.

    Bit-parallel (Allison & Dix 1986; Crochemore et al. 2001): bit i of ``v`` is 0 where the LCS
    of ``a[:i+1]`` and the prefix of ``b`` read so far grows; one big-integer update per element
    of ``b``. Equal to ``rouge_score``'s dynamic-programming table, in O(len(b)) integer ops."""
    if not a or not b:
        return 0
    masks: dict = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


class _Text:
    """A text's MeCab words and their unigram / bigram counts, computed once per distinct text."""

    __slots__ = ("tokens", "unigrams", "bigrams")

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.unigrams = Counter(tokens)
        self.bigrams = Counter(zip(tokens, tokens[1:]))


def _overlap_f(ref: Counter, pred: Counter) -> float:
    """``rouge_score``'s n-gram F: clipped overlap over max(count, 1) on each side."""
    overlap = sum((ref & pred).values())
    return _fmeasure(overlap / max(pred.total(), 1), overlap / max(ref.total(), 1))


def _lcs_f(ref: list[str], pred: list[str]) -> float:
    if not ref or not pred:
        return 0.0
    lcs = lcs_length(ref, pred)
    return _fmeasure(lcs / len(pred), lcs / len(ref))


def _pair(ref: _Text, pred: _Text) -> dict[str, float]:
    return {"rouge1": _overlap_f(ref.unigrams, pred.unigrams), "rouge2": _overlap_f(ref.bigrams, pred.bigrams),
            "rougeL": _lcs_f(ref.tokens, pred.tokens)}


def pair_scores(ref_tokens: list[str], pred_tokens: list[str]) -> dict[str, float]:
    """F-measures (0..1) of one pair for rouge1, rouge2, rougeL, from MeCab tokens."""
    return _pair(_Text(ref_tokens), _Text(pred_tokens))


@dataclass(frozen=True)
class RougeJaResult:
    """Corpus scores x 100 (``rougeL``, ``rougeL_ja``, also ``rouge1``/``rouge2`` and their ``_ja``)
    and, per pair in input order, F x 100 and the two Japanese probabilities."""

    scores: dict[str, Estimate]
    per_item: list[dict] = field(repr=False)

    @property
    def rougeL(self) -> float:
        return self.scores["rougeL"].value

    @property
    def rougeL_ja(self) -> float:
        return self.scores["rougeL_ja"].value


def rouge_ja(references: Sequence[str], predictions: Sequence[str], *, language_filter: bool = True,
             tokenizer=None, language_id=None, bootstrap: BootstrapStream | None = None) -> RougeJaResult:
    """Score predictions against references (same length, same order). See the module docstring."""
    from tsugiki.benchmarks.text import check_texts

    references, predictions = check_texts(references, "reference"), check_texts(predictions, "prediction")
    if len(references) != len(predictions):
        raise BenchmarkError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise BenchmarkError("no pairs to score")
    if tokenizer is None:
        from tsugiki.benchmarks.text import default_tokenizer
        tokenizer = default_tokenizer()
    texts: dict[str, _Text] = {}
    for t in (*references, *predictions):
        if t not in texts:
            texts[t] = _Text(tokenizer.tokenize(t))

    per_pair = [_pair(texts[r], texts[p]) for r, p in zip(references, predictions)]
    bootstrap = bootstrap or BootstrapStream()
    scores = {k: bootstrap.estimate([s[k] for s in per_pair]).scaled(100) for k in ROUGE_TYPES}
    per_item = [{k: 100 * s[k] for k in ROUGE_TYPES} for s in per_pair]
    if not language_filter:
        return RougeJaResult(scores, per_item)

    if language_id is None:
        from tsugiki.benchmarks.langid import default_language_id
        language_id = default_language_id()
    empty = pair_scores(["x"], [])  # all zeros: what rouge_score gives an emptied prediction
    filtered = []
    for ref, pred, s, item in zip(references, predictions, per_pair, per_item):
        p_ref = language_id.ja_prob(ref)
        p_pred = language_id.ja_prob(pred)
        dropped = p_ref >= JA_THRESHOLD and p_pred < JA_THRESHOLD
        filtered.append(empty if dropped else s)
        item.update({f"{k}_ja": 100 * filtered[-1][k] for k in ROUGE_TYPES})
        item.update(ja_reference=p_ref, ja_prediction=p_pred, filtered=dropped)
    for k in ROUGE_TYPES:
        scores[f"{k}_ja"] = bootstrap.estimate([s[k] for s in filtered]).scaled(100)
    return RougeJaResult(scores, per_item)
