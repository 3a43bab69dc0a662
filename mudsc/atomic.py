"""Atomic file writes and cross-process locks for everything mudsc saves (checkpoints, manifests, caches).

A file is written under a temporary name beside its final one and renamed into place, so a reader, a
second writer or a process killed mid-write never leaves half a file under the final name, and an
earlier file there stays intact until the new one is whole. A full disk (ENOSPC) becomes one
:class:`~mudsc.errors.DiskFullError` line naming the path and the space the write needed.
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mudsc.errors import DiskFullError, WriteError


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def _disk_full(path: Path, size: int) -> DiskFullError:
    try:
        free = f"; {human_bytes(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = ""
    return DiskFullError(f"disk full: writing {path} needs {human_bytes(size)} ({size:,} bytes){free}; "
                         "any earlier file there is unchanged: free some space and retry")


def output_dir(path: str | os.PathLike) -> Path:
    """`path` as an existing folder (made with its parents), or a :class:`~mudsc.errors.WriteError`
    saying why it cannot be; output options are checked with it before the work they save."""
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot make the folder {p}: {e.strerror or e}") from None
    return p


@contextmanager
def atomic_path(path: str | os.PathLike, *, size: int) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends.

    `size` is the bytes the write needs (an upper estimate where only the writer knows), for the
    ENOSPC message. On any failure the temporary file is removed and `path` is left as it was; an
    OSError becomes a :class:`~mudsc.errors.WriteError` naming `path`.
    """
    path = Path(path)
    # pid and thread in the name: two writers of one entry never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    output_dir(path.parent)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(path, size) from None
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextmanager
def file_lock(path: str | os.PathLike, *, should_stop: Callable[[], bool] | None = None,
              poll: float = 0.2) -> Iterator[bool]:
    """Hold an exclusive lock on ``<path>.lock`` across processes and threads; the OS frees it if the
    holder dies, so a killed writer never blocks the next one.

    Waits as long as another holder works and yields True once held; yields False, holding nothing,
    if `should_stop()` (checked every `poll` seconds) turns true while waiting.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    held = False
    while not held:
        try:
            lock.acquire(timeout=poll)
            held = True
        except Timeout:
            if should_stop is not None and should_stop():
                break
    try:
        yield held
    finally:
        if held:
            lock.release()
