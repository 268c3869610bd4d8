"""A user's own project: its root and workspace are found from any folder below it, a reference to a model
that is not there names the store looked in (and creates none), and the package carries the config groups and
the scaffold of `mlops init`."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError
from mlops.core.refs import fetch
from mlops.core.workspace import project_root, workspace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """A project made by `mlops init`, the working directory a folder two levels below its root."""
    monkeypatch.delenv("MLOPS_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "proj"
    assert main(["init", str(root)]) == 0
    capsys.readouterr()
    (root / "notebooks" / "scratch").mkdir(parents=True)
    monkeypatch.chdir(root / "notebooks" / "scratch")
    return root


def test_the_workspace_is_the_project_roots_from_any_folder_below_it(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert project_root() == project
    assert workspace().root == project / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "elsewhere"))  # still wins
    assert workspace().root == tmp_path / "elsewhere"


def test_a_pyproject_with_a_tool_mlops_table_marks_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_HOME", raising=False)
    (tmp_path / "repo" / "src").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.mlops]\n")
    monkeypatch.chdir(tmp_path / "repo" / "src")

    assert workspace().root == tmp_path / "repo" / ".mlops"


def test_a_reference_with_no_store_names_the_store_and_creates_none(project: Path) -> None:
    with pytest.raises(MlopsError) as caught:
        fetch("proj@champion")

    assert str(caught.value).startswith(f"no registered model 'proj@champion': the store sqlite:///{project}/.mlops/"
                                        "mlflow.db does not exist")
    assert not list(project.rglob(".mlops")) and not list(project.rglob("*.db"))


def test_the_package_carries_its_config_groups_and_the_scaffold() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mlops"]
    package = REPO / "mlops"
    for folder in ("configs", "cli/project"):
        files = [PurePosixPath(p.relative_to(package).as_posix()) for p in (package / folder).rglob("*") if p.is_file()]
        assert files
        for f in files:
            assert not f.name.startswith("."), f"{f}: a package-data glob skips hidden files"
            assert any(f.match(p) and len(f.parts) == len(PurePosixPath(p).parts) for p in patterns), \
                f"mlops/{f} is not package data: add its folder to [tool.setuptools.package-data]"


def test_init_with_an_empty_folder_name_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`mlops init "$DIR"` with DIR unset set up the current folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["init", ""]) == 2
    assert "mlops init '': expected a folder (. for this one)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("folder", ["churn-model", "a_much_longer_project_name_x", "ab"])
def test_the_recipe_keeps_its_comments_in_one_column_whatever_the_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    """`name: churn_model              # ...` was padded for the template's placeholder, out of line."""
    from mlops.cli.init import project_name, scaffold

    name = project_name(tmp_path / folder)
    text = scaffold(name)[f"recipes/{name}.yaml"]
    line = next(ln for ln in text.splitlines() if ln.startswith("name: "))
    base = next(ln for ln in text.splitlines() if ln.startswith("  - base "))
    assert line.startswith(f"name: {name} ") and "#" in line, line
    assert line.index("#") == (base.index("#") if len(name) < 20 else len(f"name: {name} ")), (line, base)
