"""The monitor's typed results keep the plain-JSON forms others read: the store's window summaries and alert
payloads, the dashboard's records, and the alerts the retraining phase reads back from the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mlops.monitor.results import AlertRecord, AlertWindow, Observation, WindowSummary
from mlops.monitor.rules import RULES, RuleState, observe
from mlops.monitor.store import MonitorStore, alert_records
from mlops.recipe.monitor import MonitorConfig

T0 = 1_767_225_600.0


def summary(index: int = 0, **sections: object) -> WindowSummary:
    return WindowSummary(index=index, start_ts=T0, end_ts=T0 + 600, start_iso="2026-01-01T00:00:00Z",
                         end_iso="2026-01-01T00:10:00Z", start_rowid=1, end_rowid=1000, rows=1000, judged=True,
                         versions=["1"], quality={"labelled": 0, "metrics": {}}, operations={"rows": 1000},
                         distributions={}, **sections)  # type: ignore[arg-type]


def alert(s: WindowSummary) -> AlertRecord:
    return AlertRecord(rule="drift", state="fired", event="mlops.alert.drift", model="churn", version="3", value=0.5,
                       threshold=0.4, reason="2 of 4 features drifted",
                       window=AlertWindow(index=s.index, start=s.start_ts, end=s.end_ts, start_iso=s.start_iso,
                                          end_iso=s.end_iso, rows=s.rows, first_rowid=1, last_rowid=1000),
                       consecutive=2, detail={"key_features": []}, dashboard="/d.html", log="/log.sqlite")


def test_a_summary_record_leaves_out_the_sections_not_computed() -> None:
    s = summary(rules=[Observation("drift", None, 0.5, None, "disabled")])
    record = s.record()
    assert list(record) == ["index", "start_ts", "end_ts", "start_iso", "end_iso", "start_rowid", "end_rowid",
                            "rows", "judged", "versions", "quality", "operations", "distributions", "rules"]
    assert record["rules"] == [{"rule": "drift", "value": None, "threshold": 0.5, "breach": None,
                                "reason": "disabled", "detail": {}}]
    drift = {"columns": [], "predictions": [], "dataset": {"share": 0.25, "drifted_columns": ["age"]}}
    assert summary(drift=drift, errors={"rate": 0.0}).record()["drift"] is drift  # shared, not copied
    brief = summary(drift=drift, rules=[Observation("drift", 0.25, 0.2, True)]).brief()
    assert brief.drifted_features == ["age"] and brief.drift_share == 0.25 and brief.breaches == ["drift"]
    assert brief.schema_violation_rate is None and brief.latency_ms is None


def test_observe_judges_every_rule_in_order() -> None:
    obs = observe(summary(), MonitorConfig(), "binary", {"metric": "accuracy", "value": 0.9})
    assert tuple(o.rule for o in obs) == RULES


def test_the_store_keeps_the_records_and_the_retraining_phase_reads_them(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path / "churn.sqlite")
    s = summary(rules=[Observation("drift", 0.5, 0.4, True)])
    a = alert(s)
    store.commit_run("churn", "3", "/log.sqlite", "count", 0, [s], [a], {"drift": RuleState(2, True, T0 + 600)},
                     (1000, None), None)
    assert a.id is not None
    store.record_delivery(a.id, {"log": "printed"})

    with sqlite3.connect(store.path) as db:
        stored_summary, payload = db.execute("SELECT summary, payload FROM windows, alerts").fetchone()
    assert json.loads(stored_summary) == json.loads(json.dumps(s.record()))
    assert "id" not in json.loads(payload) and "delivery" not in json.loads(payload)  # columns of the row
    recorded = store.alerts("churn")
    assert recorded[0]["window"]["first_rowid"] == 1 and recorded[0]["delivery"] == {"log": "printed"}
    assert recorded[0]["id"] == a.id and store.windows("churn", 10)[0]["summary"]["index"] == 0

    records = alert_records(store.path, "churn")
    assert len(records) == 1 and records[0]["event"] == "mlops.alert.drift" and records[0]["reason"] == a.reason
    assert records[0]["ts"] == records[0]["created"] and records[0]["window_start"] == T0
    assert alert_records(store.path, "other") == []
    (tmp_path / "junk.sqlite").write_bytes(b"not a database")
    assert alert_records(tmp_path / "junk.sqlite", "churn") == []
