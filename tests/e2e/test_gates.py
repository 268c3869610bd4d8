"""Gates as a user meets them: a passing run gets aliases and a report, a failing gate registers the model
without an alias and exits non-zero, `--allow-failed-gates` says loudly what it did, `mlops evaluate` scores
a registered model, and a broken data expectation stops the run before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import last_json, run_cli

pytestmark = pytest.mark.e2e

FAST = ["trainer.max_epochs=3"]
IMPOSSIBLE_LATENCY = "evaluate.gates.3.max=1e-9"  # configs/gates/classification_load.yaml: perf/latency_p99_ms


def client_for(env: dict[str, str]) -> MlflowClient:
    uri = f"sqlite:///{env['MLOPS_HOME']}/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)


def aliases(env: dict[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in client_for(env).get_registered_model("quickstart").aliases.items()}


def test_gates_decide_promotion_end_to_end(isolated_env: dict[str, str]) -> None:
    first = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", *FAST], isolated_env))
    gates = first["gates"]
    assert gates["outcome"] == "passed" and first["aliases"] == ["challenger", "champion"]
    # no champion yet; the last two are the load test's (gates/classification_load.yaml)
    assert [v["status"] for v in gates["verdicts"]] == ["passed", "skipped", "passed", "passed", "passed", "passed"]
    for key in ("test/calibration_error", "test/pr_auc", "perf/latency_p99_ms", "perf/torch/latency_p99_ms",
                "robustness/failed_checks", "robustness/flip_rate"):
        assert key in first["metrics"], key
    report = json.loads((Path(gates["report"]).with_suffix(".json")).read_text())
    assert {c["kind"] for c in report["robustness"]} >= {"missing", "wrong_type", "out_of_range", "perturbation"}
    assert all(c["passed"] for c in report["robustness"])
    client = client_for(isolated_env)
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/evaluation.html", "evaluation/evaluation.json"} <= artifacts
    assert client.get_run(first["run_id"]).data.tags["mlops.gates"] == "passed"

    # a second model is compared with the champion on the same test rows, with an interval and a p-value
    second = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", *FAST, "model.lr=0.003"], isolated_env))
    vs = second["gates"]["verdicts"][1]
    assert second["gates"]["champion"] == "quickstart/1" and vs["status"] in ("passed", "failed")
    comparison = json.loads(Path(second["gates"]["report"]).with_suffix(".json").read_text())["gates"][1]["comparison"]
    assert comparison["test"] == "paired_bootstrap" and comparison["n"] == first["split_sizes"]["test"]
    lo, hi = comparison["ci"]
    assert lo <= comparison["estimate"] <= hi and 0 < comparison["p_value"] <= 1

    # a failed gate: registered for the record, tagged, no alias; the run exits 3 and says which gate and why
    failed = run_cli(["run", "recipes/quickstart.yaml", *FAST, "model.lr=0.005", IMPOSSIBLE_LATENCY], isolated_env)
    assert failed.returncode == 3, failed.stderr[-2000:]
    assert "FAILED its gates" in failed.stderr and "gate perf/latency_p99_ms <= 1e-09: FAILED" in failed.stderr
    assert "is above the maximum 1e-09" in failed.stderr and "--allow-failed-gates" in failed.stderr
    version = client.search_model_versions("name='quickstart' and tags.gates='failed'")
    assert [str(v.version) for v in version] == ["3"]
    assert "3" not in aliases(isolated_env).values()
    assert aliases(isolated_env)["champion"] == "1"

    # overriding the gates promotes that same version (no new one), loudly
    allowed = run_cli(["run", "--json", "recipes/quickstart.yaml", *FAST, "model.lr=0.005", IMPOSSIBLE_LATENCY,
                       "--allow-failed-gates"], isolated_env)
    summary = last_json(allowed)
    assert "WARNING: gates FAILED and --allow-failed-gates was given" in allowed.stderr  # --json: text on stderr
    assert summary["model_version"] == "3" and summary["gates"]["outcome"] == "allowed"
    assert aliases(isolated_env)["challenger"] == "3"
    assert client.get_model_version("quickstart", "3").tags["gates"] == "allowed"

    # any registered model on the recipe's data: the ONNX scores agree with the run's own torch evaluation
    evaluated = last_json(run_cli(["evaluate", "--json", "recipes/quickstart.yaml", "--model", "quickstart@champion"],
                                  isolated_env))
    assert evaluated["model"] == "quickstart/1"
    assert evaluated["metrics"]["test/auroc"] == pytest.approx(first["metrics"]["test/auroc"], abs=1e-5)
    assert evaluated["metrics"]["test/log_loss"] == pytest.approx(first["metrics"]["test/log_loss"], abs=1e-4)
    assert Path(evaluated["report"]).is_file() and evaluated["gates"]["outcome"] == "passed"
    strict = run_cli(["evaluate", "recipes/quickstart.yaml", "--model", "quickstart/2", "evaluate.gates.0.min=1.5"],
                     isolated_env)
    assert strict.returncode == 3 and "gate test/auroc >= 1.5: FAILED" in strict.stderr


def test_broken_expectation_stops_before_training(isolated_env: dict[str, str]) -> None:
    proc = run_cli(["run", "recipes/churn_csv.yaml", "evaluate.expectations.columns.tenure_months.max=50"],
                   isolated_env)
    assert proc.returncode == 2
    assert "column 'tenure_months': max: values above 50" in proc.stderr and "rows (0-based)" in proc.stderr
    assert "the run stopped before training" in proc.stderr
    assert "step train" not in proc.stdout
