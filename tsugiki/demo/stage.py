"""What every demo stage returns, and what it is given.

A stage (``lm``, ``vlm``, ``sdxl``) evaluates models and returns a :class:`StageResult`: one
:class:`Row` per model (its role, metric values and confidence intervals), the name of the stage's
headline metric, and whatever the report should show (tables, figures, samples, plain notes).
``results.json`` is these results as JSON (see :func:`StageResult.to_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["source", "baseline", "evolved"]
ROLES: tuple[str, ...] = ("source", "baseline", "evolved")


@dataclass
class Row:
    """One evaluated model. ``metrics`` are the numbers the stage computed (e.g. ``acc`` in percent);
    ``ci`` holds ``[lo, hi]`` for those that have an interval; ``extra`` is free-form detail that the
    report may show (e.g. per-seed values) but that is not part of the results schema."""

    model: str
    role: Role
    metrics: dict[str, float]
    ci: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"row {self.model!r}: role must be one of {ROLES}, not {self.role!r}")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "role": self.role, "metrics": dict(self.metrics),
                "ci": {k: [float(v[0]), float(v[1])] for k, v in self.ci.items()}}


@dataclass
class Figure:
    """An image file (relative to the run dir) with a caption, shown in the HTML report."""

    path: str
    caption: str


@dataclass
class Table:
    """A table for the report: a title, column headers and rows of already formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Sample:
    """A sample generation: which model, the prompt, its output, optionally the expected answer and an
    image file (relative to the run dir) the prompt is about or that the model produced."""

    model: str
    prompt: str
    output: str
    expected: str | None = None
    image: str | None = None


@dataclass
class StageResult:
    stage: str  # "lm", "vlm" or "sdxl"
    headline: str  # the metric name rows are ranked by (higher is better unless ``lower_is_better``)
    rows: list[Row]
    lower_is_better: bool = False
    title: str = ""
    verdict: str = ""  # one or two plain sentences: did the evolved model win, by how much
    notes: list[str] = field(default_factory=list)  # e.g. "FID here uses a random-init extractor; ..."
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    models: dict[str, str] = field(default_factory=dict)  # model name -> HF dir (relative to run dir)

    def to_json(self) -> dict[str, Any]:
        return {"headline": self.headline, "lower_is_better": self.lower_is_better, "title": self.title,
                "verdict": self.verdict, "notes": list(self.notes), "seconds": round(self.seconds, 2),
                "models": dict(self.models), "rows": [r.to_json() for r in self.rows]}


@dataclass(frozen=True)
class StageContext:
    """Where a stage writes (``out`` = RUN_DIR/<stage>, created by the caller), how big it runs
    (``quick``: the CI budget, every stage in well under a minute), and its seed."""

    run_dir: Path
    out: Path
    quick: bool = False
    seed: int = 0
    progress: bool = True

    def say(self, message: str) -> None:
        """A progress line for the terminal (silent with ``progress=False``)."""
        if self.progress:
            print(message, flush=True)

    def rel(self, path: Path) -> str:
        """``path`` relative to the run dir (for results.json and the report)."""
        return Path(path).resolve().relative_to(self.run_dir.resolve()).as_posix()
