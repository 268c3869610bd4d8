"""An output flag naming a path that cannot be written (a directory where a file goes, a file where a directory
goes, or a path under a file) is the user's mistake: `error: <flag> <path>: <what is wrong>`, never an OSError's
traceback, and before any work is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.cli import main
from mlops.core.atomic import publish_dir, write_text
from mlops.core.errors import MlopsError

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A regular file and a directory, in a workspace of the test's own."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    (tmp_path / "file").write_text("x\n")
    (tmp_path / "dir").mkdir()
    return tmp_path / "file", tmp_path / "dir"


def test_the_atomic_writers_name_the_path_and_what_is_wrong(paths: tuple[Path, Path]) -> None:
    file, directory = paths
    with pytest.raises(MlopsError, match=f"cannot write {file}/x.json: {file} is a file, not a directory"):
        write_text(file / "x.json", "{}")
    with pytest.raises(MlopsError, match=f"cannot write {file}/a/b.json: {file} is a file"):
        write_text(file / "a" / "b.json", "{}")
    with pytest.raises(MlopsError, match=f"cannot write {directory}: is a directory: give a file path"):
        write_text(directory, "{}")
    with pytest.raises(MlopsError, match=f"cannot write {file}: is a file, not a directory"):
        publish_dir(file, lambda tmp: None)
    assert file.read_text() == "x\n" and list(directory.iterdir()) == []
    write_text(directory / "new" / "x.json", "{}")  # missing parents are still created
    assert (directory / "new" / "x.json").read_text() == "{}"


@pytest.mark.parametrize("args, message", [
    (["schema", "-o", "{file}/x.json"], "--output {file}/x.json: {file} is a file, not a directory"),
    (["schema", "-o", "{dir}"], "--output {dir}: is a directory: give a file path"),
    (["deploy", QUICKSTART, "-o", "{file}"], "--output {file}: is a file, not a directory"),
    (["deploy", QUICKSTART, "-o", "{file}/x"], "--output {file}/x: {file} is a file, not a directory"),
    (["label", "export", "toy", "--log", "{dir}/log.sqlite", "-o", "{dir}"], "--output {dir}: is a directory"),
    (["label", "export", "toy", "--log", "{dir}/log.sqlite", "-o", "{file}/x.json"], "--output {file}/x.json: "),
    (["label", "export", "toy", "--log", "{dir}/log.sqlite", "--config-out", "{dir}"],
     "--config-out {dir}: is a directory"),
    (["errors", "toy", "--log", "{dir}/log.sqlite", "-o", "{file}/x"], "--output {file}/x: {file} is a file"),
    (["errors", "toy", "--log", "{dir}/log.sqlite", "-o", "{file}"], "--output {file}: is a file, not a directory"),
    (["batch", QUICKSTART, "--input", "{dir}/in.csv", "-o", "{file}/x.parquet"],
     "--output {file}/x.parquet: {file} is a file, not a directory"),
])
def test_output_flags_refuse_a_path_they_cannot_write(paths: tuple[Path, Path], args: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    file, directory = paths
    (directory / "in.csv").write_text("a,b\n1,2\n")
    argv = [a.format(file=file, dir=directory) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {message.format(file=file, dir=directory)}" in err and "Traceback" not in err
    assert file.read_text() == "x\n" and sorted(p.name for p in directory.iterdir()) == ["in.csv"]
