"""Benchmarks and metrics as small versioned specs; the pytest suite and the CLI read the same ones.

A ``BenchmarkSpec`` names its data (loader + default source), the prompt and stop strings used
when a text model generates, the metric, and which of the metric's scores ranks the leaderboard.
Bump ``version`` whenever data, prompt or metric change the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from tsugiki.benchmarks import loaders, mgsm
from tsugiki.benchmarks.items import Item
from tsugiki.benchmarks.stats import Estimate
from tsugiki.registry import Registry

#: FID's resize conventions (:mod:`tsugiki.benchmarks.fid`; here so the CLI reads them without torch)
FID_RESIZE_MODES = ("clean", "legacy")

MetricFn = Callable[..., tuple[dict[str, Estimate], list[dict]]]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn  # fn(items, predictions, **options) -> (corpus scores, per-item dicts)
    scores: tuple[str, ...]
    higher_is_better: bool = True
    description: str = ""


def _rouge_ja_metric(items: Sequence[Item], predictions: Sequence[str], *, language_filter: bool = True):
    from tsugiki.benchmarks.rouge import rouge_ja

    res = rouge_ja([i.answer for i in items], predictions, language_filter=language_filter)
    return res.scores, res.per_item


def _mgsm_metric(items: Sequence[Item], predictions: Sequence[str], *, extraction: str = "robust",
                 language_filter: bool = True):
    res = mgsm.score_mgsm(predictions, [i.answer for i in items], extraction=extraction, language_filter=language_filter)
    return res.scores, res.per_item


METRICS: Registry[MetricSpec] = Registry("metric")
METRICS.register("rouge-ja", MetricSpec(
    "rouge-ja", _rouge_ja_metric, ("rougeL", "rougeL_ja", "rouge1", "rouge2", "rouge1_ja", "rouge2_ja"),
    description="ROUGE on MeCab words x100 (bootstrap mid); *_ja after the Japanese-only filter"))
METRICS.register("mgsm", MetricSpec(
    "mgsm", _mgsm_metric, ("acc", "acc_ja"),
    description="accuracy of the extracted number (percent); acc_ja also needs a Japanese response"))


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    title: str
    version: str
    kind: str  # "math" (text in, text out) or "vqa" (image + question)
    load: Callable[..., list[Item]]  # load(source or None) -> items
    metric: str
    primary: str  # the score the leaderboard shows and thresholds apply to
    hub_id: str | None = None
    prompt: str | None = None
    stop: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    metric_options: dict = field(default_factory=dict)
    description: str = ""

    @property
    def higher_is_better(self) -> bool:
        return METRICS.get(self.metric).higher_is_better


BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")
BENCHMARKS.register("mgsm-ja", BenchmarkSpec(
    "mgsm-ja", "MGSM-JA", "1", "math", lambda source=None: loaders.load_mgsm("ja", source), "mgsm", "acc_ja",
    hub_id=loaders.MGSM_HUB_ID, prompt=mgsm.JA_ALPACA_COT_TEMPLATE, stop=mgsm.SEED_STOP_STRINGS,
    max_new_tokens=mgsm.SEED_MAX_NEW_TOKENS, metric_options={"extraction": "robust"},
    description="250 grade-school math problems in Japanese, zero-shot CoT (the seed's prompt), greedy"))
BENCHMARKS.register("mgsm-en", BenchmarkSpec(
    "mgsm-en", "MGSM-EN", "1", "math", lambda source=None: loaders.load_mgsm("en", source), "mgsm", "acc",
    hub_id=loaders.MGSM_HUB_ID, prompt=mgsm.EN_ALPACA_COT_TEMPLATE, stop=mgsm.SEED_STOP_STRINGS,
    max_new_tokens=mgsm.SEED_MAX_NEW_TOKENS, metric_options={"extraction": "robust", "language_filter": False},
    description="the same 250 problems in English, for comparison (no Japanese check)"))
BENCHMARKS.register("ja-vg-vqa-500", BenchmarkSpec(
    "ja-vg-vqa-500", "JA-VG-VQA-500", "1", "vqa", loaders.load_ja_vg_vqa, "rouge-ja", "rougeL_ja",
    hub_id=loaders.JA_VG_VQA_500.hub_id,
    description="500 Japanese questions on Visual Genome images (qas[0] of each row)"))
BENCHMARKS.register("ja-vlm-wild", BenchmarkSpec(
    "ja-vlm-wild", "JA-VLM-Bench-In-the-Wild", "1", "vqa", loaders.load_ja_vlm_wild, "rouge-ja", "rougeL_ja",
    hub_id=loaders.JA_VLM_WILD.hub_id,
    description="50 Japanese questions on 42 images from the web"))
