"""The recipe's flows as Prefect deployments on a real Prefect server (PostgreSQL database): `mlops deploy
--prefect` renders prefect.yaml and registers it, a run of the train deployment is triggered, and a process worker
(`prefect worker start --run-once`) runs it to completion: the model is trained and registered in MLflow.

Needs PostgreSQL on 127.0.0.1:5432 with trust auth for user `postgres` (or $MLOPS_TEST_POSTGRES_DSN) and asyncpg;
a throwaway database is created and dropped. Without them the test is skipped, except in CI (`CI=true`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli
from tests.net import prefect_api as api
from tests.net import start_prefect_server, stop_process
from tests.postgres import throwaway_url, unavailable

pytestmark = pytest.mark.integration

HEALTH_TIMEOUT_S = 180  # ~11 s idle; much longer with the CPUs busy with other tests
MODEL = f"qs_prefect_{uuid.uuid4().hex[:8]}"
# a quick training run; the other flows are scheduled once a year so that no scheduled run is due during the test
OVERRIDES = [f"registry.model_name={MODEL}", "trainer.max_epochs=1", "gates=none",
             "evaluate.performance.enabled=false", "evaluate.robustness.enabled=false",
             "deploy.prefect.work_pool=mlops-it", "deploy.prefect.flows.train.cron=0 0 1 1 *",
             "deploy.prefect.flows.monitor.interval_s=null", "deploy.prefect.flows.monitor.cron=0 0 1 1 *"]


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh database for the Prefect server; its asyncpg URL. Dropped afterwards."""
    try:
        import asyncpg  # noqa: F401  (Prefect's PostgreSQL driver)
    except ImportError as exc:
        unavailable(f"{exc.name} is not installed (asyncpg comes with prefect; psycopg2 with the dev extra)")
    with throwaway_url("mlops_prefect", "postgresql+asyncpg") as url:
        yield url


@pytest.fixture
def prefect_server(postgres_db: str, tmp_path: Path, isolated_env: dict[str, str]) -> Iterator[dict[str, str]]:
    log = tmp_path / "prefect-server.log"
    proc, url = start_prefect_server(tmp_path / "prefect-server-home", isolated_env, log, timeout=HEALTH_TIMEOUT_S,
                                     database_url=postgres_db)
    try:
        yield {"url": url, "log": str(log)}
    finally:
        stop_process(proc, timeout=30, group=True)


def test_train_deployment_runs_to_completion(prefect_server: dict[str, str], isolated_env: dict[str, str],
                                             tmp_path: Path) -> None:
    url = prefect_server["url"]
    env = isolated_env | {"PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "client-home")}

    # --local-checkout: the worker runs this checkout (a CI checkout's commit may be on no branch it could clone)
    deployed = run_cli(["deploy", "recipes/quickstart.yaml", *OVERRIDES, "--target", "prefect", "--prefect",
                        "--local-checkout", "--output", str(tmp_path / "out"), "--json"], env)

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    result = json.loads(deployed.stdout.strip().splitlines()[-1])
    assert result["registered"] == ["mlops-train/quickstart", "mlops-evaluate/quickstart",
                                    "mlops-monitor/quickstart", "mlops-retrain/quickstart"]
    deployments = {d["entrypoint"]: d for d in api(url, "/deployments/filter", {})}
    assert set(deployments) == {"mlops.flows.train", "mlops.flows.evaluate", "mlops.flows.monitor",
                                "mlops.flows.retrain"}
    train = deployments["mlops.flows.train"]
    assert train["parameters"] == {"recipe": "recipes/quickstart.yaml", "overrides": OVERRIDES}
    assert train["work_pool_name"] == "mlops-it"
    assert [s["schedule"]["cron"] for s in train["schedules"]] == ["0 0 1 1 *"]
    assert train["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert deployments["mlops.flows.evaluate"]["parameters"]["model"] == f"{MODEL}@champion"
    assert "recipe" in train["parameter_openapi_schema"]["required"]

    run = api(url, f"/deployments/{train['id']}/create_flow_run", {})
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", "mlops-it", "--run-once"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    state = api(url, f"/flow_runs/{run['id']}")["state"]

    assert state["type"] == "COMPLETED", f"{state}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    from mlops.core.registry import registry_client

    client = registry_client(f"sqlite:///{Path(env['MLOPS_HOME']) / 'mlflow.db'}")
    model = client.get_registered_model(MODEL)
    assert model.aliases["champion"] == 1  # the first registration of the model, made by the flow run

    # the automation that closes the loop: the monitor's drift event for this model runs the retrain deployment
    automations = api(url, "/automations/filter", {})
    assert any(sorted(a["trigger"].get("expect") or []) == ["mlops.alert.accuracy_drop", "mlops.alert.drift"]
               and a["trigger"]["match"] == {"prefect.resource.id": f"mlops.model.{MODEL}"} for a in automations), \
        [a["trigger"] for a in automations]
    retrain = deployments["mlops.flows.retrain"]
    emitted = subprocess.run([sys.executable, "-c", (
        "from prefect.events import emit_event; "
        f"emit_event(event='mlops.alert.drift', resource={{'prefect.resource.id': 'mlops.model.{MODEL}'}}, "
        "payload={'window': 7})")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert emitted.returncode == 0, emitted.stderr[-3000:]
    deadline = time.monotonic() + 120
    runs: list[dict[str, Any]] = []
    while not runs and time.monotonic() < deadline:
        runs = api(url, "/flow_runs/filter", {"deployments": {"id": {"any_": [retrain["id"]]}}})
        time.sleep(1)
    assert [r["parameters"]["reason"] for r in runs] == ["mlops.alert.drift"], runs
