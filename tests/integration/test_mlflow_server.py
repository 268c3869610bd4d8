"""A recipe run against a real MLflow tracking server backed by PostgreSQL, artifacts proxied by it; then every
phase that reads a model (serve, batch, monitor, deploy) run as a teammate on another machine would: from another
folder, with a fresh workspace and HOME, and nothing but MLFLOW_TRACKING_URI=http://... to find the model.

One server and one trained run serve the whole module (xdist keeps its tests on one worker).

Needs PostgreSQL on 127.0.0.1:5432 with trust auth for user `postgres` (or $MLOPS_TEST_POSTGRES_DSN);
a throwaway database is created and dropped. Without it the test is skipped, except in CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from mlops.data.sources import load_builtin
from tests.conftest import cli_env
from tests.net import free_port, stop_process, wait_ready
from tests.postgres import throwaway_url

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("mlflow-server")]

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "quickstart.yaml"  # absolute: the client runs elsewhere
HEALTH_TIMEOUT_S = 180  # ~16-20 s on an idle box; 78 s seen with the 2 CPUs busy with other tests
EPOCHS = 2
ROWS = 40  # rows the client sends to the server: two monitor windows of 20
# the server's access log line of one artifact download through its proxy
DOWNLOAD = re.compile(r'"GET /api/2\.0/mlflow-artifacts/artifacts/\S+?/bundle/model\.onnx HTTP/1\.1" 200')


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    """A fresh, empty database; yields its SQLAlchemy URI and drops it afterwards."""
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed: name the driver
    with throwaway_url("mlops_it", "postgresql+psycopg2") as url:
        yield url


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class MlflowServer:
    url: str
    artifacts: Path  # --artifacts-destination: the server's own folder, never named to a client
    log: Path  # its output, access log included

    def downloads(self) -> int:
        """How many times a bundle's model.onnx has been downloaded through the server's artifact proxy."""
        return len(DOWNLOAD.findall(self.log.read_text(errors="replace")))


@pytest.fixture(scope="module")
def mlflow_server(postgres_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    artifacts = root / "server-artifacts"
    artifacts.mkdir()
    log = root / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", postgres_db, "--artifacts-destination", str(artifacts), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
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
        yield MlflowServer(url, artifacts, log)
    finally:
        stop_process(proc, timeout=20, group=True)  # the server and its workers: one process group


@dataclass(frozen=True)
class Trained:
    summary: dict[str, Any]  # `mlops run --json`
    home: Path  # the trainer's MLOPS_HOME


@pytest.fixture(scope="module")
def trained(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The quickstart recipe run once against the server: trained, logged, registered as champion."""
    root = tmp_path_factory.mktemp("trainer")
    # Prefect's temporary server, as a user gets it
    env = cli_env(root / "mlops_home", root / "prefect_home", None) | {"MLFLOW_TRACKING_URI": mlflow_server.url}
    cmd = [sys.executable, "-m", "mlops.cli", "run", "--json", str(RECIPE), f"trainer.max_epochs={EPOCHS}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, (
        f"mlops run exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n"
        f"{proc.stderr[-6000:]}\n--- server log ---\n{_tail(mlflow_server.log, 3000)}"
    )
    return Trained(json.loads([line for line in proc.stdout.splitlines() if line.strip()][-1]), root / "mlops_home")


def _client(url: str) -> Any:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out |= _artifact_paths(client, run_id, info.path)
        else:
            out.add(info.path)
    return out


def test_recipe_against_mlflow_server_on_postgres(mlflow_server: MlflowServer, trained: Trained,
                                                  tmp_path: Path) -> None:
    url, summary = mlflow_server.url, trained.summary
    assert summary["tracking_uri"] == url
    # nothing may have fallen back to a local store
    assert not (trained.home / "mlflow.db").exists()

    client = _client(url)
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
    assert list(mlflow_server.artifacts.rglob("model.onnx")), "nothing stored under --artifacts-destination"

    model = client.get_registered_model("quickstart")
    assert "champion" in model.aliases, model.aliases
    champion = client.get_model_version_by_alias("quickstart", "champion")
    assert champion.run_id == run.info.run_id
    assert str(champion.version) == str(summary["model_version"])
    assert "champion" in summary["aliases"]


def test_no_registered_version_or_run_names_a_local_path(mlflow_server: MlflowServer, trained: Trained) -> None:
    """What the registry hands a client must resolve through the server, never to a path on the trainer's disk
    (or the server's): a version's source and its run's artifact URI are `mlflow-artifacts:` (or `models:`) URIs."""
    client = _client(mlflow_server.url)
    versions = client.search_model_versions("name='quickstart'")
    assert versions, "nothing registered"
    for mv in versions:
        assert mv.source.startswith(("mlflow-artifacts:", "models:")), (mv.version, mv.source)
        run = client.get_run(mv.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        for text in (mv.source, run.info.artifact_uri, *mv.tags.values()):
            assert str(mlflow_server.artifacts) not in text and str(trained.home) not in text, text


@dataclass(frozen=True)
class Teammate:
    """Another machine's view: its own folder to work in, its own workspace and HOME, and only the server's URL."""

    work: Path  # the working directory of every command
    home: Path  # HOME
    workspace: Path  # MLOPS_HOME: empty at first (no .mlops store)
    env: dict[str, str]
    downloads_before: int  # bundles downloaded through the server's proxy before the teammate began

    def run(self, *args: str, timeout: int = 300) -> dict[str, Any]:
        """`mlops ARGS --json` here; its JSON summary (the whole output is checked for the server's paths)."""
        proc = subprocess.run([sys.executable, "-m", "mlops.cli", *args, "--json"], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"mlops {args[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-5000:]}"
        return {"json": json.loads(proc.stdout.strip().splitlines()[-1]), "said": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def teammate(mlflow_server: MlflowServer, trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Teammate:
    root = tmp_path_factory.mktemp("teammate")
    work, home = root / "work", root / "home"
    work.mkdir()
    home.mkdir()
    env = cli_env(home / ".mlops", home / ".prefect", None) | {"HOME": str(home),
                                                                 "MLFLOW_TRACKING_URI": mlflow_server.url}
    # the only way to the model is the server: nothing in the environment names its folders or the trainer's
    for value in env.values():
        assert str(mlflow_server.artifacts) not in value and str(trained.home) not in value, value
    assert not (home / ".mlops").exists()
    return Teammate(work, home, home / ".mlops", env, mlflow_server.downloads())


def _no_local_paths(text: str, mlflow_server: MlflowServer, trained: Trained) -> None:
    """Nothing a teammate's command said or wrote names the server's artifact folder or the trainer's workspace."""
    for path in (mlflow_server.artifacts, trained.home):
        assert str(path) not in text, f"{path} leaked to the client:\n{text[-3000:]}"


def _fetched_through_the_server(mlflow_server: MlflowServer, trained: Trained, teammate: Teammate) -> Path:
    """The champion's bundle, downloaded once through the server's artifact proxy (by whichever of the teammate's
    commands needed it first) into the teammate's own workspace, byte for byte the registered one. Its folder."""
    fetched = [p.parent for p in teammate.workspace.rglob("model.onnx")]
    assert len(fetched) == 1, fetched
    original = Path(trained.summary["bundle"]) / "model.onnx"
    assert (fetched[0] / "model.onnx").read_bytes() == original.read_bytes()
    assert mlflow_server.downloads() - teammate.downloads_before == 1, (
        f"the bundle did not come (once) through the server's artifact proxy:\n{_tail(mlflow_server.log, 3000)}")
    return fetched[0]


def _breast_cancer_rows(n: int) -> list[dict[str, float]]:
    frame = load_builtin("breast_cancer").drop(columns="target").head(n)
    return [{k: float(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def test_serve_and_monitor_fetch_the_champion_through_the_server(mlflow_server: MlflowServer, trained: Trained,
                                                                 teammate: Teammate) -> None:
    version = str(trained.summary["model_version"])
    port = free_port()
    out = teammate.work / "serve.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", "quickstart@champion", "--port",
                                 str(port)], cwd=teammate.work, env=teammate.env, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc, timeout=120, tail=lambda: _tail(out))
        answer = _post(f"http://127.0.0.1:{port}/v1/models/quickstart:predict",
                       {"instances": _breast_cancer_rows(ROWS)})
        assert len(answer["predictions"]) == ROWS
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/quickstart", timeout=10) as resp:
            assert json.loads(resp.read())["versions"] == [version]
    finally:
        stop_process(proc, timeout=20)  # SIGTERM: the log's writer drains before the process ends
    said = _tail(out, 100_000)
    _no_local_paths(said, mlflow_server, trained)
    bundle = _fetched_through_the_server(mlflow_server, trained, teammate)
    assert str(bundle) in said  # the server says where its model came from: here

    monitored = teammate.run("monitor", str(RECIPE), "monitor.window.size=20", "monitor.window.min_samples=10")
    result = monitored["json"]
    assert result["model"] == "quickstart" and str(result["version"]) == version
    assert sum(w["rows"] for w in result["windows"]) + result["pending_rows"] == ROWS
    assert result["reference"]["source"] == "training"
    _no_local_paths(monitored["said"], mlflow_server, trained)
    _fetched_through_the_server(mlflow_server, trained, teammate)  # the same bundle: not downloaded twice


def test_batch_scores_with_the_champion_fetched_through_the_server(mlflow_server: MlflowServer, trained: Trained,
                                                                   teammate: Teammate) -> None:
    pd.DataFrame(_breast_cancer_rows(25)).to_csv(teammate.work / "new.csv", index=False)
    scored = teammate.run("batch", str(RECIPE), "--input", "new.csv", "--output", "scores.parquet")
    result = scored["json"]
    assert result["rows"] == result["scored"] == 25 and result["failed"] == 0
    assert result["model"] == "quickstart" and str(result["version"]) == str(trained.summary["model_version"])
    assert len(pd.read_parquet(teammate.work / "scores.parquet")) == 25
    _no_local_paths(scored["said"], mlflow_server, trained)
    _fetched_through_the_server(mlflow_server, trained, teammate)


def test_deploy_renders_from_the_champion_fetched_through_the_server(mlflow_server: MlflowServer, trained: Trained,
                                                                     teammate: Teammate) -> None:
    version = str(trained.summary["model_version"])
    deployed = teammate.run("deploy", str(RECIPE), "--target", "kserve", "--target", "container", "--output",
                            "deploy")
    result = deployed["json"]
    assert result["model"] == f"quickstart/{version}"
    manifest = (teammate.work / "deploy" / "inferenceservice.yaml").read_text()
    assert f'mlops/version: "{version}"' in manifest and f"quickstart-v{version}" in manifest
    context = teammate.work / result["files"]["image_context"]  # as given: --output is relative to the work folder
    assert context.resolve().is_relative_to(teammate.work.resolve()) and (context / "Dockerfile").is_file()
    bundle = _fetched_through_the_server(mlflow_server, trained, teammate)
    onnx = list(context.rglob("model.onnx"))
    assert len(onnx) == 1 and onnx[0].read_bytes() == (bundle / "model.onnx").read_bytes()
    rendered = "\n".join(p.read_text(errors="replace") for p in (teammate.work / "deploy").rglob("*")
                         if p.is_file() and p.suffix != ".onnx")
    _no_local_paths(deployed["said"] + rendered, mlflow_server, trained)
