"""Alert channels: a log line, a webhook POST (JSON), a Prefect event for automations; and the optional
Prometheus textfile of drift gauges. Prefect is imported here only, and only when an event is sent.

Event names: `mlops.alert.<rule>` when a rule fires (drift, prediction_drift, schema, missing_values,
accuracy_drop, latency, error_rate) and `mlops.resolved.<rule>` when it resolves. The resource is the model:
`{"prefect.resource.id": "mlops.model.<name>", "mlops.model.version": <version>}`.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from mlops.core.retry import with_retries
from mlops.monitor.results import AlertRecord
from mlops.monitor.rules import EVENT_PREFIX, RESOLVED_PREFIX
from mlops.recipe.monitor import AlertsConfig


def resource(model: str, version: str | None) -> dict[str, str]:
    return {"prefect.resource.id": f"mlops.model.{model}", "prefect.resource.name": model,
            "mlops.model.version": version or "unregistered"}


def deliver(alert: AlertRecord, cfg: AlertsConfig) -> dict[str, Any]:
    """Send one alert to every configured channel; each channel's outcome (never raises for a channel)."""
    out: dict[str, Any] = {}
    if cfg.log:
        w = alert.window
        print(f"mlops monitor: ALERT {alert.state.upper()} {alert.rule} model {alert.model} "
              f"v{alert.version or '-'} window {w.start_iso} .. {w.end_iso} ({w.rows} rows): "
              f"{alert.reason}", file=sys.stderr, flush=True)
        out["log"] = "printed"
    if cfg.webhook:
        # the alert as recorded, with its id in the store (the receiver may answer or deduplicate by it)
        out["webhook"] = post_webhook(cfg.webhook, alert.payload() | {"id": alert.id}, cfg.webhook_timeout_s)
    if prefect_enabled(cfg.prefect):
        try:
            out["prefect"] = emit_prefect_event(alert)
        except ImportError as exc:
            print(f"mlops monitor: cannot emit a Prefect event ({exc}): install prefect or set "
                  "monitor.alerts.prefect: false", file=sys.stderr, flush=True)
            out["prefect"] = {"error": str(exc)}
    return out


def post_webhook(url: str, alert: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST the alert; a refused connection, a timeout or a 5xx is tried again after a backoff (the body
    carries the alert's id, so a receiver that got it before answering 5xx can tell the repeat), a 4xx is not."""
    body = json.dumps(alert, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "mlops-monitor"})

    def post() -> int:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - the recipe's URL
            return int(resp.status)

    try:
        return {"status": with_retries(post, f"webhook {url}")}
    except OSError as exc:  # urllib's HTTPError and URLError are OSErrors: a dead receiver must not stop the run
        print(f"mlops monitor: webhook {url} failed: {exc}", file=sys.stderr, flush=True)
        return {"error": str(exc)}


def prefect_enabled(setting: bool | str) -> bool:
    """`auto`: a Prefect API is configured (environment, profile or settings context), or this runs inside a
    Prefect flow run. Prefect is imported only here, when an alert is about to go out."""
    if setting is True or setting is False:
        return setting
    try:
        from prefect.context import FlowRunContext
        from prefect.settings import get_current_settings
    except ImportError:  # Prefect is not installed: nobody can be listening
        return False
    return bool(get_current_settings().api.url) or FlowRunContext.get() is not None


def event_name(rule: str, state: str) -> str:
    return (EVENT_PREFIX if state == "fired" else RESOLVED_PREFIX) + rule


def emit_prefect_event(alert: AlertRecord) -> dict[str, Any]:
    from prefect.events import emit_event

    record = alert.payload()
    payload = {k: record[k] for k in ("rule", "state", "window", "value", "threshold", "reason", "detail",
                                      "dashboard", "log")}
    event = emit_event(alert.event, resource=resource(alert.model, alert.version),
                       payload=json.loads(json.dumps(payload, default=str)))
    return {"event_id": str(event.id)} if event is not None else {"error": "Prefect emits no events here"}


def flush_prefect_events(timeout: float = 30.0) -> None:
    """Events go out on a background worker: wait for it before the process may exit (no-op inside a running
    event loop, whose owner drains the worker)."""
    if "prefect.events" not in sys.modules:
        return
    import asyncio

    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout)


def write_drift_textfile(path: Path, model: str, columns: list[dict[str, Any]]) -> None:
    """`mlops_drift_detected{model, feature}` (1/0) and `mlops_drift_score` of the latest judged window, in
    Prometheus's text format, for node_exporter's textfile collector. Written atomically (prometheus_client
    writes a temporary file beside it and renames it)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    detected = Gauge("mlops_drift_detected", "1 when the feature drifted in the latest judged window",
                     ["model", "feature"], registry=registry)
    score = Gauge("mlops_drift_score", "the feature's drift statistic in the latest judged window",
                  ["model", "feature", "method"], registry=registry)
    for c in columns:
        if c["drift"] is not None:
            detected.labels(model=model, feature=c["column"]).set(int(bool(c["drift"])))
        if c["score"] is not None:
            score.labels(model=model, feature=c["column"], method=c["method"]).set(float(c["score"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
