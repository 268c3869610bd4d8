"""`mlops sweep RECIPE key=value`: an override of a swept key is overwritten by every trial, so it is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.chdir(REPO)


def test_an_override_of_a_swept_key_is_named_before_the_study(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    def no_study(*args: object, **kwargs: object) -> None:
        raise MlopsError("stopped before the study")

    monkeypatch.setattr("mlops.cli.sweep.sweep", no_study)
    assert main(["sweep", "recipes/quickstart_sweep.yaml", "trainer.max_epochs=2", "model.dropout=0.2"]) == 2
    err = capsys.readouterr().err
    assert "'trainer.max_epochs=2' sets a swept key" in err, err
    assert "model.dropout" not in err.split("stopped before the study")[0], err  # not a swept key: no word
