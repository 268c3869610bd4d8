"""DDP through the whole CLI: two CPU ranks, one Prefect flow run, one MLflow run.

`trainer=ddp_cpu` trains in `mlops.train.worker` subprocesses (Lightning relaunches that module once
per extra rank, not `mlops run`). Rank 0 alone reports, so MLflow must see exactly one run, tagged
with the world size, holding one val/loss point per epoch (synced across ranks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 2


def _env(tmp_path: Path) -> dict[str, str]:
    # Prefect's temporary server, as a user gets it; no DDP variables leaking in from the shell
    env = cli_env(tmp_path / "mlops_home", tmp_path / "prefect_home", None)
    for key in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _last_json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "mlops run printed nothing on stdout"
    return json.loads(lines[-1])


def test_ddp_cpu_two_ranks_one_mlflow_run(tmp_path: Path) -> None:
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "mlops.cli", "run", "--json", "recipes/quickstart.yaml",
           "trainer=ddp_cpu", f"trainer.max_epochs={EPOCHS}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, (
        f"mlops run exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    )
    summary = _last_json_line(proc.stdout)
    assert summary["world_size"] == 2, summary
    assert summary["metrics"]["train/epochs"] == EPOCHS

    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    db = Path(env["MLOPS_HOME"]) / "mlflow.db"
    assert db.is_file(), f"no MLflow store at {db}"
    uri = f"sqlite:///{db}"
    assert summary["tracking_uri"] == uri
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("quickstart")
    assert exp is not None, "experiment 'quickstart' was not created"

    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    assert len(runs) == 1, f"expected one MLflow run, not one per rank: {[r.info.run_id for r in runs]}"
    # no rank may have opened a run anywhere else either (e.g. in the Default experiment)
    all_exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    assert len(client.search_runs(all_exps, run_view_type=ViewType.ALL)) == 1

    run = runs[0]
    assert run.info.run_id == summary["run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("mlops.world_size") == "2"
    assert run.data.tags.get("mlops.step.train") == "ran"

    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert len(history) == EPOCHS, [(m.step, m.value) for m in history]
    assert sorted(m.step for m in history) == list(range(EPOCHS))
    assert all(0.0 < m.value < 10.0 for m in history)
