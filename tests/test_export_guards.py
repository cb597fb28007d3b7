"""`refad export` never deletes or writes what it does not own, and a full disk names the file
the user will find: issue 34 ("Faults round 3"), the data-loss class and the full-disk naming.

Every test works on a copy of the session's tiny run: on the code before these guards, the
export emptied the folder it was pointed at, run included.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from refad.cli.main import app
from refad.deploy import METADATA_FILE

runner = CliRunner()


def enospc() -> OSError:
    """A full disk as `file.write` reports it: no file name."""
    return OSError(errno.ENOSPC, "No space left on device")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes: what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def export(run: Path, out: Path, *flags: str) -> tuple[int, list[str]]:
    """`refad export` through the CLI: its exit status and its non-blank output lines."""
    result = runner.invoke(app, ["export", "--run", str(run), "--out", str(out), *flags])
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()]


def refused(run: Path, out: Path, *flags: str) -> str:
    """The one error line of an export that must be refused (exit status 2)."""
    code, lines = export(run, out, *flags)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {out}: "), lines
    return lines[0]


@pytest.fixture
def workspace(trained_run: Path, tmp_path: Path) -> Path:
    """A user's folder holding a run and data, as `--out` mistyped one level up would find it."""
    work = tmp_path / "work"
    shutil.copytree(trained_run, work / "runs" / "tiny")
    (work / "data").mkdir()
    (work / "data" / "part.png").write_bytes(b"not really a picture")
    (work / "notes.txt").write_text("a user's notes")
    return work


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("where", ["run", "parent", "inside"])
def test_export_never_writes_into_or_above_its_run(
    workspace: Path, where: str, overwrite: bool
) -> None:
    """`--out` set to the run folder, or to a folder holding it, was emptied and replaced by
    the export (exit 0); `--out` inside the run wrote a folder into it."""
    run = workspace / "runs" / "tiny"
    out = {"run": run, "parent": workspace, "inside": run / "deploy"}[where]
    before = tree(workspace)
    line = refused(run, out, *(["--overwrite"] if overwrite else []))
    assert "run folder" in line
    assert tree(workspace) == before and not (run / "deploy").exists()
    assert sorted(p.name for p in workspace.parent.iterdir()) == ["work"]  # no temporary left


def test_export_refuses_a_folder_inside_or_holding_another_run(
    workspace: Path, trained_run: Path, tmp_path: Path
) -> None:
    """Any run folder, not only the one exported: `--out` inside one, or above one."""
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    before = tree(workspace)
    assert "lies inside the run folder" in refused(other, workspace / "runs" / "tiny" / "deploy")
    assert "not written by refad export" in refused(other, workspace, "--overwrite")
    assert tree(workspace) == before


def test_overwrite_replaces_only_an_earlier_export(
    trained_run: Path, tmp_path: Path
) -> None:
    """`--overwrite` emptied any folder (a user's files included); it now replaces an earlier
    export, recognised by its refad-deploy.json and the files that lists, and nothing else."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("user file")
    assert "not written by refad export" in refused(run, mine, "--overwrite")
    assert (mine / "keep.txt").read_text() == "user file"

    out = tmp_path / "deploy"
    assert export(run, out)[0] == 0
    assert "--overwrite" in refused(run, out)  # without it, an earlier export stays
    first = (out / METADATA_FILE).read_bytes()
    code, lines = export(run, out, "--overwrite")
    assert code == 0, lines
    assert (out / METADATA_FILE).read_bytes() != first  # a new export (its `created` time)

    (out / "notes.txt").write_text("added after the export")  # no longer only an export
    assert "notes.txt" in refused(run, out, "--overwrite")
    assert (out / "notes.txt").read_text() == "added after the export"
    (out / "notes.txt").unlink()
    (out / METADATA_FILE).write_text("{ edited")  # not readable: not recognised either
    assert "not written by refad export" in refused(run, out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == [METADATA_FILE, "unified.onnx"]


def test_the_destination_is_checked_again_before_the_old_export_is_replaced(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """A file added to the earlier export while the new one was built was deleted with it."""
    import refad.export.exporter as exporter

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    out = tmp_path / "deploy"
    assert export(run, out)[0] == 0
    real = exporter._self_check

    def meanwhile(*args, **kwargs):
        (out / "added.txt").write_text("written while the export ran")
        return real(*args, **kwargs)

    monkeypatch.setattr(exporter, "_self_check", meanwhile)
    assert "added.txt" in refused(run, out, "--overwrite")
    assert (out / "added.txt").is_file() and (out / "unified.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "run"]


def _full_disk(lines: list[str], out: Path, name: str) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {out / name}: "), lines
    assert "No space left on device" in lines[0] and ".partial" not in lines[0]


@pytest.mark.parametrize("fmt, name", [("onnx", "unified.onnx"), ("openvino", "unified.xml")])
def test_a_full_disk_while_the_graph_is_written_names_the_file_the_user_gets(
    trained_run: Path, tmp_path: Path, monkeypatch, fmt: str, name: str
) -> None:
    """It named the hidden temporary (`.exp.XXXX.partial/unified.onnx`), and an `.onnx` for an
    OpenVINO export, whose folder never holds one."""
    import refad.export.graph as graph

    def full(*args, **kwargs):
        raise enospc()

    monkeypatch.setattr(graph, "_torchscript", full)
    out = tmp_path / "deploy" / "x"
    code, lines = export(trained_run, out, "--format", fmt)
    assert code == 2
    _full_disk(lines, out, name)
    assert list((tmp_path / "deploy").iterdir()) == []


@pytest.mark.parametrize("failure", ["oserror", "openvino"])
def test_a_full_disk_while_openvino_saves_names_the_xml(
    trained_run: Path, tmp_path: Path, monkeypatch, failure: str
) -> None:
    """OpenVINO's own writer: an OSError named the folder only, and the error OpenVINO really
    raises on a full disk (`RuntimeError: basic_ios::clear: iostream error`, seen on a full
    tmpfs) ended the command with a traceback."""
    import openvino

    import refad.export.openvino as ov_export

    def full(*args, **kwargs):
        if failure == "oserror":
            raise enospc()
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", full)
    monkeypatch.setattr(ov_export, "_free_bytes", lambda folder: 0, raising=False)  # full
    out = tmp_path / "deploy" / "x"
    code, lines = export(trained_run, out, "--format", "openvino")
    assert code == 2
    _full_disk(lines, out, "unified.xml")
    assert list((tmp_path / "deploy").iterdir()) == []


def test_a_full_disk_while_the_metadata_is_written_names_it(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    """The last file: the error named the export folder (`deploy/x: No space left on
    device`), not refad-deploy.json (seen on a tmpfs the graph just filled)."""
    real = Path.write_text

    def full(self: Path, *args, **kwargs):
        if self.name == METADATA_FILE:
            raise enospc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "deploy" / "x"
    code, lines = export(trained_run, out)
    assert code == 2
    _full_disk(lines, out, METADATA_FILE)
    assert list((tmp_path / "deploy").iterdir()) == []
