"""A retrain waiting for a person pauses its flow run on a real Prefect server and takes the answer from there:
the Prefect UI's form (what the UI sends: a resume with the run input) approves and rolls the challenger out
inside the flow run; `mlops approve/reject` act on the audit log as always, then resume the paused run, which
ends with their outcome. Training, the registry and the rollout are the in-memory twins of the pipeline's unit
tests: what is tested here is the pause and the resume."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.improve.audit import AuditLog
from mlops.improve.retrain import RetrainOutcome, reject, retrain_recipe
from tests.improve_fixtures import (
    FakeRegistry,
    FakeTrainer,
    champion_verdict,
    log_feedback,
    log_predictions,
    toy_recipe,
)
from tests.polling import until

pytestmark = pytest.mark.integration

WAIT = ["improve.rollout.mode=direct", "improve.promotion.policy=require_approval",
        "improve.limits.cooldown_minutes=0"]


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> Iterator[str]:
    """The toy recipe with 12 labelled production rows, and this process's Prefect client on the real server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    path = toy_recipe(tmp_path / "project")
    log = tmp_path / ".mlops" / "predictions" / "toy.sqlite"
    ids = [f"p{i}" for i in range(20)]
    log_predictions(log, ids)
    log_feedback(log, [{"id": i, "label": "yes"} for i in ids[:12]])
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        yield str(path)


def waiting_retrain(recipe: str, registry: FakeRegistry, audit: AuditLog) -> RetrainOutcome:
    outcome = retrain_recipe(recipe, WAIT, "drift", trainer=FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]),
                             registry=registry, audit=audit)
    assert outcome.outcome == "awaiting_approval" and outcome.run_id
    return outcome


def paused_in_background(outcome: RetrainOutcome, registry: FakeRegistry,
                         audit: AuditLog) -> tuple[threading.Thread, dict[str, Any]]:
    """The waiting retrain's flow, paused for approval in a thread (it holds this test's Prefect settings)."""
    from prefect import flow

    from mlops import flows

    @flow(name="mlops-retrain-approval-test")
    def waits() -> RetrainOutcome:
        return flows.await_approval(outcome, 120, {}, registry=registry, audit=audit)

    got: dict[str, Any] = {}

    def run() -> None:
        try:
            got["outcome"] = waits()
        except BaseException as exc:  # handed to the test
            got["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    return thread, got


def paused_run(run_id: str) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    from mlops.flows import APPROVAL_TAG

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"{APPROVAL_TAG}{run_id}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return runs[0] if runs else None


def finished(thread: threading.Thread, got: dict[str, Any]) -> RetrainOutcome:
    thread.join(timeout=90)
    assert not thread.is_alive(), "the paused flow run did not end after its resume"
    if "error" in got:
        raise got["error"]
    return got["outcome"]


def test_the_prefect_ui_form_approves_a_paused_retrain(recipe: str) -> None:
    from prefect.flow_runs import resume_flow_run

    registry, audit = FakeRegistry(alias={CHAMPION: "1", CHALLENGER: "1"}, versions=1), AuditLog()
    waiting = waiting_retrain(recipe, registry, audit)
    thread, got = paused_in_background(waiting, registry, audit)
    paused = until(lambda: paused_run(str(waiting.run_id)), "paused flow run", 90, interval=0.5)
    # the form's schema was saved with the pause: the UI renders it from there
    assert paused.state.state_details.run_input_keyset
    resume_flow_run(paused.id, run_input={"approve": True, "by": "dana", "note": "slices look fine"})
    done = finished(thread, got)
    assert done.outcome == "promoted" and registry.alias[CHAMPION] == "2"
    assert done.decision is not None and (done.decision.action, done.decision.by) == ("approve", "user:dana")
    assert audit.records()[-2]["why"] == "slices look fine"


def test_mlops_reject_resumes_the_paused_retrain_it_answered(recipe: str) -> None:
    from mlops import flows

    registry, audit = FakeRegistry(alias={CHAMPION: "1", CHALLENGER: "1"}, versions=1), AuditLog()
    waiting = waiting_retrain(recipe, registry, audit)
    thread, got = paused_in_background(waiting, registry, audit)
    paused = until(lambda: paused_run(str(waiting.run_id)), "paused flow run", 90, interval=0.5)
    # what `mlops reject RUN` does: the audit log's way first, then the paused flow run resumes with the answer
    rejected = reject(str(waiting.run_id), by="carol", registry=registry, audit=audit)
    assert rejected.outcome == "rejected"
    assert flows.resume_paused_retrain(str(waiting.run_id), False, "user:carol", "") == str(paused.id)
    done = finished(thread, got)
    assert done.outcome == "rejected" and "answered by user:carol outside this flow run" in done.message
    assert registry.alias == {CHAMPION: "1", CHALLENGER: "1"}  # rejected once, not twice
    assert [r["event"] for r in audit.records()].count("decision") == 2  # the wait, and carol's rejection
    assert flows.resume_paused_retrain(str(waiting.run_id), False, "user:carol", "") is None  # nothing paused now
