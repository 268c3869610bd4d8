"""Recipes from people you do not trust (a pull request checked in CI): `mlops validate` answers at once, at
file:line, and reads no file outside the project.

Each test writes a small project into tmp_path (`configs/` beside `recipes/`, which makes it a project root)
and runs `mlops validate` in-process as a user runs it: exit 2 and one error on stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.cli import main
from mlops.recipe.compose import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES

SECRET = "API_TOKEN=hunter2"  # the first line of a file no recipe should be able to print
CSV = "age,income,churned\n" + "".join(f"{30 + i},{1000 * i},{i % 2}\n" for i in range(20))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "recipes").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "workspace"))
    monkeypatch.delenv("MLOPS_ALLOW_DATA_OUTSIDE_PROJECT", raising=False)
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    return root


def validate(recipe: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["validate", str(recipe)])
    return code, capsys.readouterr().err


def data_recipe(project: Path, path: str, target: str = "churned") -> Path:
    recipe = project / "recipes" / "r.yaml"
    recipe.write_text(f"name: r\ndata:\n  path: {path}\n  format: csv\n  target: {target}\n")
    return recipe


def alias_bomb(levels: int) -> str:
    """Each line a list of 9 aliases of the line above: 9**levels values from a few hundred bytes."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\nname: bomb\n"


@pytest.mark.timeout(60)  # the bomb's guard: on a main without the bound this ran for minutes
def test_an_alias_bomb_is_refused_before_it_expands(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = project / "recipes" / "bomb.yaml"
    recipe.write_text(alias_bomb(8))  # 43 million values once expanded

    code, err = validate(recipe, capsys)

    assert code == 2
    assert err.startswith("error: recipes/bomb.yaml:")
    assert f"its YAML aliases expand to more than {MAX_VALUES} values" in err
    assert len(err.strip().splitlines()) == 1
    (project / "data.csv").write_text(CSV)  # aliases that stay small are fine
    recipe.write_text("name: r\ndata:\n  path: ../data.csv\n  target: churned\n  drop: &cols [income]\n"
                      "  categorical: *cols\n")
    assert validate(recipe, capsys) == (0, "")


def test_an_alias_bomb_in_a_config_group_the_recipe_picks_is_refused(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "configs" / "data").mkdir()
    (project / "configs" / "data" / "bomb.yaml").write_text(alias_bomb(6))  # 531,441 values
    recipe = project / "recipes" / "r.yaml"
    recipe.write_text("defaults:\n  - data: bomb\n  - _self_\nname: r\n")

    code, err = validate(recipe, capsys)

    assert code == 2
    assert "configs/data/bomb.yaml:" in err and "aliases expand" in err


def test_a_recipe_too_large_is_refused_unread(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = project / "recipes" / "big.yaml"
    recipe.write_text("name: big\ndescription: " + "x" * MAX_FILE_BYTES + "\n")

    code, err = validate(recipe, capsys)

    assert code == 2
    assert f"recipes/big.yaml: {recipe.stat().st_size} bytes; a recipe or config file may have at most" in err


def test_nesting_too_deep_is_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = project / "recipes" / "deep.yaml"
    recipe.write_text("name: deep\ndescription: " + "[" * 200 + "]" * 200 + "\n")

    code, err = validate(recipe, capsys)

    assert code == 2
    assert f"recipes/deep.yaml:2: lists and mappings nested more than {MAX_DEPTH} deep" in err


def test_data_outside_the_project_is_refused_without_reading_it(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "secret.csv").write_text(SECRET + "\n1\n")
    recipe = data_recipe(project, "../../secret.csv")

    code, err = validate(recipe, capsys)

    assert code == 2
    assert f"recipes/r.yaml:3: data.path: {tmp_path / 'secret.csv'} is outside the project {project}" in err
    assert "MLOPS_ALLOW_DATA_OUTSIDE_PROJECT=1" in err
    assert "hunter2" not in err
    # data in the project needs no opt-in; nor does a path the operator gives on the command line (a retrain's
    # refreshed rows)
    (project / "data").mkdir()
    (project / "data" / "rows.csv").write_text(CSV)
    assert validate(data_recipe(project, "../data/rows.csv"), capsys) == (0, "")
    (tmp_path / "refreshed.csv").write_text(CSV)
    assert main(["validate", str(recipe), f"++data.path='{tmp_path / 'refreshed.csv'}'"]) == 0


def test_a_link_out_of_the_project_is_outside_it(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "secret.csv").write_text(SECRET + "\n1\n")
    (project / "data.csv").symlink_to(tmp_path / "secret.csv")
    recipe = data_recipe(project, "../data.csv")

    code, err = validate(recipe, capsys)

    assert code == 2 and "is outside the project" in err and "hunter2" not in err


def test_the_opt_in_reads_outside_data_and_still_never_prints_its_content(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ALLOW_DATA_OUTSIDE_PROJECT", "1")
    (tmp_path / "secret.csv").write_text(SECRET + "\n1\n")
    recipe = data_recipe(project, str(tmp_path / "secret.csv"), target="y")

    code, err = validate(recipe, capsys)

    assert code == 2
    assert "data.target: column 'y' is not in the data" in err  # read: the opt-in let it through
    assert "hunter2" not in err and "API_TOKEN" not in err
