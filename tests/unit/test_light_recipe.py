"""A key written twice in one mapping of a recipe or config file is refused at its second line, naming the key:
YAML keeps one of the two values, and which one depends on the reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlops.core.errors import MlopsError
from mlops.recipe.compose import SHIPPED_CONFIGS, compose

HEAD = "defaults:\n  - data: breast_cancer\n  - _self_\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(SHIPPED_CONFIGS, tmp_path / "configs")
    (tmp_path / "recipes").mkdir()
    monkeypatch.delenv("MLOPS_CONFIG_PATH", raising=False)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.chdir(tmp_path)  # file names in messages are shown relative to the working directory
    return tmp_path


@pytest.mark.parametrize(
    ("body", "line", "key"),
    [
        ("name: q\nname: r\n", 5, "name"),
        ("name: q\ntrainer:\n  max_epochs: 3\n  seed_everything: true\n  max_epochs: 4\n", 8, "trainer.max_epochs"),
        ("name: q\nevaluate:\n  gates:\n    - {metric: a, min: 1}\n    - metric: b\n      metric: c\n", 9,
         "evaluate.gates.1.metric"),
        ("name: q\ntrainer: {max_epochs: 3, max_epochs: 4}\n", 5, "trainer.max_epochs"),
    ],
    ids=["top level", "nested", "in a list item", "flow mapping"],
)
def test_a_duplicate_key_is_refused_at_its_line(project: Path, body: str, line: int, key: str) -> None:
    (project / "recipes" / "dup.yaml").write_text(HEAD + body)

    with pytest.raises(MlopsError) as info:
        compose(project / "recipes" / "dup.yaml")

    assert str(info.value).startswith(f"recipes/dup.yaml:{line}: {key}: the key appears twice in one mapping")


def test_a_duplicate_in_a_config_the_recipe_extends_is_refused_there(project: Path) -> None:
    config = project / "configs" / "data" / "mine.yaml"
    config.write_text("dataset: wine\ntarget: target\ndataset: digits\n")
    (project / "recipes" / "r.yaml").write_text("defaults:\n  - data: mine\n  - _self_\nname: q\n")

    with pytest.raises(MlopsError, match=r"mine\.yaml:3: dataset: the key appears twice .*first at line 1"):
        compose(project / "recipes" / "r.yaml")


def test_the_same_key_in_different_mappings_is_fine(project: Path) -> None:
    body = ("name: q\nevaluate:\n  gates:\n    - {metric: test/accuracy, min: 0.5}\n"
            "    - {metric: test/f1, min: 0.5}\ntrainer:\n  max_epochs: 2\n")
    (project / "recipes" / "ok.yaml").write_text(HEAD + body)

    composed = compose(project / "recipes" / "ok.yaml")

    assert composed.config["trainer"]["max_epochs"] == 2
    assert [g["metric"] for g in composed.config["evaluate"]["gates"]] == ["test/accuracy", "test/f1"]
