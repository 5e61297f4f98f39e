"""The run directory: files, a lock against a second writer, atomic checkpoints.

Layout::

    config.yaml        the validated config (absolute paths); what --resume reads; written first
    run.json           format and the config's fingerprint (resume refuses an edited config.yaml);
                       written when the search starts: until then, another config may take the dir
    history.jsonl      one line per evaluated candidate, in (generation, index) order, with its raw
                       CMA-ES vector ``x`` (JSON numbers, shortest round-trip repr: exact float64)
    generations.jsonl  one line per finished generation (best, mean, validation of its best, ...)
    best.yaml          the best candidate so far (a tsugiki/mergekit recipe where the space has one)
    best.json          its generation, index, fitness, validation score and parameters
    front.json         a multi-objective run's Pareto front of evaluated candidates (tsugiki.evolution.front)
    calibration.jsonl  with fitness.estimate (anchors, irt): per-item scores of the calibration models
    estimator.json     with fitness.estimate: the fitted estimator, read back on resume
    plots/*.png        fitness curve, PS heatmap or DFS path and scales (at the end of a run)
    .lock              held (flock) by the process writing the run

Every file is text (YAML / JSON); nothing in a run dir is unpickled. (A fitness function that
config.yaml names as code, a module or a ``.py`` file, runs on resume only with ``--allow-code``.) A
generation's line in ``generations.jsonl`` is its commit point: history lines are appended (and
fsynced) as candidates finish, in index order, then the generation line. Resuming rebuilds the
optimiser's state by replaying the committed generations (see :func:`tsugiki.evolution.replay.replay`):
a fresh optimiser from the config asks, the asked vectors must equal the recorded ``x`` exactly, and
it is told the recorded costs. History lines of the interrupted generation are reused when they
match the re-asked candidates exactly; a partly written last line (a kill mid-write) is cut off, so
the resumed history is the uninterrupted one. Anything else that does not fit is refused before a
file is changed. (A ``state.pkl`` left by older versions is ignored, never loaded.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from tsugiki.errors import EvolutionError
from tsugiki.fileio import atomic_write, json_safe, lock_dir, unlock_dir

CALIBRATION = "calibration.jsonl"  # estimated fitness (tsugiki.evolution.calibrate)
ESTIMATOR = "estimator.json"
RUN_FORMAT = 2  # 1: CMA-ES state in state.pkl (no longer read); 2: replayed from the logs


def json_line(obj: dict) -> bytes:
    return (json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False) + "\n").encode()


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # ---- files ----------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.file("config.yaml")

    def exists(self) -> bool:
        return self.config_file.exists()

    def check_usable(self, *, resume: bool) -> None:
        """Refuse, before anything is written, a path that cannot hold the run: one that is not a folder;
        for a resume, a folder with no run; for a new run, a folder holding anything but a run's files."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise EvolutionError(f"{p}: not a folder; a run dir is a new or empty folder")
        if self.exists():
            return
        if resume:
            raise EvolutionError(f"{p}: not a run dir (no config.yaml) to resume")
        others = sorted(c.name for c in p.iterdir() if c.name not in (".lock", "models", "ps_model")) if p.is_dir() else []
        if others:
            raise EvolutionError(f"{p}: exists and is not a tsugiki run dir (holds {others[0]!r}); choose an empty or new dir")

    # ---- lock -----------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the run dir (created if new); its first write: a location that refuses it (read-only,
        no permission, a file on the way) is one line naming the path."""
        try:
            self._lock_fd = lock_dir(self.path, error=EvolutionError)
        except OSError as e:
            raise EvolutionError(f"{self.path}: cannot write the run dir here ({e.strerror or e})") from None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            unlock_dir(self._lock_fd)
            self._lock_fd = None

    # ---- run.json -------------------------------------------------------------------------------
    def read_meta(self) -> dict | None:
        p = self.file("run.json")
        if not p.exists():
            return None
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EvolutionError(f"{p}: unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
            raise EvolutionError(f"{p}: run dir of an unknown format ({meta.get('format') if isinstance(meta, dict) else meta!r})")
        return meta

    def write_meta(self, fingerprint: str) -> None:
        atomic_write(self.file("run.json"), json_line({"format": RUN_FORMAT, "fingerprint": fingerprint}))

    # ---- append-only logs -----------------------------------------------------------------------
    def size(self, name: str) -> int:
        p = self.file(name)
        return p.stat().st_size if p.exists() else 0

    def append(self, name: str, obj: dict) -> None:
        with open(self.file(name), "ab") as f:
            f.write(json_line(obj))
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, name: str, size: int) -> None:
        p = self.file(name)
        if p.exists() and p.stat().st_size != size:
            with open(p, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())
        elif not p.exists() and size:
            raise EvolutionError(f"{p}: missing, but should hold {size} bytes")

    def lines_after(self, name: str, offset: int) -> Iterator[tuple[dict, int]]:
        """Complete, valid JSON lines after byte ``offset``, each with the offset of its end."""
        p = self.file(name)
        if not p.exists():
            return
        with open(p, "rb") as f:
            f.seek(offset)
            pos = offset
            for raw in f:
                if not raw.endswith(b"\n"):
                    return
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    return
                pos += len(raw)
                yield obj, pos

    def check_tail(self, name: str, offset: int) -> None:
        """What follows byte ``offset`` (the end of the valid lines) may only be one partly written
        line, as a kill mid-append leaves; anything else is a damaged log, refused."""
        p = self.file(name)
        if p.exists() and p.stat().st_size > offset:
            with open(p, "rb") as f:
                f.seek(offset)
                if b"\n" in f.read():
                    raise EvolutionError(f"{self.path}: {name} holds an invalid line after byte {offset}; "
                                         f"the run dir is damaged, not resumed (nothing was changed)")

    def read_jsonl(self, name: str) -> list[dict]:
        return [obj for obj, _ in self.lines_after(name, 0)]
