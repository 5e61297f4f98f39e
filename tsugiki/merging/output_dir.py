"""Atomic output directories that a killed run never leaves behind half-written, nor as debris.

An output ``OUT`` is built in a temp dir beside it, ``.OUT.tmp-XXXX``, which becomes ``OUT`` by one
rename once everything in it is written. Replacing an existing ``OUT`` (``force=True``) parks the old
one in ``.OUT.old-XXXX`` for the instant between the two renames.

Each such dir holds an owner file (:data:`OWNER_FILE`: the owner's pid) that the owning process keeps
locked (``flock``) for as long as the dir is its own. The kernel drops the lock when the process
dies, however it dies (SIGKILL included), so the next run for the same ``OUT`` can tell debris from
a dir another live process is filling: it removes the temp dirs whose lock it can take, and only
those, with one warning line each. A parked old ``OUT`` whose owner died before the new one took its
place is put back as ``OUT``. A temp dir without an owner file (left by tsugiki < 0.2, or by a
kill in the instant between creating the dir and its owner file) is removed as well.

Errors while writing (disk full, I/O errors, a read-only location) leave ``OUT`` as it was and no temp
dir; they surface as one :class:`~tsugiki.errors.OutputWriteError` line naming ``OUT`` and the cause.

A committed ``OUT`` holds :data:`MARKER_FILE`, which says tsugiki wrote it. ``force=True`` replaces an
existing ``OUT`` only if it has that marker, a model card tsugiki wrote (outputs of tsugiki < 0.2) or
nothing at all; :func:`check_output` refuses anything else in one line, before any work, as it refuses
an ``OUT`` that is, holds or lies inside one of the sources, or is the current directory or a parent of it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from tsugiki.version import __version__
from tsugiki.errors import OutputExistsError, OutputWriteError, TsugikiError
from tsugiki.fileio import check_writable_dir, holder_pid, record_pid, try_flock

OWNER_FILE = ".tsugiki-owner"
MARKER_FILE = ".tsugiki-output"
log = logging.getLogger("tsugiki.output")


def take_owner(d: Path) -> int:
    """Create and lock ``d``'s owner file; the returned fd holds the lock until closed."""
    fd, _ = try_flock(d / OWNER_FILE, wait=True)  # a fresh dir: only a sweep could hold it, for an instant
    record_pid(fd)
    return fd


def dead_owner(d: Path) -> str | None:
    """``d``'s owner pid (or "unknown") if its owner is gone; None while a live process holds it."""
    try:
        fd, taken = try_flock(d / OWNER_FILE, create=False)
    except FileNotFoundError:
        return "unknown"
    except OSError:
        return None  # not ours to judge (permissions): leave it
    pid = holder_pid(fd) or "unknown"
    os.close(fd)  # closing drops the lock again (if taken); the dir is removed next
    return pid if taken else None


def sweep_debris(out: str | os.PathLike) -> list[Path]:
    """Remove what dead runs writing ``out`` left beside it; returns the dirs removed (or restored)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    removed = []
    for d in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind = d.name[len(out.name) + 2:].split("-", 1)[0]
        if kind not in ("tmp", "old") or not d.is_dir() or d.is_symlink():
            continue
        pid = dead_owner(d)
        if pid is None:
            continue
        if kind == "old" and (d / "x").exists() and not out.exists():
            os.replace(d / "x", out)  # the replacement never arrived: the old output is the output again
            log.warning("%s: restored the previous output, which a run (pid %s) killed while replacing it had set aside in %s",
                        out, pid, d.name)
        else:
            log.warning("%s: removed %s, left by a run (pid %s) that is no longer running", out, d.name, pid)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _tsugiki_card(readme: Path) -> bool:
    """Whether ``readme`` is a model card tsugiki wrote (its front matter's tags name tsugiki)."""
    try:
        head = readme.read_text(encoding="utf-8", errors="replace")[:1000]
    except OSError:
        return False
    return head.startswith("---") and any(line.startswith("tags: [") and "tsugiki" in line for line in head.splitlines())


def _not_replaceable(out: Path) -> str | None:
    """Why ``force`` may not replace the existing ``out``; None if tsugiki wrote it or it is empty."""
    if out.is_symlink() or not out.is_dir():
        return "it is not a folder tsugiki wrote"
    names = sorted(p.name for p in out.iterdir())
    if not names or MARKER_FILE in names or _tsugiki_card(out / "README.md"):
        return None
    return f"it holds files tsugiki did not write: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def check_output(out: str | os.PathLike, *, force: bool = False, sources: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse in one line, before any work, an output dir ``out`` that :class:`AtomicOutputDir` may not write:
    the current directory or a parent of it; one of ``sources`` (model dirs or files), or a dir holding one or
    inside one; an existing ``out`` without ``force``, or with it one tsugiki did not write; a location where
    nothing can be written (a file in the way, read-only)."""
    out = Path(out)
    real, cwd = out.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise OutputExistsError(f"{out}: not used as output: it is the current directory or a parent of it")
    for src in map(Path, sources):
        s = src.resolve()
        if real == s or real in s.parents or (s in real.parents and s.is_dir()):
            how = "is" if real == s else "holds" if real in s.parents else "lies inside"
            raise OutputExistsError(f"{out}: not used as output: it {how} the source {src}")
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputExistsError(f"{out}: output exists (pass --force to replace it)")
        why = _not_replaceable(out)
        if why:
            raise OutputExistsError(f"{out}: not replaced although --force was given: {why}")
    check_writable_dir(out.parent, "output", name=out)


class AtomicOutputDir:
    """A temp directory beside OUT that becomes OUT only when everything succeeded.

    Refuses what :func:`check_output` refuses (an existing OUT unless force=True, and with it only one
    tsugiki wrote; one overlapping ``sources``); on any exception the temp dir is removed and OUT is left
    exactly as it was. Entering first removes the debris of dead runs of the same OUT.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False, sources: Iterable[str | os.PathLike] = ()):
        self.out = Path(out)
        self.force = force
        self.sources = list(sources)
        self.tmp: Path | None = None
        self._owner: int | None = None

    def __enter__(self) -> Path:
        try:
            sweep_debris(self.out)  # first: it may put a parked previous OUT back
            check_output(self.out, force=self.force, sources=self.sources)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
            self._owner = take_owner(self.tmp)
        except OSError as e:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise _write_error(self.out, self.tmp or self.out.parent, e) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                if isinstance(exc, OSError) and not isinstance(exc, TsugikiError):
                    raise _write_error(self.out, self.tmp, exc) from None
                return
            try:
                self._commit()
            except OSError as e:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise _write_error(self.out, self.tmp, e) from None
        finally:
            os.close(self._owner)
            self._owner = None

    def _commit(self) -> None:
        os.chmod(self.tmp, 0o755)
        (self.tmp / OWNER_FILE).unlink()
        (self.tmp / MARKER_FILE).write_text(f"written by tsugiki {__version__}; `--force` may replace this folder\n")
        if not self.out.exists():
            os.replace(self.tmp, self.out)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
        fd = take_owner(old)
        try:
            os.replace(self.out, old / "x")
            os.replace(self.tmp, self.out)
        finally:
            os.close(fd)
        shutil.rmtree(old, ignore_errors=True)


def _write_error(out: Path, tmp: Path, e: OSError) -> OutputWriteError:
    cause = os.strerror(e.errno) if e.errno else str(e)
    if e.filename and not str(e.filename).startswith(str(tmp)):
        return OutputWriteError(f"{out}: not written: {e.filename}: {cause}")
    hint = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return OutputWriteError(f"{out}: writing failed{hint}: {cause}; nothing was written, the previous state is kept")
