"""A recipe run against a real MLflow tracking server backed by PostgreSQL, artifacts proxied by it.

Needs PostgreSQL on 127.0.0.1:5432 with trust auth for user `postgres` (or $MLOPS_TEST_POSTGRES_DSN);
a throwaway database is created and dropped. Without it the test is skipped, except in CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.net import free_port, stop_process
from tests.postgres import throwaway_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEALTH_TIMEOUT_S = 180  # ~16-20 s on an idle box; 78 s seen with the 2 CPUs busy with other tests
EPOCHS = 2


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh, empty database; yields its SQLAlchemy URI and drops it afterwards."""
    with throwaway_database("mlops_it") as (info, name):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed: name the driver
        yield f"postgresql+psycopg2://{info.user}@{info.host}:{info.port}/{name}"


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@pytest.fixture
def mlflow_server(postgres_db: str, tmp_path: Path) -> Iterator[dict[str, object]]:
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    artifacts.mkdir()
    log = tmp_path / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", postgres_db, "--artifacts-destination", str(artifacts), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode} before it was healthy:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200 and resp.read().strip() == b"OK":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - started > HEALTH_TIMEOUT_S:
                pytest.fail(f"mlflow server not healthy after {HEALTH_TIMEOUT_S} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield {"url": url, "artifacts": artifacts, "log": log,
               "startup_seconds": round(time.monotonic() - started, 1)}
    finally:
        stop_process(proc, timeout=20, group=True)  # the server and its workers: one process group


def _artifact_paths(client: object, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):  # type: ignore[attr-defined]
        if info.is_dir:
            out |= _artifact_paths(client, run_id, info.path)
        else:
            out.add(info.path)
    return out


def test_recipe_against_mlflow_server_on_postgres(mlflow_server: dict[str, object], tmp_path: Path) -> None:
    url = str(mlflow_server["url"])
    # Prefect's temporary server, as a user gets it
    env = cli_env(tmp_path / "mlops_home", tmp_path / "prefect_home", None) | {"MLFLOW_TRACKING_URI": url}
    cmd = [sys.executable, "-m", "mlops.cli", "run", "--json", "recipes/quickstart.yaml",
           f"trainer.max_epochs={EPOCHS}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, (
        f"mlops run exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n"
        f"{proc.stderr[-6000:]}\n--- server log ---\n{_tail(Path(str(mlflow_server['log'])), 3000)}"
    )
    summary = json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1])
    assert summary["tracking_uri"] == url
    # nothing may have fallen back to a local store
    assert not (Path(env["MLOPS_HOME"]) / "mlflow.db").exists()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    exp = client.get_experiment_by_name("quickstart")
    assert exp is not None and run.info.experiment_id == exp.experiment_id

    params = run.data.params
    assert params["trainer.max_epochs"] == str(EPOCHS)
    assert params["model.batch_size"] == "64"
    assert params["data.fingerprint"] == summary["data_fingerprint"]
    tags = run.data.tags
    assert tags["mlops.data_fingerprint"] == summary["data_fingerprint"]
    assert tags["mlops.data_fingerprint"].startswith("sha256:")
    assert tags["mlops.recipe_hash"] == summary["recipe_hash"]
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == EPOCHS

    paths = _artifact_paths(client, run.info.run_id)
    for expected in ("recipe.yaml", "recipe.lock", "environment/pip-freeze.txt", "bundle/model.onnx",
                     "plots/confusion_matrix.png"):
        assert expected in paths, f"artifact {expected} missing; the run has {sorted(paths)}"

    # the artifacts went through the server's proxy into --artifacts-destination, byte for byte
    served = Path(client.download_artifacts(run.info.run_id, "bundle/model.onnx", str(tmp_path / "dl")))
    assert served.read_bytes() == (Path(summary["bundle"]) / "model.onnx").read_bytes()
    assert list(Path(str(mlflow_server["artifacts"])).rglob("model.onnx")), "nothing stored under --artifacts-destination"

    model = client.get_registered_model("quickstart")
    assert "champion" in model.aliases, model.aliases
    champion = client.get_model_version_by_alias("quickstart", "champion")
    assert champion.run_id == run.info.run_id
    assert str(champion.version) == str(summary["model_version"])
    assert "champion" in summary["aliases"]
