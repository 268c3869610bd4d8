"""The labelling round trip through a real Label Studio server on loopback: `mlops label export` writes the tasks
and the labeling config, Label Studio takes them (a project, an import, annotations made through its API, a JSON
export), `mlops label import` records the annotations as feedback, which the prediction log's join shows and the
next retrain's data refresh learns from.

Label Studio lives in its own venv (`make label-studio`: it pins Django and many packages of its own); the test
finds it at .venv-labelstudio/bin/label-studio or $MLOPS_LABEL_STUDIO, is skipped without it, fails when CI=true.
Its first start migrates a fresh SQLite database: a minute or more on a small machine, once for the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlops.cli import main
from mlops.core.predlog import PredictionLog, prediction_rows
from mlops.engine.validate import load_validated
from mlops.improve.feedback import read_joined
from mlops.improve.refresh import refresh_data
from tests.conftest import ROOT
from tests.improve_fixtures import MODEL, toy_recipe
from tests.net import free_port, stop_process

pytestmark = pytest.mark.integration

TOKEN = "mlops-test-token-0123456789"
START_TIMEOUT_S = 420  # Django's migrations on SQLite, on two busy cores


def label_studio_binary() -> Path:
    exe = Path(os.environ.get("MLOPS_LABEL_STUDIO") or ROOT / ".venv-labelstudio" / "bin" / "label-studio")
    if not exe.is_file():
        reason = f"Label Studio is not installed at {exe} (run `make label-studio`, or set MLOPS_LABEL_STUDIO)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


@dataclass
class LabelStudio:
    url: str
    proc: subprocess.Popen[bytes]
    output: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {TOKEN}"}, timeout=60)

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    exe = label_studio_binary()
    home = tmp_path_factory.mktemp("label-studio")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))} | {
        "LATEST_VERSION_CHECK": "false",  # no call to PyPI at start
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # the fixed --user-token below is a legacy token
        "HOME": str(home),
    }
    for _ in range(3):  # the port is free when probed, not held: another process may take it first
        port = free_port()
        output = home / f"server-{port}.out"
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--host",
                 f"http://127.0.0.1:{port}", "--port", str(port), "--data-dir", str(home / "data"),
                 "--username", "annotator@example.com", "--password", "mlops-test-password", "--user-token", TOKEN,
                 "--enable-legacy-api-token", "--log-level", "WARNING"],
                cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = LabelStudio(f"http://127.0.0.1:{port}", proc, output)
        if _healthy(server):
            break
        stop_process(proc, timeout=15, group=True)
        if "already in use" not in server.tail().lower():
            raise AssertionError(f"Label Studio did not become healthy in {START_TIMEOUT_S} s:\n{server.tail()}")
    else:
        raise AssertionError("Label Studio: no free port in 3 tries")
    try:
        yield server
    finally:
        stop_process(server.proc, timeout=30, group=True)


def _healthy(server: LabelStudio) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while server.proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def log_traffic(log: Path) -> dict[str, float]:
    """Served answers of the toy model with spread-out confidences, and a shadow that disagrees once."""
    confidence = {"p0": 0.97, "p1": 0.52, "p2": 0.93, "p3": 0.58, "p4": 0.99, "p5": 0.64, "p6": 0.9}
    ids = list(confidence)
    inputs = [{"age": 25.0 + 3 * k, "income": 30.0 + k, "city": "abc"[k % 3]} for k in range(len(ids))]
    outputs = [{"label": "yes", "probabilities": [1 - p, p]} for p in confidence.values()]
    writer = PredictionLog(log)
    try:
        writer.submit("predictions", prediction_rows(ids, MODEL, "1", "champion", inputs, outputs, 2.0)).result(30)
        writer.submit("predictions", prediction_rows(["p4"], MODEL, "2", "shadow", [inputs[4]],
                                                     [{"label": "no", "probabilities": [0.7, 0.3]}], 2.0)).result(30)
    finally:
        writer.close()
    return confidence


def choices(label: str, to_name: str) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [label]}}]


def test_label_round_trip_through_label_studio(label_studio: LabelStudio, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    log = tmp_path / ".mlops" / "predictions" / f"{MODEL}.sqlite"
    recipe = toy_recipe(tmp_path / "project")
    log_traffic(log)

    tasks_file = tmp_path / "tasks.json"
    assert main(["label", "export", MODEL, "--count", "4", "-o", str(tasks_file), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["ids"] == ["p1", "p4", "p3", "p5"]  # least confident, the shadow's disagreement, then by turn
    config = Path(exported["config"]).read_text()

    with label_studio.client() as ls:
        project = ls.post("/api/projects", json={"title": "mlops toy labels", "label_config": config})
        assert project.status_code == 201, project.text
        pid = project.json()["id"]
        imported = ls.post(f"/api/projects/{pid}/import", json=json.loads(tasks_file.read_text()))
        assert imported.status_code == 201, imported.text
        assert imported.json()["task_count"] == 4 and imported.json()["prediction_count"] == 4
        listed = ls.get("/api/tasks", params={"project": pid, "page_size": 100})
        assert listed.status_code == 200, listed.text
        by_id = {t["data"]["prediction_id"]: t["id"] for t in listed.json()["tasks"]}
        assert sorted(by_id) == sorted(exported["ids"])
        # a person corrects two answers (p1 twice: the later one counts), cancels p3, leaves p5 alone
        for prediction_id, label in (("p1", "yes"), ("p4", "no"), ("p1", "no")):
            made = ls.post(f"/api/tasks/{by_id[prediction_id]}/annotations", json={"result": choices(label, "inputs")})
            assert made.status_code == 201, made.text
            time.sleep(0.01)  # distinct update times
        cancelled = ls.post(f"/api/tasks/{by_id['p3']}/annotations", json={"result": [], "was_cancelled": True})
        assert cancelled.status_code == 201, cancelled.text
        # every task, the unannotated too (by default Label Studio exports annotated tasks only)
        export = ls.get(f"/api/projects/{pid}/export", params={"exportType": "JSON", "download_all_tasks": "true"})
        assert export.status_code == 200, export.text[:2000]
    export_file = tmp_path / "export.json"
    export_file.write_bytes(export.content)
    served_answers = {t["data"]["prediction_id"]: t for t in export.json()}
    assert served_answers["p1"]["annotations"][0]["prediction"]["result"] == choices("yes", "inputs")  # pre-annotated

    assert main(["label", "import", str(export_file), "--model", MODEL, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["imported"] == 2 and result["tasks"] == 4
    assert result["skipped"] == {"cancelled": 1, "no_annotation": 1}

    joined = {j.id: j for j in read_joined(log, MODEL)}
    assert (joined["p1"].truth, joined["p1"].correct, joined["p1"].source) == ("no", False, "label")
    assert (joined["p4"].truth, joined["p4"].correct) == ("no", False)
    assert all(joined[i].truth is None for i in ("p0", "p2", "p3", "p5", "p6"))

    refreshed = refresh_data(load_validated(recipe, ["improve.refresh.min_production_rows=1"]), time.time())
    assert refreshed.path is not None and sorted(refreshed.ids) == ["p1", "p4"]
    assert refreshed.by_source == {"label": 2}
    import pandas as pd

    production = pd.read_parquet(refreshed.path).iloc[refreshed.reference_rows:]
    assert sorted(zip(production["age"], production["y"], strict=True)) == [(28.0, "no"), (37.0, "no")]
