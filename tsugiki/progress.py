"""Progress that suits where the output goes.

On a terminal: tqdm bars. Anywhere else (a CI log, ``> file``, a pipe): plain lines, at most one every
:data:`INTERVAL` seconds per loop plus one when it ends, with no carriage returns or cursor-control
codes. ``TSUGIKI_PROGRESS_INTERVAL`` sets the interval (seconds; 0 prints every step).

Third-party bars (transformers' "Loading weights", diffusers' sampling steps, ...) would scatter
cursor codes between the project's lines; :func:`quiet_third_party_bars` turns them all off for a
non-interactive CLI run, before any of those libraries is imported.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

INTERVAL = 5.0


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default: stderr, where progress goes) is a terminal that draws bars."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def quiet_third_party_bars() -> dict[str, str | None]:
    """Off for every tqdm bar created from now on in this process and its children (tqdm reads
    ``TQDM_DISABLE`` when it is first imported; Hugging Face libraries read
    ``HF_HUB_DISABLE_PROGRESS_BARS``). Returns the previous values, for :func:`restore_env`."""
    saved = {}
    for key in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        saved[key] = os.environ.get(key)
        os.environ[key] = "1"
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class LineProgress:
    """The part of tqdm's interface the project uses, printed as occasional plain lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, file=None, interval: float | None = None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file
        env = os.environ.get("TSUGIKI_PROGRESS_INTERVAL")
        self.interval = interval if interval is not None else float(env) if env else INTERVAL
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._initial = self._shown = initial
        self._closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n != self._shown:  # the last state, unless it was just printed
                self._print()

    def _print(self) -> None:
        self._shown = self.n
        elapsed = time.monotonic() - self._start
        done = self.n - self._initial
        rate = ""
        if elapsed > 0 and done:  # the readable way round: 2.5 it/s, or 21 s/model
            rate = f", {_num(done / elapsed)} {self.unit}/s" if done >= elapsed else f", {_num(elapsed / done)} s/{self.unit}"
        of = f"/{self.total}" if self.total else ""
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc + ': ' if self.desc else ''}{self.n}{of} {self.unit} [{elapsed:.0f} s{rate}]{post}",
              file=self.file or sys.stderr, flush=True)


def _num(x: float) -> str:
    """3 significant digits, never in exponent notation (1820, 21.5, 0.25)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, leave: bool = True, initial: int = 0):
    """A tqdm bar on a terminal (a disabled one with ``disable``), :class:`LineProgress` elsewhere."""
    if disable or interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, disable=disable)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
