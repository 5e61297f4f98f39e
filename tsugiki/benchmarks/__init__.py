"""Japanese benchmark loaders, metrics and leaderboards (the seed paper's evaluations).

Modules, each small and importable on its own (nothing heavy is imported here):

- ``specs``: the benchmark and metric registries (``BENCHMARKS``, ``METRICS``): data, prompt, metric,
  primary score, version.
- ``loaders`` / ``items``: JA-VG-VQA-500, JA-VLM-Bench-In-the-Wild (hub id or local parquet / JSONL +
  images) and MGSM (vendored TSVs in ``data/mgsm``, CC BY 4.0) as ``VQAItem`` / ``MathItem``.
- ``text``, ``langid``, ``rouge``, ``stats``: MeCab-tokenised ROUGE with the fastText Japanese filter
  and the seed's bootstrap, equal to the seed's numbers; ``mgsm``: prompt, answer extraction, acc.
- ``predictors``: the ``Predictor`` interface (``predict(items) -> list[str]``) and its file, callable
  and Hugging Face causal-LM implementations.
- ``runner``, ``cases``, ``results``, ``leaderboard``: run cases, write results, merge leaderboards.
- ``t2i``, ``fid``, ``hps``: text-to-image evaluation of SDXL pipelines (``tsugiki eval t2i``).
- ``samples``: tiny sample sets in the hub schemas; ``reference``: the seed's scoring, re-implemented
  plainly, for tests and ``perf/scoring_speed.py``.
"""
