"""What a run shows in the Prefect UI, read back from a real Prefect server's API: a step our cache had ends its
task run Cached, the run's logs hold the `mlops` lines (printed once on the terminal), the gate table and the
links are artifacts, and a failed gate fails the flow run with its one-line reason.

Three `mlops run`s of one recipe (about 40 s on an idle box): the first trains, the second reuses every cached
step, the third fails a gate on those same cached steps (the same bytes: version 1 again, tagged gates=failed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import last_json, run_cli

pytestmark = pytest.mark.integration

RUN = ["recipes/quickstart.yaml", "trainer.max_epochs=1"]
IMPOSSIBLE_LATENCY = "evaluate.gates.3.max=1e-9"  # configs/gates/classification_load.yaml: perf/latency_p99_ms
CACHED_STEPS = {"load_data", "check_data", "split", "preprocess", "train", "evaluate", "export", "assess"}


@contextmanager
def prefect_client(env: dict[str, str]) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        yield client


def flow_run_of(client: Any, name: str) -> Any:
    """The newest `mlops-run` flow run named `name` (this test process's server runs one test at a time)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
                                 sort=FlowRunSort.START_TIME_DESC, limit=1)
    assert runs, f"no flow run named {name!r}"
    return runs[0]


def logs_of(client: Any, flow_run: Any) -> list[Any]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))


def artifacts_of(client: Any, flow_run: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    return {a.key: a for a in found if a.key}


def test_a_runs_prefect_page_shows_cache_logs_artifacts_and_gate_failures(isolated_env: dict[str, str]) -> None:
    first = last_json(run_cli(["run", "--json", *RUN], isolated_env))
    assert set(first["cache"].values()) == {"ran"}
    again = run_cli(["run", "--json", *RUN], isolated_env)
    second = last_json(again)
    # --json: stdout is the one JSON object; the progress lines went to stderr, each exactly once
    assert len(again.stdout.strip().splitlines()) == 1, again.stdout[-2000:]
    assert again.stderr.count("mlops: step train: reused cached result") == 1, again.stderr[-3000:]
    assert again.stderr.count("mlops: evaluation report ") == 1, again.stderr[-3000:]
    # the report the gate names is the run's own, there after the run (not the cache entry's staging folder)
    named = again.stderr.split("mlops: evaluation report ", 1)[1].splitlines()[0].strip()
    assert named == second["gates"]["report"] and Path(named).is_file(), named

    with prefect_client(isolated_env) as client:
        run = flow_run_of(client, " ".join(["quickstart", *RUN[1:]]))
        assert run.state.is_completed()
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
        assert states == {**{s: "Cached" for s in CACHED_STEPS}, "gate": "Completed", "register": "Completed"}

        messages = [log.message for log in logs_of(client, run) if log.name == "mlops"]
        assert f"run {second['run_id']} of recipe 'quickstart' -> {second['run_dir']}" in messages
        assert "step train: reused cached result" in messages and "step register: done" in messages
        assert sum(m.startswith("gate test/auroc >= ") for m in messages) == 1, messages

        artifacts = artifacts_of(client, run)
        gates = json.loads(artifacts["quickstart-v1-gates"].data)
        verdicts = second["gates"]["verdicts"]
        assert [(g["gate"], g["status"].lower()) for g in gates] == [
            (f"{v['metric']} {v['threshold']}", v["status"]) for v in verdicts]
        links = artifacts["quickstart-v1-run"].data
        assert second["run_id"] in links and second["gates"]["report"] in links and second["tracking_uri"] in links

    failed = run_cli(["run", *RUN, IMPOSSIBLE_LATENCY], isolated_env)
    assert failed.returncode == 3, failed.stderr[-2000:]
    with prefect_client(isolated_env) as client:
        run = flow_run_of(client, " ".join(["quickstart", *RUN[1:], IMPOSSIBLE_LATENCY]))
        assert run.state.is_failed()
        assert run.state.message.startswith("model quickstart version 1 FAILED its gates")
        assert "\n" not in run.state.message
        gates = json.loads(artifacts_of(client, run)["quickstart-v1-gates"].data)
        assert gates[3]["gate"] == "perf/latency_p99_ms <= 1e-09" and gates[3]["status"] == "FAILED"


def test_a_monitor_run_publishes_its_drift_summary(prefect_api: str) -> None:
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mlops.flows import publish_drift
    from mlops.monitor.results import MonitorResult, WindowBrief

    def window(i: int, drifted: list[str], breaches: list[str]) -> WindowBrief:
        return WindowBrief(index=i, start=f"2026-12-0{i + 1}T00:00:00Z", end=f"2026-12-0{i + 1}T01:00:00Z", rows=500,
                           judged=True, drifted_features=drifted, drift_share=len(drifted) / 4, labelled=0,
                           metrics={}, latency_ms=None, schema_violation_rate=0.0, breaches=breaches)

    result = MonitorResult(model="churn", version="3", bundle="b", log="l", backtest=False, reference={},
                           baseline={}, notes=[], windows=[window(0, [], []), window(1, ["age", "city"], ["drift"])],
                           pending_rows=17, alerts=[], fired=["drift"], store="s", dashboard="/tmp/dashboard.html")

    @flow(name="mlops-monitor-artifacts-test")
    def monitored() -> str:
        publish_drift(result)
        from prefect.runtime import flow_run

        return str(flow_run.id)

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        flow_run_id = monitored()
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            artifacts = artifacts_of(client, run)
    table = json.loads(artifacts["churn-v3-drift"].data)
    assert [(w["window"], w["drifted features"], w["drift share"], w["breaches"]) for w in table] == [
        (0, "-", 0.0, "-"), (1, "age, city", 0.5, "drift")]
    summary = artifacts["churn-v3-monitor"].data
    assert summary.startswith("### churn-v3: fired drift") and "17 rows waiting" in summary
    assert "/tmp/dashboard.html" in summary
