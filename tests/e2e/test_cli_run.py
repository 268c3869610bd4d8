"""The user's path: `mlops run` through the CLI with the embedded defaults (sqlite MLflow, ephemeral Prefect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, last_json, run_cli

pytestmark = pytest.mark.e2e


def client_for(env: dict[str, str]) -> MlflowClient:
    uri = f"sqlite:///{env['MLOPS_HOME']}/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)


def test_run_caches_registers_and_moves_aliases(isolated_env: dict[str, str]) -> None:
    first = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=2"], isolated_env))
    for key in ("run_id", "model_name", "model_version", "aliases", "metrics", "bundle", "data_fingerprint"):
        assert key in first
    assert first["model_name"] == "quickstart" and first["model_version"] == "1"
    assert first["aliases"] == ["challenger", "champion"]
    assert first["data_fingerprint"].startswith("sha256:")
    assert first["metrics"]["test/accuracy"] > 0.8
    assert set(first["cache"].values()) == {"ran"}
    bundle = Path(first["bundle"])
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["data_fingerprint"] == first["data_fingerprint"] and meta["labels"] == ["0", "1"]
    assert meta["parity"]["max_abs_diff"] <= 1e-5

    # the plan now shows what a re-run would reuse
    plan = last_json(run_cli(["plan", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=2"], isolated_env))
    assert {s["name"]: s["cached"] for s in plan["steps"]} == {
        "load_data": True, "check_data": True, "split": True, "preprocess": True, "train": True, "evaluate": True,
        "export": True, "assess": True, "gate": False, "register": False}

    # unchanged recipe: every cached step is reused and the same model version is reported, not a new one
    again = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=2"], isolated_env))
    assert {k: v for k, v in again["cache"].items() if k not in ("gate", "register")} == {
        k: "reused" for k in ("load_data", "check_data", "split", "preprocess", "train", "evaluate", "export", "assess")}
    assert again["model_version"] == "1" and again["run_id"] != first["run_id"]
    # the gate compared with no champion the first time, with version 1 now: it ran again
    assert again["cache"]["gate"] == "ran" and again["gates"]["champion"] == "quickstart/1"

    # and again: the champion is the same version, so the gate's decision is reused too; register always runs
    third = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=2"], isolated_env))
    assert third["cache"]["gate"] == "reused" and third["cache"]["register"] == "ran"
    assert third["gates"] == again["gates"] | {"report": third["gates"]["report"]}
    assert Path(third["gates"]["report"]).is_file() and third["model_version"] == "1"

    # a model change re-runs from train on; data steps stay cached; the new version is only the challenger
    changed = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=2", "model.lr=0.01"],
                                isolated_env))
    assert changed["cache"]["split"] == "reused" and changed["cache"]["train"] == "ran"
    assert changed["model_version"] == "2" and changed["aliases"] == ["challenger"]
    aliases = client_for(isolated_env).get_registered_model("quickstart").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "challenger": "2"}


def test_run_records_everything_in_mlflow(isolated_env: dict[str, str]) -> None:
    summary = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=3",
                                 "trainer.early_stopping=null"], isolated_env))
    client = client_for(isolated_env)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "3" and run.data.params["seed"] == "42"
    assert run.data.params["data.fingerprint"] == summary["data_fingerprint"]
    assert int(run.data.params["split.train_rows"]) + int(run.data.params["split.val_rows"]) + int(
        run.data.params["split.test_rows"]) == 569
    assert len(client.get_metric_history(summary["run_id"], "val/loss")) == 3
    mv = client.get_model_version("quickstart", summary["model_version"])  # the ONNX stored once: the run's bundle
    assert mv.source == run.info.artifact_uri + "/bundle"
    assert "bundle/MLmodel" in {a.path for a in client.list_artifacts(summary["run_id"], "bundle")}
    train = [d for d in run.inputs.dataset_inputs if any(t.value == "train" for t in d.tags)]
    assert train and summary["data_fingerprint"].startswith(train[0].dataset.digest)
    assert {"test/auroc", "val/accuracy", "export/parity_max_abs_diff"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    artifacts |= {a.path for d in ("plots", "environment", "bundle", "data") for a in client.list_artifacts(summary["run_id"], d)}
    assert {"recipe.yaml", "recipe.lock", "environment/pip-freeze.txt", "plots/confusion_matrix.png",
            "bundle/model.onnx", "bundle/bundle.json", "data/schema.json"} <= artifacts
    lock = json.loads(Path(client.download_artifacts(summary["run_id"], "recipe.lock")).read_text())
    assert lock["recipe_hash"] == summary["recipe_hash"]
    assert lock["data"]["fingerprint"] == summary["data_fingerprint"]
    assert lock["seeds"] == {"global": 42, "split": 42} and "torch" in lock["packages"]
    assert lock["git"] is None or len(lock["git"]["commit"]) == 40


def test_multirun_tracks_one_run_per_job(isolated_env: dict[str, str]) -> None:
    result = last_json(run_cli(["run", "-m", "--json", "recipes/quickstart.yaml", "model.lr=1e-3,1e-2",
                                "trainer.max_epochs=1"], isolated_env))
    jobs = result["jobs"]
    assert [j["overrides"] for j in jobs] == [["model.lr=0.001", "trainer.max_epochs=1"],
                                              ["model.lr=0.01", "trainer.max_epochs=1"]]
    client = client_for(isolated_env)
    children = [client.get_run(j["run_id"]) for j in jobs]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result["parent_run_id"]}
    assert [c.data.params["model.lr"] for c in children] == ["0.001", "0.01"]
    assert client.get_run(result["parent_run_id"]).info.status == "FINISHED"


def test_csv_with_categoricals_and_missing_values(isolated_env: dict[str, str]) -> None:
    summary = last_json(run_cli(["run", "--json", "recipes/churn_csv.yaml", "trainer.max_epochs=2"], isolated_env))
    bundle = Path(summary["bundle"])
    meta = json.loads((bundle / "bundle.json").read_text())
    kinds = {i["name"]: i["dtype"] for i in meta["inputs"]}
    assert kinds["plan"] == "string" and kinds["tenure_months"] == "float32"
    session = ort.InferenceSession(str(bundle / "model.onnx"))
    frame = pd.read_csv(ROOT / "examples" / "churn.csv").head(4)
    feeds = {}
    for spec in meta["inputs"]:
        col = frame[spec["name"]]
        if spec["dtype"] == "string":
            feeds[spec["name"]] = np.array([[""] if pd.isna(v) else [str(v)] for v in col], dtype=object)
        else:
            feeds[spec["name"]] = col.to_numpy(np.float32).reshape(-1, 1)
    feeds["plan"][0, 0] = "enterprise"  # never seen in training
    feeds["tenure_months"][1, 0] = np.nan  # missing: imputed inside the graph
    label, proba = session.run(["label", "probabilities"], feeds)
    assert set(label) <= {"no", "yes"} and proba.shape == (4, 2)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1, atol=1e-6)


def test_regression_recipe(isolated_env: dict[str, str]) -> None:
    summary = last_json(run_cli(["run", "--json", "recipes/diabetes_regression.yaml", "trainer.max_epochs=3"], isolated_env))
    assert {"test/rmse", "test/mae", "test/r2"} <= set(summary["metrics"])
    session = ort.InferenceSession(str(Path(summary["bundle"]) / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["prediction"]
    assert Path(client_for(isolated_env).download_artifacts(summary["run_id"], "plots/residuals.png")).stat().st_size > 1000


def test_invalid_recipe_fails_cleanly_and_writes_nothing(isolated_env: dict[str, str]) -> None:
    proc = run_cli(["run", "recipes/quickstart.yaml", "trainer.max_epoch=3"], isolated_env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "trainer.max_epoch" in proc.stderr and "max_epochs" in proc.stderr
    assert not Path(isolated_env["MLOPS_HOME"]).exists()
