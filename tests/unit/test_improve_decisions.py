"""The improvement loop's decisions as plain functions: which trigger a retrain answers (and the monitor's alert
records it reads), the cooldown and daily limit, and the promotion policy over the gates' intervals."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlops.improve.audit import STARTED, limit_refusal
from mlops.improve.decide import AWAIT, PROMOTE, STOP, champion_comparisons, promotion_decision
from mlops.improve.triggers import Alert, parse_reason, read_alerts, resolve_trigger
from mlops.recipe import load_recipe
from mlops.recipe.improve import ImproveConfig, TriggersConfig
from tests.conftest import ROOT
from tests.improve_fixtures import champion_verdict
from tests.shipped import required_overrides

NOW = 1_800_000_000.0
DIRECTIONS = {"auroc": "higher", "log_loss": "lower", "accuracy": "higher"}


# --- triggers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "kind", "detail"), [
    ("", None, ""), ("auto", None, ""), ("drift", "drift", ""), ("drift: psi 0.4 on mean_radius", "drift", "psi 0.4 on mean_radius"),
    ("mlops.alert.drift", "drift", ""), ("accuracy_drop: 0.91 -> 0.80", "accuracy_drop", "0.91 -> 0.80"),
    ("mlops.alert.accuracy_drop", "accuracy_drop", ""), ("scheduled", "schedule", ""), ("schedule", "schedule", ""),
    ("new labels from the Q3 audit", "manual", "new labels from the Q3 audit"),
    ("note: drift seen by hand", "manual", "note: drift seen by hand"),
])
def test_a_reason_names_its_trigger(reason: str, kind: str | None, detail: str) -> None:
    assert parse_reason(reason) == (kind, detail)


def alert(kind: str, ts: float) -> Alert:
    return Alert(kind, ts, "monitor/alerts.jsonl", {"event": f"mlops.alert.{kind}", "ts": ts})


def test_each_trigger_starts_a_retrain_when_enabled() -> None:
    on = TriggersConfig()
    drift, accuracy = alert("drift", NOW - 60), alert("accuracy_drop", NOW - 30)
    auto = resolve_trigger("auto", on, [drift], answered_until=None)
    assert (auto.kind, auto.refusal) == ("drift", None) and auto.evidence["alert"]["event"] == "mlops.alert.drift"
    newest = resolve_trigger("", on, [drift, accuracy], answered_until=None)
    assert newest.kind == "accuracy_drop" and newest.evidence["unanswered_alerts"] == 2
    assert resolve_trigger("scheduled", on, [], None).kind == "schedule"
    manual = resolve_trigger("labels fixed by hand", on, [], None)
    assert (manual.kind, manual.reason, manual.refusal) == ("manual", "labels fixed by hand", None)
    # the automation's event names the trigger; the alert record, when there is one, is its evidence
    by_event = resolve_trigger("mlops.alert.drift", on, [drift], None)
    assert by_event.kind == "drift" and by_event.evidence["alert_file"] == "monitor/alerts.jsonl"


@pytest.mark.parametrize("kind", ["drift", "accuracy_drop", "schedule", "manual"])
def test_a_disabled_trigger_refuses(kind: str) -> None:
    cfg = TriggersConfig(**{kind: False})
    reason = {"manual": "by hand"}.get(kind, kind)
    trigger = resolve_trigger(reason, cfg, [alert("drift", NOW)], None)
    assert trigger.kind == kind and trigger.refusal == f"the {kind} trigger is off (improve.triggers.{kind}: false)"


def test_auto_answers_only_alerts_no_retrain_answered_yet() -> None:
    on = TriggersConfig()
    old = alert("drift", NOW - 3600)
    answered = resolve_trigger("auto", on, [old], answered_until=NOW - 1800)
    assert answered.kind is None and "none newer than the last retrain" in str(answered.refusal)
    assert resolve_trigger("auto", on, [], None).refusal is not None
    assert resolve_trigger("auto", on, [old, alert("drift", NOW)], answered_until=NOW - 1800).kind == "drift"
    off = TriggersConfig(drift=False)
    assert resolve_trigger("auto", off, [alert("drift", NOW)], None).refusal is not None  # its trigger is off


def test_alert_records_are_read_in_the_shapes_a_monitor_writes(tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    (monitor / "quickstart").mkdir(parents=True)
    (monitor / "quickstart" / "alerts.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"event": "mlops.alert.drift", "resource_id": "mlops.model.quickstart", "ts": NOW - 10},
        {"event": "mlops.alert.accuracy_drop", "model": "quickstart", "time": "2027-01-15T08:00:00Z"},
        {"event": "mlops.alert.latency", "model": "quickstart", "ts": NOW},  # not a retraining trigger
        {"event": "mlops.alert.drift", "model": "other", "ts": NOW},  # another model's
        {"event": "mlops.alert.drift", "model": "quickstart", "ts": NOW, "status": "resolved"},
        {"event": "mlops.alert.drift", "model": "quickstart"},  # no time: cannot be ordered, ignored
    ]) + '\n{"event": "mlops.alert.dri')  # a torn last line
    (monitor / "last.json").write_text(json.dumps({"alerts": [
        {"name": "drift", "resource": {"prefect.resource.id": "mlops.model.quickstart"}, "fired_at": NOW - 5}]}))
    (monitor / "report.html").write_text("<html>drift</html>")
    (monitor / "broken.json").write_bytes(b"\xff\xfe not json")
    alerts = read_alerts(monitor, "quickstart")
    iso = datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert [(a.kind, a.ts) for a in alerts] == [("drift", NOW - 10), ("drift", NOW - 5), ("accuracy_drop", iso)]
    assert alerts[1].source.endswith("last.json")
    assert read_alerts(tmp_path / "absent", "quickstart") == []


def test_alerts_are_read_from_the_monitor_store(tmp_path: Path) -> None:
    """The monitor's durable record: `.mlops/monitor/<model>.sqlite`, table `alerts` (one row per firing or
    resolution, the alert itself as JSON in `payload`)."""
    import sqlite3

    (tmp_path / "monitor").mkdir()
    db = sqlite3.connect(tmp_path / "monitor" / "quickstart.sqlite")
    db.execute("CREATE TABLE alerts (id INTEGER PRIMARY KEY, created REAL NOT NULL, model TEXT NOT NULL, version TEXT "
               "NOT NULL, rule TEXT NOT NULL, event TEXT NOT NULL, state TEXT NOT NULL, window_id INTEGER, window_start "
               "REAL NOT NULL, window_end REAL NOT NULL, value REAL, threshold REAL, payload TEXT NOT NULL, delivery TEXT)")
    rows = [(NOW - 300, "drift", "mlops.alert.drift", "fired", {"reason": "psi 0.41 on mean_radius", "ts": 1.0}),
            (NOW - 200, "drift", "mlops.resolved.drift", "resolved", {}),
            (NOW - 100, "accuracy_drop", "mlops.alert.accuracy_drop", "fired", {"reason": "accuracy 0.81 < 0.9"}),
            (NOW - 50, "latency", "mlops.alert.latency", "fired", {})]
    for created, rule, event, state, payload in rows:
        db.execute("INSERT INTO alerts (created, model, version, rule, event, state, window_start, window_end, "
                   "payload) VALUES (?, 'quickstart', '1', ?, ?, ?, 0, 0, ?)", (created, rule, event, state,
                                                                              json.dumps(payload)))
    db.commit()
    db.close()
    (tmp_path / "monitor" / "other.sqlite").write_bytes(b"not a database at all")
    alerts = read_alerts(tmp_path / "monitor", "quickstart")
    assert [(a.kind, a.ts) for a in alerts] == [("drift", NOW - 300), ("accuracy_drop", NOW - 100)]
    assert alerts[0].record["reason"] == "psi 0.41 on mean_radius" and alerts[0].record["state"] == "fired"
    trigger = resolve_trigger("auto", TriggersConfig(), alerts, answered_until=NOW - 250)
    assert trigger.kind == "accuracy_drop" and trigger.evidence["alert"]["reason"] == "accuracy 0.81 < 0.9"


# --- limits ---------------------------------------------------------------------------------------------------


def started(*ages_minutes: float) -> list[dict]:
    return [{"event": STARTED, "ts": NOW - 60 * m} for m in ages_minutes]


def test_the_cooldown_refuses_until_it_has_passed() -> None:
    refusal = limit_refusal(started(30), cooldown_minutes=60, max_per_day=10, now=NOW)
    assert refusal is not None and refusal.startswith("cooldown:") and "30 min ago" in refusal
    assert "improve.limits.cooldown_minutes=60" in refusal
    assert limit_refusal(started(61), cooldown_minutes=60, max_per_day=10, now=NOW) is None
    assert limit_refusal([{"event": "retrain_skipped", "ts": NOW}], 60, 10, NOW) is None  # skips do not count
    assert limit_refusal([], 60, 10, NOW) is None


def test_at_most_max_per_day_retrains_in_any_24_hours() -> None:
    three = started(100, 300, 600)
    refusal = limit_refusal(three, cooldown_minutes=0, max_per_day=3, now=NOW)
    assert refusal is not None and "3 retrains started in the last 24 hours" in refusal
    assert limit_refusal(three, cooldown_minutes=0, max_per_day=4, now=NOW) is None
    assert limit_refusal(started(100, 300, 1500), cooldown_minutes=0, max_per_day=3, now=NOW) is None  # one >24 h ago


# --- the promotion policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "ci", "action"), [
    ("auto", (-0.02, 0.01), PROMOTE),  # auto trusts the gates
    ("auto", (0.01, 0.03), PROMOTE),
    ("require_approval", (0.01, 0.03), AWAIT),  # always a person, even when clearly better
    ("approval_when_uncertain", (0.01, 0.03), PROMOTE),  # better: the interval lies above zero
    ("approval_when_uncertain", (-0.02, 0.01), AWAIT),  # uncertain: it straddles zero
    ("approval_when_uncertain", (-0.03, -0.001), STOP),  # not better: below zero, though within max_drop
])
def test_the_policy_decides_on_the_champion_interval(policy: str, ci: tuple[float, float], action: str) -> None:
    decision = promotion_decision(policy, True, [], [champion_verdict(*ci)], DIRECTIONS)
    assert decision.action == action and decision.by == f"policy:{policy}"
    assert decision.evidence["comparisons"][0]["ci"] == list(ci)


def test_a_challenger_failing_its_gates_is_stopped_whatever_the_policy() -> None:
    for policy in ("auto", "require_approval", "approval_when_uncertain"):
        decision = promotion_decision(policy, False, ["gate test/auroc >= 0.85: FAILED"], [], DIRECTIONS)
        assert (decision.action, decision.by) == (STOP, "gates")
        assert decision.evidence == {"failures": ["gate test/auroc >= 0.85: FAILED"]}


def test_lower_is_better_metrics_are_oriented_before_deciding() -> None:
    # log loss down by 0.02..0.05: the raw difference is negative, and that is better
    better = champion_verdict(-0.05, -0.02, metric="test/log_loss")
    assert champion_comparisons([better], DIRECTIONS)[0].verdict == "better"
    assert promotion_decision("approval_when_uncertain", True, [], [better], DIRECTIONS).action == PROMOTE
    worse = champion_verdict(0.02, 0.05, metric="test/log_loss")
    assert promotion_decision("approval_when_uncertain", True, [], [worse], DIRECTIONS).action == STOP


def test_without_a_champion_comparison_a_person_decides() -> None:
    skipped = {"metric": "test/auroc", "kind": "champion", "status": "skipped", "comparison": None}
    decision = promotion_decision("approval_when_uncertain", True, [], [skipped], DIRECTIONS)
    assert decision.action == AWAIT and "no `vs: champion` gate" in decision.reason


def test_one_uncertain_gate_among_better_ones_asks_a_person() -> None:
    verdicts = [champion_verdict(0.01, 0.02), champion_verdict(-0.01, 0.02, metric="test/accuracy")]
    decision = promotion_decision("approval_when_uncertain", True, [], verdicts, DIRECTIONS)
    assert decision.action == AWAIT and "test/accuracy" in decision.reason and "test/auroc" not in decision.reason


# --- the recipe section -------------------------------------------------------------------------------------------


def test_every_shipped_recipe_has_the_default_improve_section(tmp_path: Path) -> None:
    """configs/improve/default.yaml says what ImproveConfig's defaults say (recipes that set improve: aside)."""
    recipes = [r for r in sorted((ROOT / "recipes").glob("*.yaml"))
               if "\nimprove:" not in r.read_text() and "loop: " not in r.read_text()]  # a loop sets its own
    assert len(recipes) >= 4
    for recipe in recipes:
        improve = load_recipe(recipe, required_overrides(recipe, tmp_path)).recipe.improve
        assert improve == ImproveConfig(), recipe.name


@pytest.mark.parametrize(("override", "message", "where"), [
    ("improve.refresh.max_production_share=0", "improve.refresh.max_production_share", "command-line override"),
    ("improve.refresh.reference=false", "set max_production_share: 1", "command-line override"),
    ("improve.promotion.policy=maybe", "improve.promotion.policy", "command-line override"),
    ("improve.limits.cooldown_minutes=-1", "improve.limits.cooldown_minutes", "command-line override"),
    ("improve.triggers.drfit=true", "did you mean 'improve.triggers.drift'", "command-line override"),
])
def test_a_bad_improve_section_is_refused_at_its_key(override: str, message: str, where: str) -> None:
    from mlops.core.errors import MlopsError

    with pytest.raises(MlopsError) as err:
        load_recipe(ROOT / "recipes" / "quickstart.yaml", [override])
    assert message in str(err.value) and where in str(err.value)
