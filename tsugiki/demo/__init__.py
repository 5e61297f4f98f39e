"""`tsugiki demo`: the seed paper's three experiments in miniature (LM and VLM on the real Gemma 3 270M, SDXL
tiny), offline, with an honest report.

Stages (each returns a :class:`tsugiki.demo.stage.StageResult`): :mod:`~tsugiki.demo.lm.stage`
(EvoLLM-JP), :mod:`~tsugiki.demo.vlm.stage` (EvoVLM-JP), :mod:`~tsugiki.demo.sdxl.stage` (EvoSDXL-JP);
:mod:`~tsugiki.demo.run` runs them and :mod:`~tsugiki.demo.report` writes results.json, the HTML
report and the leaderboard.
"""
