"""Small file helpers shared across the package: atomic writes, directory locks, JSON-safe values."""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from tsugiki.errors import OutputWriteError, TsugikiError


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename: readers see the old or the new file,
    never a half-written one; a failed write leaves no temp file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def check_writable_dir(path: str | os.PathLike, what: str = "output folder", *, name: object = None) -> None:
    """Refuse, before any work, a folder ``path`` that tsugiki could not write in (created later if missing):
    its nearest existing ancestor must be a folder where a file can be created. One
    :class:`~tsugiki.errors.OutputWriteError` line starting with ``name`` (default ``path``) otherwise."""
    path = Path(path)
    name = path if name is None else name
    here = path
    try:
        while not here.exists() and here != here.parent:
            here = here.parent
        if not here.is_dir():
            raise OutputWriteError(f"{name}: cannot write the {what}: {here} is a file, not a folder")
        fd, probe = tempfile.mkstemp(prefix=".tsugiki-write-check-", dir=here)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if str(here) == str(name) else f"{here}: "
        raise OutputWriteError(f"{name}: cannot write the {what}: {where}{e.strerror or e}") from None


def cache_dir() -> Path:
    """tsugiki's cache (``$TSUGIKI_CACHE``, default ``~/.cache/tsugiki``): the imported real base, source digests."""
    return Path(os.environ.get("TSUGIKI_CACHE") or Path.home() / ".cache" / "tsugiki")


def try_flock(path: Path, *, create: bool = True, wait: bool = False) -> tuple[int, bool]:
    """Open ``path`` (read-write; created unless ``create=False``) and take an exclusive ``flock`` on it:
    (fd, taken). Without ``wait`` a lock held elsewhere is not waited for (taken is False). The lock lasts
    while the fd is open and the process alive: a dead holder's lock (SIGKILL included) is free again."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return fd, False
    return fd, True


def holder_pid(fd: int) -> str:
    """The pid a lock file records ("" if none)."""
    return os.pread(fd, 64, 0).decode(errors="replace").strip()


def record_pid(fd: int) -> None:
    """Record this process's pid in the lock file ``fd`` holds."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def lock_dir(d: Path, *, error: type[TsugikiError] = TsugikiError, what: str = "run dir") -> int:
    """Take ``d/.lock`` (created with ``d``) for this process: an fd that holds an ``flock`` until it is
    closed or the process dies (SIGKILL included), so a dead holder's lock is simply taken over.
    Held by a live process: ``error`` naming the holder's pid, at once."""
    d.mkdir(parents=True, exist_ok=True)
    fd, taken = try_flock(d / ".lock")
    if not taken:
        other = holder_pid(fd) or "?"
        os.close(fd)
        raise error(f"{d}: {what} is in use by another process (pid {other}); wait for it or stop it first") from None
    record_pid(fd)
    return fd


def unlock_dir(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_safe(v: Any) -> Any:
    """JSON-safe: non-finite floats become null (recursively through dicts, lists and tuples)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v
