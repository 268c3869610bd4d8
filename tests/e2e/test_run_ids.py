"""Finding runs again: `mlops runs` shows 12 characters of each id and `diff`, `reproduce` and `approve` take
any unique prefix; an ambiguous one lists the candidates, an unknown one names the store searched. `mlops runs`
shows each run's gate outcome and its result against the champion."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from mlops.engine.results import StepOutput
from mlops.engine.runlog import log_step
from mlops.evaluate.gates import GateDecision, GateVerdict
from tests.conftest import cli_env, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / ".mlops", tmp_path / "prefect", None)  # no command here starts Prefect


def _store(env: dict[str, str]) -> tuple[MlflowClient, str]:
    Path(env["MLOPS_HOME"]).mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{env['MLOPS_HOME']}/mlflow.db"
    return MlflowClient(uri, registry_uri=uri), uri


def _lock(lr: float, data: str) -> str:
    return json.dumps({"recipe": {"name": "churn", "model": {"lr": lr}}, "overrides": [f"model.lr={lr}"],
                       "data": {"fingerprint": "sha256:0", "resolved_path": data}, "packages": {},
                       "seeds": {"global": 1}, "python": "3.11", "git": None})


def _runs_sharing_a_prefix(client: MlflowClient, experiment: str) -> list[str]:
    """17 runs: two at least share their first character (there are 16 hex digits)."""
    return [client.create_run(experiment).info.run_id for _ in range(17)]


def test_diff_and_reproduce_take_a_unique_prefix(env: dict[str, str], tmp_path: Path) -> None:
    client, uri = _store(env)
    exp = client.create_experiment("churn", artifact_location=(tmp_path / "artifacts").as_uri())  # not ./mlruns
    runs = _runs_sharing_a_prefix(client, exp)
    a, b = runs[:2]
    client.log_text(a, _lock(0.001, str(tmp_path / "gone.csv")), "recipe.lock")
    client.log_text(b, _lock(0.01, str(tmp_path / "gone.csv")), "recipe.lock")

    shown = run_cli(["runs"], env)
    assert shown.returncode == 0, shown.stderr
    assert a[:12] in shown.stdout and a not in shown.stdout  # the table shows 12 characters

    diff = run_cli(["diff", "--json", a[:12], b[:12]], env)
    assert diff.returncode == 0, diff.stderr
    rows = {(d["section"], d["key"]): (d["a"], d["b"]) for d in json.loads(diff.stdout.splitlines()[-1])}
    assert rows[("config", "model.lr")] == ("0.001", "0.01")

    # the prefix is resolved before anything else: this run's data file is gone, and the error names it in full
    again = run_cli(["reproduce", a[:12]], env)
    assert again.returncode == 2 and f"that run {a} read is gone" in again.stderr, again.stderr

    by_first = defaultdict(list)
    for run in runs:
        by_first[run[0]].append(run)
    prefix, sharing = next((k, v) for k, v in by_first.items() if len(v) > 1)
    for args in (["diff", prefix, b], ["reproduce", prefix]):
        proc = run_cli(args, env)
        assert proc.returncode == 2, proc.stderr
        assert f"run '{prefix}' is ambiguous" in proc.stderr and "Traceback" not in proc.stderr
        assert all(run in proc.stderr for run in sharing)  # every candidate, in full

    unknown = next(c for c in "0123456789abcdef" if c not in by_first) + "1234"
    proc = run_cli(["reproduce", unknown], env)
    assert proc.returncode == 2 and f"no run '{unknown}' in the tracking store {uri}" in proc.stderr


def test_approve_takes_a_unique_prefix_and_lists_the_candidates(env: dict[str, str]) -> None:
    audit = Path(env["MLOPS_HOME"]) / "improve" / "audit.jsonl"
    audit.parent.mkdir(parents=True)
    records = [{"ts": 1.0, "time": "2026-12-01T10:00:00Z", "event": "decision", "decision": "await_approval",
                "model": "churn", "version": "4", "run_id": "abc123" + "0" * 26},
               {"ts": 2.0, "time": "2026-12-01T11:00:00Z", "event": "promoted", "model": "churn", "version": "5",
                "run_id": "abc999" + "0" * 26}]
    audit.write_text("".join(json.dumps(r) + "\n" for r in records))

    proc = run_cli(["approve", "abc"], env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "retrain run 'abc' is ambiguous" in proc.stderr
    assert all(r["run_id"] in proc.stderr for r in records), proc.stderr  # the promoted one too

    proc = run_cli(["approve", "fff"], env)
    assert proc.returncode == 2 and f"no retrain run 'fff' in the audit log {audit}" in proc.stderr


class _Tags:
    """A stand-in MLflow client that keeps the tags a step logger sets."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags[key] = value

    def log_artifact(self, *args: Any) -> None:
        pass


def _verdict(kind: str, status: str) -> GateVerdict:
    return GateVerdict(metric="test/auroc", kind=kind, threshold="t", status=status, detail="d")  # type: ignore[arg-type]


@pytest.mark.parametrize(("verdicts", "champion", "shown"), [
    (["passed", "passed"], "churn/1", "passed vs churn/1"),
    (["passed", "failed"], "churn/2", "failed vs churn/2"),
    (["passed", "skipped"], None, "no champion yet"),
])
def test_runs_show_the_gates_and_the_result_vs_the_champion(env: dict[str, str], verdicts: list[str],
                                                            champion: str | None, shown: str) -> None:
    gates = [_verdict("absolute", verdicts[0]), _verdict("champion", verdicts[1])]
    decision = GateDecision(outcome="failed" if "failed" in verdicts else "passed", gates=gates, failures=[],
                            champion=champion, report={})
    logged = _Tags()
    log_step(logged, "r", "gate", StepOutput(decision, Path(".")), False)
    client, _ = _store(env)
    run = client.create_run(client.create_experiment("churn"), tags=logged.tags).info.run_id
    client.set_terminated(run)

    proc = run_cli(["runs", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout.splitlines()[-1])
    assert (row["gates"], row["vs_champion"]) == (decision.outcome, shown)
    table = run_cli(["runs"], env).stdout
    assert re.search(r"gates\s*\W\s*vs champion", table) and shown in table, table
