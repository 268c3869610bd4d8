"""The Grafana dashboard `mlops deploy` renders (mlops/deploy/grafana.py): its panels, ids, datasource and template
variable; the thresholds taken from the recipe (latency SLA, error-rate bound); every query's PromQL naming the
series its structured record says it reads, and parsing (promtool, when installed); the provisioning files; and
`deploy_recipe` writing them beside the alert rules. Whether those series exist on a live server:
tests/integration/test_grafana_metrics.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.deploy.generate import deploy_recipe
from mlops.deploy.grafana import (
    DATASOURCE_FILE,
    PROVIDER_FILE,
    dashboard_json,
    dashboard_uid,
    panel_exprs,
    provisioning,
    queries,
    rows,
)
from mlops.recipe import load_recipe
from mlops.recipe.deploy import DeployConfig
from mlops.recipe.monitor import MonitorConfig
from tests.conftest import ROOT

QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
PROMTOOL = shutil.which("promtool")
TITLES = {"Request rate", "Errors by status", "Predict error ratio", "Requests in flight",
          "Latency percentiles vs the 100 ms SLA", "Batch sizes", "Predicted classes", "Unseen categories",
          "Versions served", "Drift per feature", "Drift score per feature", "Shadow disagreement", "Canary share",
          "Latency per variant (p99)", "CPU", "Memory", "Open file descriptors", "GPU utilisation", "GPU memory",
          "Prediction log on disk", "Prediction log WAL rewinds"}
ROWS = ["Traffic", "Model", "Drift (mlops monitor)", "Shadow and canary", "Resources"]
# what is not a series name in a PromQL expression once strings, matchers, ranges and label lists are gone
OPERATOR_WORDS = {"and", "or", "unless", "bool", "offset"}


def promql_metric_names(expr: str) -> set[str]:
    """The series names an expression selects, read from its text alone: identifiers that are not functions,
    aggregations, operators or inside a label list, a matcher, a string or a range."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w:$])[A-Za-z_:][\w:]*\b(?!\s*\()", text)
    return {n for n in names if n not in OPERATOR_WORDS}


def board(deploy: DeployConfig | None = None, monitor: MonitorConfig | None = None,
          model: str = "quickstart") -> dict[str, Any]:
    return json.loads(dashboard_json(deploy or DeployConfig(), monitor or MonitorConfig(), model))


def panels(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}


def test_the_parser_reads_names_and_nothing_else() -> None:
    """Guard for the checks below: functions, label lists, matchers and ranges are not series names."""
    expr = ('histogram_quantile(0.99, sum by (le, variant) (rate(a_bucket{model=~"$model", x="b_total"}[5m]) '
            '* on (instance) group_left (version) max by (instance) (info_metric))) / scalar(sum(c_total offset 1m))'
            ' and on (instance) d')

    assert promql_metric_names(expr) == {"a_bucket", "info_metric", "c_total", "d"}


def test_every_panel_is_there_once_with_its_own_id_and_the_datasource() -> None:
    deploy = DeployConfig.model_validate({"grafana": {"datasource_uid": "prom-main", "refresh": "1m"}})
    dashboard = board(deploy)
    everything = dashboard["panels"]
    titles = [p["title"] for p in everything if p["type"] != "row"]

    assert set(titles) == TITLES and len(titles) == len(TITLES)
    assert [p["title"] for p in everything if p["type"] == "row"] == ROWS
    ids = [p["id"] for p in everything]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) and i > 0 for i in ids)
    for panel in everything:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prom-main"}, panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "prom-main" for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert dashboard["refresh"] == "1m"
    assert dashboard["uid"] == "mlops-quickstart" and dashboard["title"] == "mlops: quickstart"
    assert {p["type"] for p in everything} == {"row", "timeseries", "stat", "gauge"}


def test_the_model_variable_drives_every_query() -> None:
    dashboard = board(model="churn")
    (variable,) = dashboard["templating"]["list"]

    assert variable["name"] == "model" and variable["type"] == "query"
    assert variable["query"] == "label_values(mlops_requests_total, model)"
    assert variable["current"]["value"] == "churn"
    assert variable["datasource"]["uid"] == "prometheus"
    for title, expr in panel_exprs(json.dumps(dashboard)):
        assert 'model=~"$model"' in expr, title


def test_latency_panel_draws_the_recipes_sla_and_percentile() -> None:
    monitor = MonitorConfig.model_validate({"latency": {"percentile": 97.5, "sla_ms": 40}})
    dashboard = panels(board(monitor=monitor))
    latency = dashboard["Latency percentiles vs the 40 ms SLA"]
    steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]

    assert [s["value"] for s in steps] == [None, 0.04]
    assert latency["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert latency["fieldConfig"]["defaults"]["unit"] == "s"
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p97.5", "p99"]
    assert all(t["expr"].startswith("histogram_quantile(") for t in latency["targets"])
    assert "histogram_quantile(0.975," in latency["targets"][2]["expr"]
    assert "Latency percentiles vs the 100 ms SLA" in panels(board())  # the default SLA, not a fixed title


def test_error_ratio_and_rollout_bounds_come_from_the_recipe() -> None:
    monitor = MonitorConfig.model_validate({"error_rate": {"baseline": 0.002, "max_increase": 0.003,
                                                           "count_4xx": True}})
    deploy = DeployConfig.model_validate({"rollout": {"checks": {"max_p99_ms": 80, "max_shadow_disagreement": 0.05}}})
    dashboard = panels(board(deploy, monitor))

    def bounds(title: str) -> list[float]:
        return [s["value"] for s in dashboard[title]["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]

    assert bounds("Predict error ratio") == [pytest.approx(0.005)]
    assert 'status=~"[45].."' in dashboard["Predict error ratio"]["targets"][0]["expr"]
    assert bounds("Latency per variant (p99)") == [0.08]
    assert bounds("Shadow disagreement") == [0.05]
    defaults = panels(board())
    assert 'status=~"5.."' in defaults["Predict error ratio"]["targets"][0]["expr"]
    assert [s["value"] for s in defaults["Shadow disagreement"]["fieldConfig"]["defaults"]["thresholds"]["steps"]] \
        == [None]  # no disagreement bound in the recipe: none drawn


def test_rendered_queries_name_exactly_the_series_their_records_list() -> None:
    """The structured record of each query (what the integration test checks against a live server) and the
    PromQL Grafana will run agree, series for series."""
    deploy, monitor = DeployConfig(), MonitorConfig()
    records = queries(deploy, monitor)
    rendered = panel_exprs(dashboard_json(deploy, monitor, "quickstart"))

    assert [expr for _, expr in rendered] == [q.expr for q in records]
    for q in records:
        assert promql_metric_names(q.expr) == set(q.metrics), q.expr
    names = {m for q in records for m in q.metrics}
    assert {"mlops_requests_total", "mlops_request_latency_seconds_bucket", "mlops_batch_rows_bucket",
            "mlops_drift_detected", "mlops_shadow_disagreements_total", "process_resident_memory_bytes",
            "mlops_gpu_utilization_ratio"} <= names


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool has no single-expression check: each query goes in as a recording rule, Grafana's variables
    replaced by what they expand to."""
    if PROMTOOL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed, and CI=true (make system-deps installs Debian's prometheus)")
        pytest.skip("promtool is not installed (make system-deps): PromQL syntax is not checked")

    def check(exprs: list[str]) -> subprocess.CompletedProcess[str]:
        rules = [{"record": f"mlops:grafana_query_{i}", "expr": e.replace("$__rate_interval", "1m")
                  .replace("$model", "quickstart")} for i, e in enumerate(exprs)]
        path = tmp_path / "queries.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
        return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)

    exprs = [e for _, e in panel_exprs(dashboard_json(DeployConfig(), MonitorConfig(), "quickstart"))]
    ok = check(exprs)
    broken = check([exprs[0].rstrip(")")])

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(exprs)} rules found" in ok.stdout
    assert broken.returncode != 0  # the check can fail


def test_provisioning_files_point_at_the_dashboards_and_the_datasource() -> None:
    cfg = DeployConfig.model_validate({"grafana": {
        "datasource_uid": "prom-2", "datasource_name": "Prom", "datasource_url": "http://prom.monitoring:9090",
        "folder": "Models", "dashboards_path": "/dashboards"}}).grafana
    files = provisioning(cfg)

    assert set(files) == {PROVIDER_FILE, DATASOURCE_FILE}
    (provider,) = yaml.safe_load(files[PROVIDER_FILE])["providers"]
    assert (provider["type"], provider["folder"], provider["options"]["path"]) == ("file", "Models", "/dashboards")
    (datasource,) = yaml.safe_load(files[DATASOURCE_FILE])["datasources"]
    assert (datasource["type"], datasource["uid"], datasource["name"], datasource["url"]) == (
        "prometheus", "prom-2", "Prom", "http://prom.monitoring:9090")
    assert yaml.safe_load(files[DATASOURCE_FILE])["apiVersion"] == 1


def test_a_bad_datasource_uid_is_refused() -> None:
    with pytest.raises(ValueError, match="datasource_uid"):
        DeployConfig.model_validate({"grafana": {"datasource_uid": "has spaces"}})


def test_dashboard_uids_fit_grafana_and_stay_distinct() -> None:
    long_a, long_b = "a" * 60, "a" * 59 + "b"

    assert dashboard_uid("quick start/v2") == "mlops-quick-start-v2"
    assert len(dashboard_uid(long_a)) <= 40 and dashboard_uid(long_a) != dashboard_uid(long_b)


def test_rows_hold_every_panel_of_the_records() -> None:
    titles = [p.title for row in rows(DeployConfig(), MonitorConfig()) for p in row.panels]

    assert set(titles) == TITLES


def test_deploy_writes_the_dashboard_beside_the_alert_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    loaded = load_recipe(QUICKSTART, ["deploy.grafana.datasource_uid=prom-x", "monitor.latency.sla_ms=75"])
    out = tmp_path / "out"

    result = deploy_recipe(loaded, out=out, targets=["alerts"], project_dir=ROOT)

    assert result["files"]["grafana"] == str(out / "grafana")
    assert (out / "alerts.rules.yml").is_file()
    dashboard = json.loads((out / "grafana" / "dashboards" / "quickstart.json").read_text())
    assert dashboard["uid"] == "mlops-quickstart"
    latency = panels(dashboard)["Latency percentiles vs the 75 ms SLA"]
    assert latency["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == 0.075
    assert all(p["datasource"]["uid"] == "prom-x" for p in dashboard["panels"] if p["type"] != "row")
    (datasource,) = yaml.safe_load((out / "grafana" / DATASOURCE_FILE).read_text())["datasources"]
    assert datasource["uid"] == "prom-x"
    (provider,) = yaml.safe_load((out / "grafana" / PROVIDER_FILE).read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/mlops"
    assert any(line.startswith("load the dashboard: mount ") for line in result["next"])

    off = deploy_recipe(load_recipe(QUICKSTART, ["deploy.grafana.enabled=false"]), out=tmp_path / "off",
                        targets=["alerts"], project_dir=ROOT)
    assert "grafana" not in off["files"] and not (tmp_path / "off" / "grafana").exists()


def test_the_hints_name_the_recipe_a_command_needs(tmp_path: Path) -> None:
    """`mlops deploy --prefect` alone is a usage error (RECIPE is required): the hint names the recipe and its
    overrides, as it was deployed."""
    loaded = load_recipe(QUICKSTART, ["deploy.prefect.work_pool=pool-a"])
    result = deploy_recipe(loaded, out=tmp_path / "out", targets=["prefect"], project_dir=tmp_path)
    (hint,) = [line for line in result["next"] if line.startswith("register flows:")]
    assert hint.endswith(f"or  mlops deploy {loaded.composed.display} deploy.prefect.work_pool=pool-a --prefect"), hint
