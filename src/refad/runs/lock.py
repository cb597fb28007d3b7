"""One writer per folder: a run being trained, resumed or tested, a prediction output.

An advisory `flock` on `.refad.lock` inside the folder: the kernel drops it when the holder
exits, however it exits (SIGKILL included), so a lock is never left stale. The file keeps
the holder's pid, for the message the second writer gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from refad.atomic import ensure_dir
from refad.errors import RefadError

LOCK_FILE = ".refad.lock"


@contextlib.contextmanager
def folder_lock(folder: Path | str, purpose: str) -> Iterator[None]:
    """Hold the folder's lock for the block, or fail at once naming the other process."""
    folder = ensure_dir(folder)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RefadError(f"{path}: cannot create lock file ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RefadError(
                f"{folder}: in use by another refad process ({holder}); wait for it to finish "
                f"or {purpose}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
