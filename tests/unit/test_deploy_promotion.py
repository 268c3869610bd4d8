"""Champion promotion and rollback against a real MLflow registry (sqlite under a temporary MLOPS_HOME):
aliases move, and the history kept as registered-model tags lets rollback walk back through earlier champions."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.core.errors import MlopsError
from tests.deploy_fixtures import register_version

pytestmark = pytest.mark.xdist_group("deploy-promotion")  # one worker, one registry


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    """A store holding four versions of `toy` and of `walk` (v1 champion, as a first registration makes it):
    (MLOPS_HOME, versions). Built once per worker (a store costs seconds to create). `walk` belongs to the one
    test that checks a whole history; the others use `toy` and do not depend on its champion."""
    import os

    home = tmp_path_factory.mktemp("registry") / ".mlops"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        versions = [register_version(home.parent, "toy", seed) for seed in (1, 2, 3, 4)]
        assert [register_version(home.parent, "walk", seed) for seed in (1, 2, 3, 4)] == versions
    assert os.environ.get("MLOPS_HOME") != str(home)
    return str(home), versions


@pytest.fixture
def registry(registered: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    from mlops.core.registry import registry_client

    monkeypatch.setenv("MLOPS_HOME", registered[0])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"client": registry_client(), "versions": registered[1]}


def champion(client: object, name: str = "toy") -> str:
    return str(client.get_registered_model(name).aliases["champion"])  # type: ignore[attr-defined]


def test_promote_rollback_walk_back_through_history(registry: dict[str, object]) -> None:
    from mlops.deploy.promotion import promote, rollback
    from mlops.package.registry import champion_history, champion_lineage

    client = registry["client"]
    assert registry["versions"] == ["1", "2", "3", "4"] and champion(client, "walk") == "1"

    first = promote("walk/2", reason="better auroc", by="alice")
    second = promote("walk@challenger", reason="nightly")  # challenger is the last registered: v4
    assert champion(client, "walk") == "4"
    back = rollback("walk", reason="p99 regression", by="bob")
    assert champion(client, "walk") == "2"
    back_again = rollback("walk")
    assert champion(client, "walk") == "1"

    assert (first["previous"], first["version"], first["by"], first["reason"]) == ("1", "2", "alice", "better auroc")
    assert (second["previous"], second["version"]) == ("2", "4")
    assert (back["action"], back["previous"], back["version"], back["by"]) == ("rollback", "4", "2", "bob")
    assert (back_again["previous"], back_again["version"]) == ("2", "1")
    history = champion_history(client, "walk")
    assert [(e["seq"], e["action"], e["version"]) for e in history] == [
        (1, "promote", "2"), (2, "promote", "4"), (3, "rollback", "2"), (4, "rollback", "1")]
    assert all(e["at"] for e in history)
    assert champion_lineage(history) == ["1"]
    version_tags = client.get_model_version("walk", "2").tags
    assert version_tags["mlops.champion_since"] == back["at"]

    with pytest.raises(MlopsError, match="no earlier champion on record"):
        rollback("walk")
    assert champion(client, "walk") == "1"


def test_rollback_after_a_rollback_and_a_new_promotion(registry: dict[str, object]) -> None:
    from mlops.deploy.promotion import promote, rollback
    from mlops.package.registry import champion_history, champion_lineage

    client = registry["client"]
    promote("toy/3")
    rollback("toy")  # back to whatever was champion before 3
    before = champion(client)
    promote("toy/4")

    assert rollback("toy")["version"] == before
    assert champion_lineage(champion_history(client, "toy"))[-1] == before


def test_promote_refuses_bad_requests(registry: dict[str, object]) -> None:
    from mlops.deploy.promotion import promote

    client = registry["client"]
    current = champion(client)

    with pytest.raises(MlopsError, match="already the champion"):
        promote(f"toy/{current}")
    with pytest.raises(MlopsError, match="no registered model 'toy/99'"):
        promote("toy/99")
    with pytest.raises(MlopsError, match="no registered model 'toy@nope'"):
        promote("toy@nope")
    with pytest.raises(MlopsError, match="is not a model reference: use NAME@ALIAS"):
        promote("toy")
    # `errors toy/abc` said no prediction had ground truth yet; a missing directory reads the same way
    with pytest.raises(MlopsError, match=r"'toy/abc' is not a model reference: no bundle directory is there, and "
                                         r"'abc' is not a version of the registry \(a number, e.g. toy/3\)"):
        promote("toy/abc")
    assert champion(client) == current


def test_lineage_of_a_champion_moved_by_hand() -> None:
    """The history is replayed as a stack; a rollback pops back to the version it restored."""
    from mlops.package.registry import champion_lineage

    history = [{"seq": 1, "action": "promote", "version": "5", "previous": "2"},
               {"seq": 2, "action": "promote", "version": "7", "previous": "5"},
               {"seq": 3, "action": "promote", "version": "8", "previous": "7"},
               {"seq": 4, "action": "rollback", "version": "5", "previous": "8"},
               {"seq": 5, "action": "promote", "version": "9", "previous": "5"}]

    assert champion_lineage(history) == ["2", "5", "9"]
    assert champion_lineage(history[:4]) == ["2", "5"]
    assert champion_lineage([]) == []


def test_render_for_a_version(registry: dict[str, object], tmp_path: Path) -> None:
    """After a move, the manifest of the model now in charge comes from the recipe given."""
    import yaml

    from mlops.deploy.promotion import render_for
    from tests.conftest import ROOT

    rendered = render_for(str(ROOT / "recipes" / "quickstart.yaml"), "toy", "3", tmp_path, None, apply=False)

    manifest = yaml.safe_load(Path(rendered["files"]["inferenceservice"]).read_text())
    assert manifest["spec"]["predictor"]["containers"][0]["image"].endswith(":toy-v3")
    assert render_for(None, "toy", "3", tmp_path, None, apply=False) is None  # registered without a recipe
