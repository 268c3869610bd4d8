"""`mlops retrain` as a user runs it, with the real engine, MLflow and Prefect: a champion serves, production
predictions get ground truth (over HTTP and with `mlops feedback`), a retrain learns from them and waits for
approval, the cooldown refuses another, `mlops approve` makes it champion, and a challenger that is not better
is stopped by its gates."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, last_json, run_cli

pytestmark = pytest.mark.e2e

FAST = ["trainer.max_epochs=2", "evaluate.performance.iterations=20", "evaluate.performance.torch=false",
        "evaluate.robustness.rows=50"]


def serve_and_label(env: dict[str, str], tmp_path: Path, n: int = 60) -> list[str]:
    """Serve the champion, send it `n` real rows, and record their true labels: half by POST /v1/feedback,
    half with `mlops feedback FILE`. Returns the prediction ids."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(tmp_path / "serve.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", "quickstart@champion", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.out").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        ids = []
        for i, (_, row) in enumerate(frame.sample(n, random_state=1).iterrows()):
            features = {k: float(v) for k, v in row.items() if k != "target"}
            pid = f"prod-{i}"
            body = json.dumps({"id": pid, "instances": [features]}).encode()
            req = urllib.request.Request(f"{url}/v1/models/quickstart:predict", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
            ids.append((pid, str(int(row["target"]))))
        for pid, label in ids[: n // 2]:
            req = urllib.request.Request(f"{url}/v1/feedback", json.dumps({"id": pid, "label": label}).encode(),
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read()) == {"recorded": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        out.close()
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\n" + "".join(f"{pid},{label}\n" for pid, label in ids[n // 2:]))
    recorded = run_cli(["feedback", str(csv), "--model", "quickstart"], env)
    assert recorded.returncode == 0 and f"{n - n // 2} of {n - n // 2} ids matched" in recorded.stdout
    return [pid for pid, _ in ids]


def test_retrain_learns_from_feedback_waits_for_approval_and_stops_a_worse_model(
        isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = isolated_env
    uri = f"sqlite:///{env['MLOPS_HOME']}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a registry URI another test left set
    champion = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", *FAST], env))
    assert champion["aliases"] == ["challenger", "champion"]
    ids = serve_and_label(env, tmp_path)

    # the retrain: a Prefect flow that trains on reference + labelled production rows, then waits for a person
    waiting = run_cli(["retrain", "--json", "recipes/quickstart.yaml", *FAST, "improve.rollout.mode=direct",
                       "improve.promotion.policy=require_approval", "--reason", "labels from the clinic audit"], env)
    result = last_json(waiting)
    assert result["outcome"] == "awaiting_approval" and result["trigger"] == "manual"
    assert "Beginning flow run" in waiting.stdout + waiting.stderr and "mlops-retrain" in waiting.stdout + waiting.stderr
    assert result["version"] == "2" and f"mlops approve {result['run_id']}" in waiting.stderr
    refresh = result["refresh"]
    assert refresh["production_rows"] == 60 and refresh["reference_rows"] == 569
    run = client.get_run(result["run_id"])
    assert run.data.tags["mlops.data_fingerprint"] == refresh["fingerprint"] != champion["data_fingerprint"]
    assert run.data.tags["mlops.improve.decision"] == "await_approval"
    assert run.data.tags["mlops.improve.reason"] == "labels from the clinic audit"
    lineage = json.loads(Path(refresh["lineage"]).read_text())
    assert sorted(lineage["production"]["ids"]) == sorted(ids)
    assert [a.path for a in client.list_artifacts(result["run_id"], "improve")] == [
        f"improve/{Path(refresh['lineage']).name}"]
    aliases = {k: str(v) for k, v in client.get_registered_model("quickstart").aliases.items()}
    assert aliases == {"champion": "1", "challenger": "2"}

    # a second retrain inside the cooldown is refused at once (nothing trained, and recorded)
    refused = run_cli(["retrain", "recipes/quickstart.yaml", *FAST, "--reason", "again"], env)
    assert refused.returncode == 1 and "retrain of quickstart skipped: cooldown:" in refused.stdout
    assert "Beginning flow run" not in refused.stdout + refused.stderr

    approved = last_json(run_cli(["approve", result["run_id"][:10], "--by", "erin", "--reason", "slices look fine",
                                  "--json"], env))
    assert approved["outcome"] == "promoted" and approved["champion"] == "2"
    assert str(client.get_registered_model("quickstart").aliases["champion"]) == "2"
    version = client.get_model_version("quickstart", "2")
    assert version.tags["mlops.improve.decision"] == "promoted" and version.tags["mlops.improve.decided_by"] == "user:erin"

    # a challenger that is not better: stopped by its gates, the champion stays
    worse = run_cli(["retrain", "--json", "recipes/quickstart.yaml", *FAST, "trainer.max_epochs=1", "model.lr=1e-6",
                     "improve.rollout.mode=direct", "--reason", "try a tiny learning rate", "--force"], env)
    stopped = json.loads(worse.stdout)  # --json: the result alone on stdout
    assert worse.returncode == 3 and stopped["outcome"] == "stopped", worse.stdout[-3000:]
    assert stopped["decision"]["by"] == "gates" and stopped["decision"]["evidence"]["failures"]
    assert stopped["version"] == "3" and client.get_model_version("quickstart", "3").tags["gates"] == "failed"
    aliases = {k: str(v) for k, v in client.get_registered_model("quickstart").aliases.items()}
    assert aliases == {"champion": "2", "challenger": "2"}

    audit = [json.loads(line) for line in (Path(env["MLOPS_HOME"]) / "improve" / "audit.jsonl").read_text().splitlines()]
    trail = [(r["event"], r.get("decision")) for r in audit]
    assert trail == [("retrain_started", None), ("data_refreshed", None), ("trained", None),
                     ("decision", "await_approval"), ("retrain_skipped", None), ("decision", "approve"),
                     ("promoted", None), ("retrain_started", None), ("data_refreshed", None), ("trained", None),
                     ("decision", "stop")]
    assert audit[7]["forced"] is True and audit[7]["overridden"].startswith("cooldown")
    assert os.path.isfile(refresh["path"])
