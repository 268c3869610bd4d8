"""A study on PostgreSQL shared by a coordinator and a `--worker`: both run trials, none twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PG = os.environ.get("MLOPS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_storage() -> str:
    try:
        import psycopg2

        admin = psycopg2.connect(PG, connect_timeout=5)
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL at {PG} is not reachable: {exc}")
    admin.autocommit = True
    name = f"mlops_optuna_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f"CREATE DATABASE {name}")
    base = PG.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
    yield f"{base}/{name}"
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def test_coordinator_and_worker_share_one_study(tmp_path: Path, pg_storage: str, isolated_env: dict[str, str]) -> None:
    import optuna

    recipe = tmp_path / "shared.yaml"
    recipe.write_text(f"""
defaults:
  - data: breast_cancer
  - model: mlp
  - trainer: cpu
  - _self_
name: shared
trainer: {{max_epochs: 3, early_stopping: null}}
sweep:
  metric: val/loss
  n_trials: 4
  sampler: random
  pruner: none
  storage: {pg_storage}
  study_name: shared-study
  params:
    model.lr: {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}
""")
    env = isolated_env | {"MLOPS_CONFIG_PATH": str(ROOT / "mlops" / "configs")}
    worker_env = env | {"PREFECT_HOME": str(tmp_path / "prefect-worker")}
    cmd = [sys.executable, "-m", "mlops.cli", "sweep", "--json", str(recipe)]
    coordinator = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while "shared-study" not in optuna.get_all_study_names(pg_storage):
        assert time.time() < deadline and coordinator.poll() is None, coordinator.communicate()[1][-3000:]
        time.sleep(1)
    worker = subprocess.Popen(cmd[:4] + ["--worker"] + cmd[4:], cwd=ROOT, env=worker_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    w_out, w_err = worker.communicate(timeout=900)
    c_out, c_err = coordinator.communicate(timeout=900)
    assert worker.returncode == 0, w_err[-3000:]
    assert coordinator.returncode == 0, c_err[-3000:]
    worker_result = json.loads(w_out.strip().splitlines()[-1])
    result = json.loads(c_out.strip().splitlines()[-1])
    assert "best" not in worker_result  # workers only run trials; the coordinator registers
    assert result["model_version"] == "1" and result["trials"]["complete"] == 4

    study = optuna.load_study(study_name="shared-study", storage=pg_storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len(study.trials) == 4  # nothing failed, nothing ran twice
    owners = {t.user_attrs["mlops.owner"].rsplit(":", 1)[1] for t in complete}
    assert owners == {str(coordinator.pid), str(worker.pid)}
    assert result["best"]["value"] == min(t.value for t in complete)
