"""The one atomic writer: what a crash, a Ctrl-C or a second writer leaves behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import refad.atomic
from refad.atomic import atomic_folder, write_json, write_text_atomic
from refad.errors import RefadError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_and_folders_get_the_usual_permissions(tmp_path: Path) -> None:
    """Outputs were 0600 and export folders 0700 (private temporaries renamed into place):
    another user of the line could not read a prediction or load an export."""
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_folder(tmp_path / "export") as building:
        (building / "graph.onnx").write_bytes(b"x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (tmp_path / "export").stat().st_mode & 0o777 == 0o777 & ~_umask()
    # a writer that makes its own file: safetensors' save_file left feature-cache files 0600
    import safetensors.torch
    import torch

    from refad.atomic import write_atomic

    write_atomic(tmp_path / "f.safetensors",
                 lambda tmp: safetensors.torch.save_file({"x": torch.ones(2)}, str(tmp)))
    assert (tmp_path / "f.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_an_interrupt_right_after_the_temporary_is_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between the temporary's creation and the block that removes it left an empty
    hidden `.name.XXXX.tmp` in prediction folders."""
    real_close = os.close

    def interrupted(fd: int) -> None:
        real_close(fd)  # the temporary exists now
        raise KeyboardInterrupt

    monkeypatch.setattr(refad.atomic.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(tmp_path / "a.txt", "x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_appears_while_writing_is_not_replaced(tmp_path: Path) -> None:
    """Without replace, the folder that got files meanwhile (another export, a user's notes)
    was deleted and replaced, and both writers reported success."""
    target = tmp_path / "out"
    refused = pytest.raises(RefadError, match="appeared, or got files, while this was written")
    with refused, atomic_folder(target) as building:
        (building / "graph.onnx").write_bytes(b"new")
        target.mkdir()
        (target / "notes.txt").write_text("precious")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    with atomic_folder(target, replace=True) as building:
        (building / "graph.onnx").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["graph.onnx"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(empty) as building:  # an empty folder is no one's work
        (building / "graph.onnx").write_bytes(b"new")
    assert [p.name for p in empty.iterdir()] == ["graph.onnx"]


def test_a_ctrl_c_between_the_two_renames_of_a_replace_keeps_one_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """`export --overwrite` stopped after moving the old export aside and before moving the
    new one in left neither: the old under a hidden name, the new one deleted."""
    import os
    import signal

    import pytest

    from refad import atomic

    target = tmp_path / "export"
    target.mkdir()
    (target / "old.onnx").write_text("old")
    real = os.replace
    calls = []

    def replace_then_interrupt(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # the old folder is aside: the user presses Ctrl-C now
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(atomic.os, "replace", replace_then_interrupt)
    # Python's Ctrl-C handler, whatever this process inherited: a test run started as a
    # shell's background job inherits SIGINT ignored, and an ignored Ctrl-C raises nothing
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with (pytest.raises(KeyboardInterrupt),
              atomic.atomic_folder(target, replace=True) as new):
            (new / "new.onnx").write_text("new")
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert sorted(p.name for p in target.iterdir()) == ["new.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing hidden left


def test_a_full_disk_inside_a_folder_names_the_file_as_the_user_knows_it(tmp_path: Path) -> None:
    """`export` on a full disk named `.exp.d9ae80fd.partial/unified.onnx`, a hidden temporary
    the user never sees, instead of `exp/unified.onnx`."""
    import errno

    import pytest

    from refad.atomic import atomic_folder
    from refad.errors import RefadError

    with pytest.raises(RefadError) as info, atomic_folder(tmp_path / "exp") as building:
        raise OSError(errno.ENOSPC, "No space left on device", str(building / "unified.onnx"))
    assert str(info.value).startswith(f"{tmp_path / 'exp' / 'unified.onnx'}: No space left")
    assert ".partial" not in str(info.value)
