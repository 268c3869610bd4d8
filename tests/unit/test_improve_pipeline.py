"""The retraining pipeline end to end with in-memory twins of training, the registry and the rollout: what is
decided in each case, what it does to the aliases, and what is recorded (audit log and tags). The real engine,
MLflow and a live server are in tests/integration/test_improve_live.py and tests/e2e/test_improve_retrain.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlops.cli.output import jsonable
from mlops.core.errors import MlopsError
from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.improve import audit as events
from mlops.improve.audit import AuditLog
from mlops.improve.retrain import RetrainOptions, RetrainOutcome, approve, reject, retrain_recipe
from tests.improve_fixtures import (
    FakeRegistry,
    FakeTrainer,
    ScriptedRollout,
    champion_verdict,
    log_feedback,
    log_predictions,
    toy_recipe,
)

DIRECT = ["improve.rollout.mode=direct"]
NO_COOLDOWN = ["improve.limits.cooldown_minutes=0"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    return tmp_path


@pytest.fixture
def recipe(home: Path) -> str:
    """The toy recipe, a champion (version 1) in the registry, and 20 served predictions with 12 labelled."""
    path = toy_recipe(home / "project")
    log = home / ".mlops" / "predictions" / "toy.sqlite"
    ids = [f"p{i}" for i in range(20)]
    log_predictions(log, ids)
    log_feedback(log, [{"id": i, "label": "yes"} for i in ids[:12]])
    return str(path)


def registry_with_champion() -> FakeRegistry:
    return FakeRegistry(alias={CHAMPION: "1", CHALLENGER: "1"}, versions=1)


def trail(audit: AuditLog) -> list[str]:
    return [r["event"] + (f":{r['decision']}" if r.get("decision") else "") for r in audit.records()]


def test_a_better_challenger_is_promoted_automatically_and_every_step_recorded(recipe: str, home: Path) -> None:
    registry, trainer, audit = registry_with_champion(), FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]), AuditLog()
    result = retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=auto"], "drift: psi 0.3", trainer=trainer,
                            registry=registry, audit=audit)
    assert result.outcome == "promoted" and result.champion == "2"
    assert result.decision is not None and result.decision.by == "policy:auto"
    assert registry.alias == {CHAMPION: "2", CHALLENGER: "2"}
    assert trail(audit) == [events.STARTED, events.REFRESHED, events.TRAINED, "decision:promote", events.PROMOTED]
    started, *_, decision, promoted = audit.records()
    assert (started["trigger"], started["reason"], started["by"]) == ("drift", "psi 0.3", "trigger:drift")
    assert decision["by"] == "policy:auto" and decision["evidence"]["comparisons"][0]["verdict"] == "better"
    assert list(decision["evidence"]["comparisons"][0]) == ["metric", "slice", "challenger", "champion", "difference",
                                                           "ci", "p_value", "test", "verdict", "direction"]
    assert promoted["previous_champion"] == "1"
    # the training ran on the refreshed file, which holds exactly the labelled production rows
    refreshed = result.refresh
    assert refreshed is not None and refreshed.path is not None
    path = refreshed.path
    assert trainer.calls == [[*DIRECT, "improve.promotion.policy=auto", "++data.path='" + path + "'",
                              "++data.format=parquet"]]
    assert refreshed.production_rows == 12 and refreshed.reference_rows == 200
    assert len(pd.read_parquet(path)) == 212
    # tags on the run and the version: trigger, data, decision, who
    for tags in (registry.run_tags["run0002"], registry.version_tags["2"]):
        assert tags["mlops.improve.trigger"] == "drift" and tags["mlops.improve.decision"] == "promoted"
        assert tags["mlops.improve.data_fingerprint"] == refreshed.fingerprint
        assert tags["mlops.improve.production_rows"] == "12" and tags["mlops.improve.decided_by"] == "policy:auto"
    assert registry.files == [("run0002", Path(str(refreshed.lineage)), "improve")]


def test_the_cooldown_skips_a_second_retrain_and_force_overrides_it(recipe: str) -> None:
    registry, trainer, audit = registry_with_champion(), FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]), AuditLog()
    first = retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=auto"], "drift", trainer=trainer,
                           registry=registry, audit=audit)
    assert first.outcome == "promoted"
    second = retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=auto"], "accuracy_drop", trainer=trainer,
                            registry=registry, audit=audit)
    assert second.outcome == "skipped" and "cooldown" in second.message and "--force" in second.message
    assert len(trainer.calls) == 1  # nothing trained
    skipped = audit.records()[-1]
    assert (skipped["event"], skipped["by"], skipped["trigger"]) == (events.SKIPPED, "limits", "accuracy_drop")
    forced = retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=auto"], "by hand",
                            RetrainOptions(by="user:alice", force=True), trainer=trainer, registry=registry,
                            audit=audit)
    assert forced.outcome == "promoted" and len(trainer.calls) == 2
    start = [r for r in audit.records() if r["event"] == events.STARTED][-1]
    assert start["forced"] is True and start["overridden"].startswith("cooldown") and start["by"] == "user:alice"


def test_the_daily_limit_counts_retrains_from_the_audit_log(recipe: str) -> None:
    registry, trainer, audit = registry_with_champion(), FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]), AuditLog()
    limits = [*DIRECT, *NO_COOLDOWN, "improve.limits.max_per_day=2", "improve.promotion.policy=auto"]
    outcomes = [retrain_recipe(recipe, limits, "by hand", trainer=trainer, registry=registry, audit=audit).outcome
                for _ in range(3)]
    assert outcomes == ["promoted", "promoted", "skipped"] and len(trainer.calls) == 2
    assert "2 retrains started in the last 24 hours" in audit.records()[-1]["why"]


def test_approval_required_waits_and_a_person_approves(recipe: str) -> None:
    registry, audit = registry_with_champion(), AuditLog()
    trainer = FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)])  # clearly better, and still a person decides
    waiting = retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=require_approval"], "drift", trainer=trainer,
                             registry=registry, audit=audit)
    assert waiting.outcome == "awaiting_approval" and f"mlops approve {waiting.run_id}" in waiting.message
    assert registry.alias == {CHAMPION: "1", CHALLENGER: "2"}  # challenger, not yet champion
    assert registry.version_tags["2"]["mlops.improve.decision"] == "await_approval"
    assert waiting.run_id is not None
    done = approve(waiting.run_id[:5], by="alice", note="checked the slices", registry=registry, audit=audit)
    assert done.outcome == "promoted" and registry.alias[CHAMPION] == "2"
    assert done.decision is not None and (done.decision.action, done.decision.by) == ("approve", "user:alice")
    assert trail(audit)[-2:] == ["decision:approve", events.PROMOTED]
    assert audit.records()[-2]["by"] == "user:alice" and audit.records()[-2]["why"] == "checked the slices"
    assert audit.records()[-1]["by"] == "user:alice"
    with pytest.raises(MlopsError, match="is not awaiting approval: its last record is promoted"):
        approve(waiting.run_id, by="bob", registry=registry, audit=audit)
    with pytest.raises(MlopsError, match="no retrain run 'nope' in the audit log"):
        approve("nope", registry=registry, audit=audit)



def test_a_staged_canary_with_nothing_to_judge_it_is_refused_before_training(recipe: str) -> None:
    """With no server to read (--live-url, --local-port, --metrics-url), the canary's error-rate check cannot be
    measured on the log: the rollout stopped there and rolled back, after the training and the shadow window.
    Under `auto` that is refused before anything trains; an approval is refused before it is recorded, and
    stays pending for an approval that names a server (here a scripted rollout)."""
    registry, audit = registry_with_champion(), AuditLog()
    trainer = FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)])
    with pytest.raises(MlopsError, match="--live-url URL .* deploy.rollout.checks.max_error_rate"):
        retrain_recipe(recipe, ["improve.promotion.policy=auto"], "drift", trainer=trainer, registry=registry,
                       audit=audit)
    assert trainer.calls == [] and trail(audit) == []
    # nothing to measure but what the log gives: nothing refused (the scripted rollout stands in for the walk)
    done = retrain_recipe(recipe, ["improve.promotion.policy=auto", "deploy.rollout.checks.max_error_rate=null"],
                          "drift", trainer=trainer, registry=registry, audit=audit, rollout=ScriptedRollout())
    assert done.outcome == "promoted"

    registry, audit = registry_with_champion(), AuditLog()
    waiting = retrain_recipe(recipe, ["improve.promotion.policy=require_approval"], "drift", RetrainOptions(force=True),
                             trainer=trainer, registry=registry, audit=audit)
    assert waiting.outcome == "awaiting_approval" and waiting.run_id is not None
    with pytest.raises(MlopsError, match="--local-port N"):
        approve(waiting.run_id, by="alice", registry=registry, audit=audit)
    assert trail(audit)[-1] == "decision:await_approval"
    approved = approve(waiting.run_id, by="alice", registry=registry, audit=audit, rollout=ScriptedRollout())
    assert approved.outcome == "promoted"


def test_an_uncertain_challenger_waits_and_a_rejection_restores_the_aliases(recipe: str) -> None:
    registry, audit = registry_with_champion(), AuditLog()
    trainer = FakeTrainer(verdicts=[champion_verdict(-0.01, 0.02)])  # the interval straddles zero
    waiting = retrain_recipe(recipe, DIRECT, "drift", trainer=trainer, registry=registry, audit=audit)
    assert waiting.outcome == "awaiting_approval"
    assert waiting.decision is not None and "uncertain" in waiting.decision.reason
    assert waiting.run_id is not None
    rejected = reject(waiting.run_id, by="carol", note="wait for more labels", registry=registry, audit=audit)
    assert rejected.outcome == "rejected" and registry.alias == {CHAMPION: "1", CHALLENGER: "1"}
    assert rejected.champion == "1" and rejected.version == "2"
    assert registry.version_tags["2"]["mlops.improve.decision"] == "reject"
    assert registry.version_tags["2"]["mlops.improve.decided_by"] == "user:carol"


def test_a_better_challenger_is_promoted_without_asking_under_approval_when_uncertain(recipe: str) -> None:
    registry = registry_with_champion()
    result = retrain_recipe(recipe, DIRECT, "drift", trainer=FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]),
                            registry=registry, audit=AuditLog())
    assert result.outcome == "promoted" and registry.alias[CHAMPION] == "2"


def test_a_challenger_that_fails_its_gates_is_stopped(recipe: str) -> None:
    registry, audit = registry_with_champion(), AuditLog()
    result = retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=auto"], "drift",
                            trainer=FakeTrainer(passed=False), registry=registry, audit=audit)
    assert result.outcome == "stopped" and result.decision is not None and result.decision.by == "gates"
    assert registry.alias == {CHAMPION: "1", CHALLENGER: "1"}  # the engine gave it no alias
    assert result.decision.evidence["failures"] == ["gate test/auroc >= 0.85: FAILED: 0.6 is below the minimum 0.85"]
    assert result.gates is not None and not result.gates.passed
    assert registry.version_tags["2"]["mlops.improve.decision"] == "stop"


def test_a_challenger_shown_worse_is_stopped_and_loses_the_challenger_alias(recipe: str) -> None:
    registry, audit = registry_with_champion(), AuditLog()
    result = retrain_recipe(recipe, DIRECT, "drift", trainer=FakeTrainer(verdicts=[champion_verdict(-0.02, -0.001)]),
                            registry=registry, audit=audit)
    assert result.outcome == "stopped" and result.decision is not None
    assert result.decision.reason.startswith("not better")
    assert registry.alias == {CHAMPION: "1", CHALLENGER: "1"}


def test_staged_rollout_walks_shadow_then_canary_then_champion(recipe: str) -> None:
    registry, audit, rollout = registry_with_champion(), AuditLog(), ScriptedRollout()
    result = retrain_recipe(recipe, ["improve.promotion.policy=auto"], "drift", rollout=rollout, registry=registry,
                            audit=audit, trainer=FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]))
    assert result.outcome == "promoted" and registry.alias[CHAMPION] == "2"
    assert [(s.stage, s.percent) for s in result.stages] == [("shadow", None), ("canary", 1), ("canary", 10),
                                                             ("canary", 50), ("canary", 100)]
    assert rollout.asked == ["shadow", "canary 1", "canary 10", "canary 50", "canary 100", "complete"]  # deploy.rollout.steps
    stages = [r for r in audit.records() if r["event"] == events.STAGE]
    assert [(s["stage"], s["percent"], s["passed"]) for s in stages] == [
        ("shadow", None, True), ("canary", 1, True), ("canary", 10, True), ("canary", 50, True), ("canary", 100, True)]
    assert registry.version_tags["2"]["mlops.improve.stage.canary_50"] == "passed: scripted canary at 50 %"


def test_a_failing_canary_step_rolls_back(recipe: str) -> None:
    registry, audit, rollout = registry_with_champion(), AuditLog(), ScriptedRollout(canary_fails_at=10)
    result = retrain_recipe(recipe, ["improve.promotion.policy=auto"], "drift", rollout=rollout, registry=registry,
                            audit=audit, trainer=FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]))
    assert result.outcome == "rolled_back" and result.champion == "1"
    assert result.decision is not None and result.decision.by == "rollout:canary_10"
    assert rollout.asked == ["shadow", "canary 1", "canary 10", "abort"]
    assert registry.alias == {CHAMPION: "1", CHALLENGER: "1"}
    back = audit.records()[-1]
    assert (back["event"], back["by"], back["champion"]) == (events.ROLLED_BACK, "rollout:canary_10", "1")
    assert registry.version_tags["2"]["mlops.improve.decision"] == "rolled_back"


def test_a_failing_shadow_window_rolls_back_before_any_canary(recipe: str) -> None:
    registry, rollout = registry_with_champion(), ScriptedRollout(shadow_passes=False)
    result = retrain_recipe(recipe, ["improve.promotion.policy=auto"], "drift", rollout=rollout, registry=registry,
                            audit=AuditLog(), trainer=FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]))
    assert result.outcome == "rolled_back" and rollout.asked == ["shadow", "abort"]
    assert registry.alias[CHAMPION] == "1"


def test_the_outcome_as_json_keeps_the_keys_the_commands_printed(recipe: str) -> None:
    """`mlops retrain --json` prints the outcome by its fields (mlops.cli.output.emit): the keys of the dict it
    replaced, nested ones included; scripts such as examples/demo_loop.py read them."""
    result = retrain_recipe(recipe, ["improve.promotion.policy=auto"], "drift", rollout=ScriptedRollout(canary_fails_at=10),
                            registry=registry_with_champion(), audit=AuditLog(),
                            trainer=FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]))
    data = json.loads(json.dumps(jsonable(result)))
    assert set(data) == {"outcome", "message", "model", "retrain_id", "recipe", "overrides", "trigger", "reason",
                         "run_id", "version", "refresh", "champion_before", "gates", "metrics", "decision", "stages",
                         "champion"}
    assert (data["outcome"], data["champion"], data["champion_before"], data["version"]) == ("rolled_back", "1", "1", "2")
    assert set(data["decision"]) == {"action", "by", "reason", "evidence"} and data["decision"]["action"] == "rollback"
    assert set(data["refresh"]) == {"path", "fingerprint", "reference_rows", "production_rows", "by_source", "dropped",
                                    "log", "since", "lineage"}
    assert data["gates"] == {"passed": True, "failures": [], "report": None}
    assert [set(s) for s in data["stages"]] == [{"stage", "percent", "passed", "summary", "evidence"}] * 3
    skipped = jsonable(retrain_recipe(recipe, ["improve.promotion.policy=auto"], "drift",
                                      registry=registry_with_champion(), audit=AuditLog(), trainer=FakeTrainer()))
    assert skipped["outcome"] == "skipped" and skipped["run_id"] is None and skipped["stages"] == []


def test_no_new_labelled_rows_means_no_retrain(home: Path) -> None:
    path = toy_recipe(home / "project")
    log_predictions(home / ".mlops" / "predictions" / "toy.sqlite", ["a", "b"])  # served, never labelled
    trainer, audit = FakeTrainer(), AuditLog()
    result = retrain_recipe(str(path), DIRECT, "drift", trainer=trainer, registry=registry_with_champion(), audit=audit)
    assert result.outcome == "skipped" and "only 0 labelled production rows" in result.message
    assert result.refresh is not None and result.refresh.dropped == {"no_label": 2}
    assert trainer.calls == [] and audit.records()[-1]["by"] == "refresh"
    assert audit.records()[-1]["evidence"]["dropped"] == {"no_label": 2}


def test_a_monitor_alert_triggers_once(recipe: str, home: Path) -> None:
    alerts = home / ".mlops" / "monitor" / "toy"
    alerts.mkdir(parents=True)
    (alerts / "alerts.jsonl").write_text(json.dumps({"event": "mlops.alert.drift", "model": "toy",
                                                     "ts": time.time() - 5, "drifted": ["age"]}) + "\n")
    registry, trainer, audit = registry_with_champion(), FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)]), AuditLog()
    first = retrain_recipe(recipe, [*DIRECT, *NO_COOLDOWN, "improve.promotion.policy=auto"], "auto", trainer=trainer,
                           registry=registry, audit=audit)
    assert first.outcome == "promoted" and first.trigger == "drift"
    assert audit.records()[0]["evidence"]["alert"]["drifted"] == ["age"]
    again = retrain_recipe(recipe, [*DIRECT, *NO_COOLDOWN, "improve.promotion.policy=auto"], "auto", trainer=trainer,
                           registry=registry, audit=audit)
    assert again.outcome == "skipped" and "none newer than the last retrain" in again.message
    assert len(trainer.calls) == 1


def test_two_retrains_triggered_at_once_start_only_one(recipe: str) -> None:
    registry = registry_with_champion()
    trainer = FakeTrainer(verdicts=[champion_verdict(0.01, 0.04)], delay_s=0.3)
    results: list[RetrainOutcome] = []

    def go() -> None:  # each its own AuditLog: the lock is the file's, not the object's
        results.append(retrain_recipe(recipe, [*DIRECT, "improve.promotion.policy=auto"], "drift", trainer=trainer,
                                      registry=registry, audit=AuditLog()))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.outcome for r in results) == ["promoted", "skipped"] and len(trainer.calls) == 1
    assert sum(r["event"] == events.STARTED for r in AuditLog().records()) == 1


def test_a_training_crash_is_recorded_and_raised(recipe: str) -> None:
    def broken(*_: Any) -> Any:
        raise MlopsError("data expectation failed: column age above 120")

    audit = AuditLog()
    with pytest.raises(MlopsError, match="column age above 120"):
        retrain_recipe(recipe, DIRECT, "drift", trainer=broken, registry=registry_with_champion(), audit=audit)
    assert audit.records()[-1]["event"] == events.FAILED and "column age above 120" in audit.records()[-1]["why"]
