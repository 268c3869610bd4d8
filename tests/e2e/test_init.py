"""`mlops init` as a new user meets it: a project whose recipe validates and runs from any folder of it, on
config groups that come with the package, with one workspace at the project root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlops.core.refs import fetch
from tests.conftest import last_json

pytestmark = pytest.mark.e2e


def mlops(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_an_initialised_project_validates_and_runs_from_a_subfolder(
        tmp_path: Path, isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in isolated_env.items() if k != "MLOPS_HOME"}  # the workspace is the project's
    root = tmp_path / "Churn Model"
    made = mlops(["init", str(root)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    assert "mlops run recipes/churn_model.yaml" in made.stdout
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        ".gitignore", "configs/data/tumours.yaml", "recipes/churn_model.yaml"]
    assert not (root / "configs" / "base.yaml").exists()  # shipped groups stay in the package

    again = mlops(["init", str(root)], tmp_path, env)
    assert again.returncode == 2
    assert again.stderr == (f"error: mlops init: {root} already has configs/data/tumours.yaml, "
                            "recipes/churn_model.yaml; mlops init writes only new files: move them aside or pick "
                            "another folder\n")

    sub = root / "analysis" / "week1"
    sub.mkdir(parents=True)
    checked = mlops(["validate", "../../recipes/churn_model.yaml"], sub, env)
    assert checked.returncode == 0, checked.stderr
    assert "is a valid recipe 'churn_model'" in checked.stdout

    summary = last_json(mlops(["run", "--json", "../../recipes/churn_model.yaml", "trainer.max_epochs=3"], sub, env))
    assert summary["aliases"] == ["challenger", "champion"]
    assert (root / ".mlops" / "mlflow.db").is_file()
    assert not (sub / ".mlops").exists()

    # another folder of the project serves from the same store
    (root / "serving").mkdir()
    monkeypatch.chdir(root / "serving")
    monkeypatch.delenv("MLOPS_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    resolved = fetch("churn_model@champion")
    assert (resolved.name, resolved.version) == ("churn_model", "1")
    assert resolved.path.is_relative_to(root / ".mlops")
    assert not (root / "serving" / ".mlops").exists()
