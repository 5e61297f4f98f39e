"""Benchmark results on disk: one JSON per (model, benchmark) with scores and intervals, and a
JSONL of per-item predictions and scores beside it.

Layout under a results folder: ``<model>/<benchmark>.json`` and ``<model>/<benchmark>.items.jsonl`` (model and
benchmark names made file-name safe: ``lm-eval:arc_easy`` -> ``lm-eval_arc_easy``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tsugiki.benchmarks.jsonl import write_jsonl
from tsugiki.benchmarks.stats import Estimate
from tsugiki.errors import BenchmarkError, OutputWriteError
from tsugiki.fileio import atomic_write

SCHEMA = "tsugiki.benchmark-result/1"


@dataclass
class BenchmarkResult:
    model: str
    benchmark: str
    title: str
    version: str
    metric: str
    primary: str
    higher_is_better: bool
    scores: dict[str, Estimate]
    n: int
    settings: dict = field(default_factory=dict)
    created: str = ""
    items: list[dict] = field(default_factory=list, repr=False)  # written to the .items.jsonl only

    @property
    def value(self) -> float:
        """The primary score (what the leaderboard shows and thresholds compare)."""
        return self.scores[self.primary].value

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "benchmark": self.benchmark, "title": self.title,
                "version": self.version, "metric": self.metric, "primary": self.primary,
                "higher_is_better": self.higher_is_better, "n": self.n,
                "scores": {k: v.as_dict() for k, v in self.scores.items()},
                "settings": self.settings, "created": self.created}

    @classmethod
    def from_json(cls, data: dict, where: str = "result") -> "BenchmarkResult":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise BenchmarkError(f"{where}: not a tsugiki benchmark result (schema {SCHEMA})")
        try:
            scores = {k: Estimate(float(v["value"]), float(v["low"]), float(v["high"])) for k, v in data["scores"].items()}
            result = cls(model=str(data["model"]), benchmark=str(data["benchmark"]), title=str(data["title"]),
                         version=str(data["version"]), metric=str(data["metric"]), primary=str(data["primary"]),
                         higher_is_better=bool(data["higher_is_better"]), scores=scores, n=int(data["n"]),
                         settings=dict(data.get("settings", {})), created=str(data.get("created", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BenchmarkError(f"{where}: malformed result ({type(e).__name__}: {e})") from None
        if result.primary not in result.scores:
            raise BenchmarkError(f"{where}: primary score {result.primary!r} is not among its scores")
        return result


def slug(name: str) -> str:
    """A file-name-safe form of a model label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def write_result(result: BenchmarkResult, results_dir: str | Path) -> Path:
    """Write ``<model>/<benchmark>.json`` and ``.items.jsonl``; returns the JSON's path."""
    folder = Path(results_dir) / slug(result.model)
    path = folder / f"{slug(result.benchmark)}.json"
    data = result.to_json() | {"items_file": f"{slug(result.benchmark)}.items.jsonl"}
    try:
        write_jsonl(folder / data["items_file"], result.items)
        atomic_write(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    except OSError as e:
        raise OutputWriteError(f"{path}: cannot write the result: {e.filename or path}: {e.strerror or e}") from None
    return path


def read_result(path: str | Path) -> BenchmarkResult:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"cannot read result {path}: {e}") from None
    return BenchmarkResult.from_json(data, str(path))


def find_results(paths: Iterable[str | Path]) -> list[BenchmarkResult]:
    """Results from files and folders (searched recursively for result JSONs; other JSON skipped)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(data, dict) and data.get("schema") == SCHEMA:
                    found.append(BenchmarkResult.from_json(data, str(f)))
        elif p.is_file():
            found.append(read_result(p))
        else:
            raise BenchmarkError(f"{p} does not exist")
    return found
