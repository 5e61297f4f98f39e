"""Strict JSON Lines reading and writing: bad bytes or bad JSON are errors naming ``file:line``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from tsugiki.errors import BenchmarkError
from tsugiki.fileio import atomic_write


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; each line must be one JSON object in UTF-8."""
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as e:
        raise BenchmarkError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BenchmarkError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise BenchmarkError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write ``rows`` as JSON Lines, atomically (a failed write leaves the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def read_text_utf8(path: str | Path) -> str:
    """A whole text file as UTF-8, or an error naming the line of the first bad byte."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BenchmarkError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BenchmarkError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
