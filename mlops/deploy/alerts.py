"""Prometheus alert rules over `mlops serve`'s metrics, with the thresholds of the recipe's `monitor:` section.

Three rules, each labelled with the name of the `mlops monitor` rule it mirrors (`rule: latency | error_rate |
drift`), so an alert in Prometheus and a finding of `mlops monitor` read the same and fire on the same bound:
- latency: the `monitor.latency.percentile` of predict requests over `monitor.latency.sla_ms`;
- error_rate: 5xx (and 4xx with `count_4xx`) / predict requests above `baseline + max_increase`;
- drift: `mlops_drift_detected{model, feature}` (a gauge `mlops monitor` exports, 1 while a feature drifts).

And one over the server itself, from `monitor.log_limits`: log_size, when the prediction log's database and WAL
(`mlops_prediction_log_bytes`) take more than the bounds declared for them (`retention.max_bytes` +
`wal_max_bytes`): its retention or its WAL rewinds are not keeping up, and the disk fills.

And one over the serving process, from `monitor.resources`: memory_growth, when its resident memory
(`process_resident_memory_bytes`, prometheus_client's process collector) grew by more than `max_memory_growth_mb`
over `window` (a leak). Process metrics carry no model label: the rule keeps the targets that serve the model
(`and on (instance, job) mlops_model_info{model}`), so that it watches neither Prometheus itself nor another
model's server, and labels its alert with the model.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.timespec import parse_duration
from mlops.deploy.render import render
from mlops.recipe.deploy import AlertsConfig

ALERT_NAMES = {"latency": "MlopsLatencyOverSLA", "error_rate": "MlopsErrorRate", "drift": "MlopsDriftDetected",
               "log_size": "MlopsPredictionLogSize", "memory_growth": "MlopsMemoryGrowth"}
PREDICT_ROUTES = "v1_predict|v2_infer"  # the server's route labels that answer predictions
FILENAME = "alerts.rules.yml"


def alert_rules(alerts: AlertsConfig, monitor: Any, model: str) -> str:
    """The rules file; `monitor` is the recipe's MonitorConfig (its latency, error_rate, log_limits and resources
    sections)."""
    latency, errors, resources = monitor.latency, monitor.error_rate, monitor.resources
    max_error_rate = errors.baseline + errors.max_increase
    log_parts, log_bytes = log_size_bound(monitor.log_limits)
    return render("alerts.rules.yml.j2", model=model, names=ALERT_NAMES, predict_routes=PREDICT_ROUTES,
                  window=alerts.window, for_=alerts.for_, severity=alerts.severity,
                  latency=latency.enabled, quantile=f"{latency.percentile / 100:g}", percentile=f"{latency.percentile:g}",
                  sla_ms=f"{latency.sla_ms:g}", sla_seconds=f"{latency.sla_ms / 1000:g}",
                  error_rate=errors.enabled, error_status="[45].." if errors.count_4xx else "5..",
                  max_error_rate=f"{max_error_rate:g}", max_error_rate_pct=f"{max_error_rate * 100:g}",
                  drift=alerts.drift, log_parts=log_parts, log_bytes=log_bytes,
                  log_bound=f"{log_bytes / 1e9:.3g} GB" if log_bytes >= 1e9 else f"{log_bytes / 1e6:.3g} MB",
                  memory_growth=resources.enabled, memory_window=f"{parse_duration(resources.window):.0f}s",
                  memory_window_text=resources.window, max_growth_mb=f"{resources.max_memory_growth_mb:g}",
                  max_growth_bytes=f"{resources.max_memory_growth_mb * 1e6:.0f}", filename=FILENAME)


def log_size_bound(limits: Any) -> tuple[str | None, int]:
    """Which parts of `mlops_prediction_log_bytes` the log_size rule sums, and the bound they must stay under
    (`limits` is the recipe's LogLimitsConfig); (None, 0) when nothing is bounded."""
    db, wal = limits.retention.max_bytes, limits.wal_max_bytes
    if db is None:
        return ("wal", int(wal)) if wal is not None else (None, 0)
    return "db|wal", int(db) + int(wal or 0)


def promtool_check(path: Path) -> str | None:
    """`promtool check rules PATH`: its report, or None when promtool is not installed. Raises on bad rules."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise MlopsError(f"promtool rejects {path}:\n{(proc.stdout + proc.stderr).strip()}")
    return proc.stdout.strip()
