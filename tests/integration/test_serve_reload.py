"""A server started from `NAME@ALIAS` follows the alias: when the registry moves it, the next requests are
answered by the new version, with no restart (real MLflow sqlite registry, real `mlops serve` process)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlops.core.predlog import read_predictions
from tests.conftest import ROOT
from tests.net import free_port, wait_ready
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


def register(home: Path, bundle: Path) -> str:
    """Log `bundle` in a run and register it as a new version of model 'toy', as `mlops run` does (in the store
    under MLOPS_HOME, which the test sets)."""
    import mlflow
    from mlflow import MlflowClient

    from mlops.core.registry import experiment_id, tracking_uri
    from mlops.package.registry import register_bundle

    uri = tracking_uri()
    client = MlflowClient(uri, registry_uri=uri)
    run = client.create_run(experiment_id(client, "toy", uri))
    client.log_artifacts(run.info.run_id, str(bundle), "bundle")
    mlflow.set_tracking_uri(uri)
    info = register_bundle(client, uri, run.info.run_id, "toy", bundle, {}, set_aliases=False)
    client.set_terminated(run.info.run_id)
    return str(info["model_version"])


def set_alias(home: Path, version: str) -> None:
    from mlflow import MlflowClient

    from mlops.core.registry import tracking_uri

    MlflowClient(tracking_uri(), registry_uri=tracking_uri()).set_registered_model_alias("toy", "champion", version)


def post(port: int, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def infer(port: int, request_id: str) -> dict[str, Any]:
    status, body = post(port, "/v1/models/toy:predict", {"id": request_id, "instances": [ROW]})
    assert status == 200, body
    return body


def test_a_moved_alias_is_served_without_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # another test in this worker may have set one
    v1 = register(home, build_bundle(tmp_path / "b1", name="toy", weights_seed=1))
    v2 = register(home, build_bundle(tmp_path / "b2", name="toy", weights_seed=2))
    set_alias(home, v1)
    log_path = tmp_path / "predictions.sqlite"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLOPS_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", "toy@champion", "--port", str(port),
                             "--log", str(log_path), "--reload-interval", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(port, proc)
        infer(port, "before")

        # an explicit load with nothing moved changes nothing
        status, body = post(port, "/v2/repository/models/toy/load", {})
        assert status == 200 and body["changes"] == [] and body["version"] == v1

        set_alias(home, v2)
        deadline = time.time() + 60  # the periodic check (every second here) picks the move up by itself
        version = v1
        while version != v2 and time.time() < deadline:
            status, body = post(port, "/v2/models/toy/infer", {"inputs": [
                {"name": "age", "shape": [1], "datatype": "FP64", "data": [41.0]},
                {"name": "income", "shape": [1], "datatype": "FP64", "data": [50.0]},
                {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
            assert status == 200, body  # never a failed request during the swap
            version = body["model_version"]
            time.sleep(0.2)
        assert version == v2

        # and back, at once, through the repository extension (what `mlops promote/rollback` call)
        set_alias(home, v1)
        status, body = post(port, "/v2/repository/models/toy/load", {})
        assert status == 200, body
        assert body["changes"] == [{"variant": "champion", "ref": "toy@champion", "from": v2, "to": v1}]
        infer(port, "after")
        rows = {r["id"]: r["version"] for r in read_predictions(log_path)}
        assert rows["before"] == v1 and rows["after"] == v1 and v2 in rows.values()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"toy@champion moved: champion now serves version {v2}" in out, out[-3000:]
