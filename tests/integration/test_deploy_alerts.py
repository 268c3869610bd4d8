"""The rendered Prometheus alert rules, checked by Prometheus' own tool: `promtool check rules` (syntax, PromQL)
and `promtool test rules` (the rules evaluated over synthetic series of the server's metric names): each alert
fires when its condition has held for `for`, and stays silent for healthy traffic or a blip shorter than that.

Needs Debian's `prometheus` package (`make system-deps`): skipped without it, except in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.core.errors import MlopsError
from mlops.deploy.alerts import ALERT_NAMES, alert_rules, promtool_check
from mlops.recipe.deploy import AlertsConfig
from mlops.recipe.monitor import MonitorConfig

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")
if PROMTOOL is None:
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is not installed, and CI=true (make system-deps installs Debian's prometheus)",
                    pytrace=False)
    pytest.skip("promtool is not installed (make system-deps): the alert rules are not checked",
                allow_module_level=True)

MODEL = "quickstart"
ALERTS = AlertsConfig.model_validate({"window": "5m", "for": "10m"})
# the thresholds are the monitor's: p99 over 250 ms, errors over 0.5 % + 0.5 %
MONITOR = MonitorConfig.model_validate({"latency": {"percentile": 99, "sla_ms": 250},
                                        "error_rate": {"baseline": 0.005, "max_increase": 0.005}})
BUCKETS = ["0.001", "0.01", "0.1", "0.25", "0.5", "1", "+Inf"]


def requests(variant: str, status: str, per_minute: int) -> dict[str, str]:
    labels = f'model="{MODEL}",route="v1_predict",variant="{variant}",status="{status}"'
    return {"series": f"mlops_requests_total{{{labels}}}", "values": f"0+{per_minute}x40"}


def latency(variant: str, seconds_bucket: str, per_minute: int) -> list[dict[str, str]]:
    """Every request of `variant` observed in the bucket whose upper bound is `seconds_bucket`."""
    out = []
    for le in BUCKETS:
        counted = le == "+Inf" or float(le) >= float(seconds_bucket)
        labels = f'model="{MODEL}",route="v1_predict",variant="{variant}",le="{le}"'
        out.append({"series": f"mlops_request_latency_seconds_bucket{{{labels}}}",
                    "values": f"0+{per_minute if counted else 0}x40"})
    return out


def labels(rule: str, **extra: str) -> dict[str, str]:
    return {"severity": "page", "rule": rule, "model": MODEL, **extra}


def run_promtool(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "alerts.rules.yml"
    rules.write_text(alert_rules(ALERTS, MONITOR, MODEL))
    spec = tmp_path / "alerts.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "alerts.rules.yml"
    path.write_text(alert_rules(ALERTS, MONITOR, MODEL))

    report = promtool_check(path)

    assert report is not None and "SUCCESS: 5 rules found" in report


def test_promtool_check_rejects_broken_rules(tmp_path: Path) -> None:
    """Guard against a vacuous check: a rule with broken PromQL is refused with promtool's reason."""
    path = tmp_path / "alerts.rules.yml"
    path.write_text(alert_rules(ALERTS, MONITOR, MODEL).replace("histogram_quantile(0.99,", "histogram_quantile(0.99"))

    with pytest.raises(MlopsError, match="promtool rejects"):
        promtool_check(path)


def test_alerts_fire_on_their_conditions(tmp_path: Path) -> None:
    series = [
        requests("champion", "200", 600), requests("champion", "500", 60),  # ~9 % errors
        requests("challenger", "200", 600),  # healthy: no error alert for this variant
        *latency("champion", "1", 660),  # every request in (0.5 s, 1 s]: p99 far over 250 ms
        *latency("challenger", "0.01", 600),  # 10 ms: within the SLA
        {"series": f'mlops_drift_detected{{model="{MODEL}",feature="age"}}', "values": "1x40"},
        {"series": f'mlops_drift_detected{{model="{MODEL}",feature="income"}}', "values": "0x40"},
    ]
    # (labels, annotations) of each firing alert: the values come from the series above (60 / 660 requests
    # failed; p99 interpolated in the (0.5 s, 1 s] bucket as 995 ms)
    firing = {
        "error_rate": (labels("error_rate", variant="champion"), {
            "summary": "error rate of quickstart is over 1 %",
            "description": "quickstart (champion) answers 9.091% of predictions with an error"}),
        "latency": (labels("latency", variant="champion"), {
            "summary": "p99 latency of quickstart is over its SLA of 250 ms",
            "description": "p99 of quickstart (champion) is 995ms"}),
        "drift": (labels("drift", feature="age"), {
            "summary": "input drift detected for quickstart",
            "description": "feature age of quickstart has drifted from the training data"}),
    }
    checks = [{"eval_time": "20m", "alertname": ALERT_NAMES[rule],
               "exp_alerts": [{"exp_labels": lab, "exp_annotations": notes}]}
              for rule, (lab, notes) in firing.items()]
    # 5 minutes in, every condition holds but not yet for the rules' 10 minutes: nothing fires
    checks += [{"eval_time": "5m", "alertname": name, "exp_alerts": []} for name in ALERT_NAMES.values()]

    proc = run_promtool(tmp_path, [{"interval": "1m", "input_series": series, "alert_rule_test": checks}])

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_stay_silent_on_healthy_traffic(tmp_path: Path) -> None:
    series = [requests("champion", "200", 600), requests("champion", "500", 3),  # 0.5 % errors: under 1 %
              *latency("champion", "0.1", 603),
              {"series": f'mlops_drift_detected{{model="{MODEL}",feature="age"}}', "values": "0x40"}]
    checks = [{"eval_time": "30m", "alertname": name, "exp_alerts": []} for name in ALERT_NAMES.values()]

    proc = run_promtool(tmp_path, [{"interval": "1m", "input_series": series, "alert_rule_test": checks}])

    assert proc.returncode == 0, proc.stdout + proc.stderr


def log_bytes(part: str, size: float) -> dict[str, str]:
    return {"series": f'mlops_prediction_log_bytes{{model="{MODEL}",part="{part}"}}', "values": f"{size:.0f}x40"}


def test_log_size_alert_fires_when_database_and_wal_outgrow_their_bounds(tmp_path: Path) -> None:
    """The recipe's defaults bound the log at 5 GB + a 64 MB WAL; the archive (Parquet) is not counted."""
    over = [log_bytes("db", 4.9e9), log_bytes("wal", 0.3e9), log_bytes("archive", 0)]
    under = [log_bytes("db", 4.9e9), log_bytes("wal", 0), log_bytes("archive", 80e9)]
    fired = {"exp_labels": labels("log_size"), "exp_annotations": {
        "summary": "the prediction log of quickstart is over its bound of 5.06 GB (db|wal)",
        "description": "the prediction log of quickstart takes 4.843GiB on disk: its retention or WAL truncation "
                       "is not keeping up (monitor.log_limits)"}}
    name = ALERT_NAMES["log_size"]
    tests = [{"interval": "1m", "input_series": over, "alert_rule_test": [
                 {"eval_time": "5m", "alertname": name, "exp_alerts": []},  # not yet for 10 minutes
                 {"eval_time": "20m", "alertname": name, "exp_alerts": [fired]}]},
             {"interval": "1m", "input_series": under, "alert_rule_test": [
                 {"eval_time": "30m", "alertname": name, "exp_alerts": []}]}]

    proc = run_promtool(tmp_path, tests)

    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_expectation_fails_promtool(tmp_path: Path) -> None:
    """Guard against a vacuous `promtool test`: expecting silence while the error rate is high fails."""
    series = [requests("champion", "200", 600), requests("champion", "500", 60)]
    checks = [{"eval_time": "20m", "alertname": ALERT_NAMES["error_rate"], "exp_alerts": []}]

    proc = run_promtool(tmp_path, [{"interval": "1m", "input_series": series, "alert_rule_test": checks}])

    assert proc.returncode != 0 and ALERT_NAMES["error_rate"] in proc.stdout + proc.stderr
