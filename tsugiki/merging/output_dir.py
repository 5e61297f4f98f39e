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

Errors while writing (disk full, I/O errors) leave ``OUT`` as it was and no temp dir; they surface
as one :class:`~tsugiki.errors.OutputWriteError` line naming ``OUT`` and the cause.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tsugiki.errors import OutputExistsError, OutputWriteError, TsugikiError
from tsugiki.fileio import holder_pid, record_pid, try_flock

OWNER_FILE = ".tsugiki-owner"
log = logging.getLogger("tsugiki.output")


def _take_owner(d: Path) -> int:
    """Create and lock ``d``'s owner file; the returned fd holds the lock until closed."""
    fd, _ = try_flock(d / OWNER_FILE, wait=True)  # a fresh dir: only a sweep could hold it, for an instant
    record_pid(fd)
    return fd


def _dead_owner(d: Path) -> str | None:
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
        pid = _dead_owner(d)
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


class AtomicOutputDir:
    """A temp directory beside OUT that becomes OUT only when everything succeeded.

    Refuses an existing OUT unless force=True; on any exception the temp dir is removed and OUT is
    left exactly as it was. Entering first removes the debris of dead runs of the same OUT.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.tmp: Path | None = None
        self._owner: int | None = None

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        sweep_debris(self.out)
        if self.out.exists() and not self.force:
            raise OutputExistsError(f"{self.out}: output exists (pass --force to replace it)")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self._owner = _take_owner(self.tmp)
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
        if not self.out.exists():
            os.replace(self.tmp, self.out)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
        fd = _take_owner(old)
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
