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
    """Hold the folder's lock for the block, or fail at once naming the other process.

    A folder this call created is removed again when the block fails having written nothing
    else into it: a refused command leaves no empty output folder behind."""
    created = not Path(folder).exists()
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
        try:
            yield
        except BaseException:
            if created:
                _remove_if_only_the_lock(folder)
            raise
    finally:
        os.close(fd)


def _remove_if_only_the_lock(folder: Path) -> None:
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            (folder / LOCK_FILE).unlink()
            folder.rmdir()
