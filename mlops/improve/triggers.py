"""What started a retrain: the monitor's drift or accuracy alert, a schedule, or a person.

A retrain's `reason` names its trigger: `drift`, `accuracy_drop` (or the monitor's event names
`mlops.alert.drift`, `mlops.alert.accuracy_drop`), `schedule`/`scheduled`, each optionally followed by `: detail`;
`auto` (or nothing) looks for an alert the monitor recorded that no retrain has answered yet; any other text is
a manual retrain with that text as its reason.

The monitor's alert records are read defensively from `.mlops/monitor/`: the `alerts` table of its SQLite
stores (`<model>.sqlite`: rule, event, state, created, payload; read by the monitor's own
`mlops.monitor.store.alert_records`), and JSON or JSONL files. A record counts as an
alert when it names one of the events above (or the rule `drift` / `accuracy_drop`) and this model (`model`,
`model_name`, or a resource id `mlops.model.<name>`), is not resolved, and has a time (`ts`, `created`, `time`,
`timestamp`, `occurred`, `fired_at`; unix seconds or ISO 8601).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.core.predlog_pg import redacted
from mlops.core.state_pg import is_postgres
from mlops.core.timespec import iso, parse_time
from mlops.monitor.store import alert_records, shared_alert_records
from mlops.recipe.improve import TriggersConfig

DRIFT, ACCURACY_DROP, SCHEDULE, MANUAL = "drift", "accuracy_drop", "schedule", "manual"
EVENTS = {DRIFT: "mlops.alert.drift", ACCURACY_DROP: "mlops.alert.accuracy_drop"}
ALIASES = {"drift": DRIFT, "mlops.alert.drift": DRIFT, "accuracy_drop": ACCURACY_DROP,
           "mlops.alert.accuracy_drop": ACCURACY_DROP, "schedule": SCHEDULE, "scheduled": SCHEDULE,
           "manual": MANUAL}
AUTO = ("", "auto")
_NAME_KEYS = ("event", "rule", "name", "alert", "kind", "type")
_TIME_KEYS = ("ts", "created", "time", "timestamp", "occurred", "fired_at", "at")
_MODEL_KEYS = ("model", "model_name")
_RESOLVED = {"resolved", "ok", "inactive", "cleared"}
_STORES = (".sqlite", ".db")


@dataclass(frozen=True)
class Alert:
    kind: str  # drift | accuracy_drop
    ts: float
    source: str  # the file it was read from
    record: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class Trigger:
    kind: str | None  # drift | accuracy_drop | schedule | manual; None: nothing triggered
    reason: str
    evidence: dict[str, Any]
    refusal: str | None = None  # why it may not retrain (disabled trigger, no alert)


def parse_reason(reason: str) -> tuple[str | None, str]:
    """`drift: psi 0.4 on mean_radius` -> ("drift", "psi 0.4 on mean_radius"); `auto` -> (None, "");
    free text -> ("manual", text)."""
    text = (reason or "").strip()
    if text.lower() in AUTO:
        return None, ""
    head, sep, rest = text.partition(":")
    kind = ALIASES.get(head.strip().lower())
    if kind is not None:
        return kind, rest.strip() if sep else ""
    return MANUAL, text


def resolve_trigger(reason: str, cfg: TriggersConfig, alerts: list[Alert], answered_until: float | None) -> Trigger:
    """Which trigger this retrain answers, or why it must not run. `answered_until` is when the last retrain
    of this model started: alerts before it were answered by that one."""
    kind, detail = parse_reason(reason)
    open_alerts = [a for a in alerts if answered_until is None or a.ts > answered_until]
    if kind is None:  # auto: the newest unanswered alert of an enabled kind
        enabled = [a for a in open_alerts if getattr(cfg, a.kind)]
        if not enabled:
            seen = f"{len(alerts)} alert(s) recorded, none newer than the last retrain" if alerts else "no alert recorded"
            return Trigger(None, "", {"alerts_seen": len(alerts)}, f"nothing triggered a retrain ({seen} for this "
                           "model, or their triggers are off): give --reason to retrain by hand")
        newest = max(enabled, key=lambda a: a.ts)
        return Trigger(newest.kind, f"{EVENTS[newest.kind]} at {iso(newest.ts)}", _alert_evidence(newest, open_alerts))
    if not getattr(cfg, kind):
        return Trigger(kind, detail or kind, {}, f"the {kind} trigger is off (improve.triggers.{kind}: false)")
    evidence: dict[str, Any] = {}
    if kind in EVENTS:
        same = [a for a in open_alerts if a.kind == kind]
        if same:
            evidence = _alert_evidence(max(same, key=lambda a: a.ts), open_alerts)
    text = detail or (EVENTS.get(kind) or kind)
    return Trigger(kind, text, evidence)


def _alert_evidence(alert: Alert, open_alerts: list[Alert]) -> dict[str, Any]:
    return {"alert": _trim(alert.record), "alert_time": iso(alert.ts), "alert_file": alert.source,
            "unanswered_alerts": len(open_alerts)}


def _trim(record: dict[str, Any], limit: int = 4000) -> dict[str, Any]:
    """An alert as evidence, cut to a size an audit line and an MLflow tag can carry."""
    text = json.dumps(record, default=str)
    return record if len(text) <= limit else {"truncated": text[:limit]}


# --- the monitor's alert records ---------------------------------------------------------------------------


def read_alerts(monitor_dir: Path, model: str, log: str | Path | None = None) -> list[Alert]:
    """Drift and accuracy alerts for `model` found in the monitor's JSON/JSONL files and stores; anything else is
    ignored. With a PostgreSQL `log`, the alerts the monitor recorded in its database too."""
    alerts: list[Alert] = []
    if log is not None and is_postgres(str(log)):
        for record in shared_alert_records(str(log), model):
            alert = as_alert(record, model, redacted(str(log)))
            if alert is not None:
                alerts.append(alert)
    if not monitor_dir.is_dir():
        return sorted(set(alerts), key=lambda a: a.ts)
    suffixes = (".json", ".jsonl", ".ndjson", *_STORES)
    for path in sorted(p for p in monitor_dir.rglob("*") if p.suffix in suffixes and p.is_file()):
        for record in (alert_records(path, model) if path.suffix in _STORES else _records(path)):
            alert = as_alert(record, model, path)
            if alert is not None:
                alerts.append(alert)
    return sorted(set(alerts), key=lambda a: a.ts)


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else data.get("alerts", [data]) if isinstance(data, dict) else []
    except ValueError:  # JSONL, possibly with a torn last line
        items = []
        for line in text.splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                continue
    return [i for i in items if isinstance(i, dict)]


def as_alert(record: dict[str, Any], model: str, source: str | Path) -> Alert | None:
    kind = _kind(record)
    if kind is None or not _about(record, model):
        return None
    status = str(record.get("status", record.get("state", ""))).lower()
    if status in _RESOLVED or record.get("firing") is False or record.get("alert") is False:
        return None
    ts = _time(record)
    if ts is None:
        return None
    return Alert(kind, ts, str(source), record)


def _kind(record: dict[str, Any]) -> str | None:
    for key in _NAME_KEYS:
        value = record.get(key)
        if isinstance(value, str):
            kind = ALIASES.get(value.strip().lower())
            if kind in EVENTS:
                return kind
    return None


def _about(record: dict[str, Any], model: str) -> bool:
    for key in _MODEL_KEYS:
        if isinstance(record.get(key), str):
            return record[key].split("@")[0].split("/")[0] == model
    resource = record.get("resource_id", record.get("resource"))
    if isinstance(resource, dict):
        resource = resource.get("prefect.resource.id")
    return isinstance(resource, str) and resource == f"mlops.model.{model}"


def _time(record: dict[str, Any]) -> float | None:
    for key in _TIME_KEYS:
        value = record.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return parse_time(value)
            except ValueError:
                continue
    return None
