"""Atomic file writes: a crash or a full disk never leaves a half-written file in place.

The one writer of every file refad produces (run folders, feature caches, reports), and the
strict reader of the JSON it writes; it sits at the bottom of the layers so that each of them
can use it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import numbers
import os
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from refad.errors import RefadError


def _sibling(path: Path, suffix: str) -> Path:
    """A hidden, unused name beside `path`, known before anything is created, so that a
    Ctrl-C at any moment after the creation still finds it to remove."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    On any error the temporary file is removed and the previous `path` (if any) is untouched;
    OS errors (disk full, permissions) become a one-line RefadError naming the file. The file
    gets the permissions of any new file (the umask applies), not a private temporary's.
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp = _sibling(path, ".tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that makes its own file
            os.chmod(tmp, mode)  # (safetensors' save_file: 0600) still gets the umask's mode
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RefadError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(folder: Path | str, replace: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `folder`; on success it takes `folder`'s place, so
    `folder` is never seen half-written. An existing `folder` is replaced only with `replace`;
    otherwise one that is (or became, while this ran) non-empty is refused and nothing is
    replaced: the kernel's rename refuses a non-empty target atomically. On error the
    temporary folder is removed and any previous `folder` is untouched; OS errors become
    one-line errors."""
    folder = Path(folder)
    ensure_dir(folder.parent)
    tmp = _sibling(folder, ".partial")
    try:
        try:
            tmp.mkdir(0o777)  # the umask applies, as to any new folder
        except OSError as exc:
            raise RefadError(f"{folder.parent}: cannot write ({exc.strerror or exc})") from None
        yield tmp
        if replace:
            _replace_folder(tmp, folder)
        else:
            try:
                os.rename(tmp, folder)  # onto nothing or an empty folder only
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise RefadError(f"{folder}: appeared, or got files, while this was written; "
                                 "nothing replaced (remove it, or overwrite)") from None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # the file as the user will know it (`OUT/unified.onnx`), not its hidden temporary
        where = str(exc.filename).replace(str(tmp), str(folder)) if exc.filename else folder
        raise RefadError(f"{where}: {exc.strerror or exc} (while writing {folder})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive during the block take effect right after it. Python runs
    signal handlers in the main thread, so a recording handler defers them whatever thread the
    kernel picked (blocking the signal in this thread alone would not: torch's threads
    receive it instead). Elsewhere than the main thread the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
                for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # Python's KeyboardInterrupt, or the CLI's own
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _replace_folder(new: Path, folder: Path) -> None:
    """Swap `new` into `folder`'s place. A Ctrl-C between the two renames had left neither
    (the old export under a hidden name, the new one deleted): the swap is one step for
    signals, and a Ctrl-C while the old copy is deleted still deletes all of it."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    swapped = False
    try:
        with _signals_held():  # a signal caught here is raised as the block ends
            replacing = folder.exists()
            if replacing:
                os.replace(folder, old)
            try:
                os.replace(new, folder)
            except OSError:
                if replacing:
                    os.replace(old, folder)
                raise
            swapped = replacing
    finally:
        if swapped:
            try:
                shutil.rmtree(old, ignore_errors=True)
            except BaseException:  # a Ctrl-C while deleting: finish, then stop
                shutil.rmtree(old, ignore_errors=True)
                raise


def ensure_dir(folder: Path | str) -> Path:
    """Create `folder` (and parents) for writing, or say in one line why it cannot be."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RefadError(f"{folder}: exists and is not a folder") from None
    except NotADirectoryError:
        raise RefadError(f"{folder}: a parent of this path is a file, not a folder") from None
    except OSError as exc:
        raise RefadError(f"{folder}: cannot create folder ({exc.strerror or exc})") from None
    if not writable(folder):
        raise RefadError(f"{folder}: folder is not writable")
    return folder


def writable(folder: Path) -> bool:
    """Whether this process may create files in `folder` (a read-only mount says no)."""
    return os.access(folder, os.W_OK | os.X_OK)


def fsync_dir(folder: Path) -> None:
    """Make the renames inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically. A file name that is not UTF-8 (Python holds its
    bytes as lone surrogates) is written escaped (`\\udcff`) rather than failing the whole
    report or CSV after the work is done; JSON escapes such names itself and reads them back."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8",
                                                  errors="backslashreplace"))


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights and graphs are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def json_safe(value: Any, other: Callable[[Any], Any] | None = None) -> Any:
    """A copy that strict JSON accepts: non-finite numbers become None (JSON has no NaN),
    numpy scalars plain numbers; `other` converts any remaining object (default: kept)."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, other) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, other) for v in value]
    return other(value) if other is not None else value


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (no NaN or Infinity: those become null), written atomically."""
    write_text_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def read_json(path: Path | str, error: type[RefadError] = RefadError) -> Any:
    """Parse a JSON file as `write_json` writes it: strict, so a hand-edited NaN or Infinity
    (which Python's json accepts) is refused here, naming the file, instead of failing later
    where the value is used. Every failure is one line of type `error`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValueError as exc:  # a refused constant, or bytes that are not UTF-8
        raise error(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
