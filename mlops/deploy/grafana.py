"""A Grafana dashboard over `mlops serve`'s and `mlops monitor`'s Prometheus series, and the provisioning files that
load it, rendered by `mlops deploy` beside the alert rules:

    OUT/grafana/dashboards/<model>.json                   the dashboard (grafana-foundation-sdk's typed builders)
    OUT/grafana/provisioning/dashboards/mlops.yaml        a file provider over the dashboards folder
    OUT/grafana/provisioning/datasources/prometheus.yaml  the Prometheus datasource the panels query (its uid)

Every panel's queries are `Query` records that name the series they read (`metrics`), so a test can check each
against what a live server's /metrics and the monitor's drift textfile export. The thresholds drawn are the ones
the alert rules and the rollout checks use: the monitor's latency SLA and error-rate bound, the rollout's shadow
disagreement and p99 bounds, the prediction log's size bound.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mlops.core.atomic import write_text
from mlops.deploy.alerts import PREDICT_ROUTES, log_size_bound
from mlops.recipe.deploy import DeployConfig, GrafanaConfig

DIR = "grafana"
PROVIDER_FILE = "provisioning/dashboards/mlops.yaml"
DATASOURCE_FILE = "provisioning/datasources/prometheus.yaml"
RATE = "$__rate_interval"  # Grafana's: at least four scrape intervals, so a rate never has fewer than two points
MODEL = 'model=~"$model"'
PREDICT = f'{MODEL}, route=~"{PREDICT_ROUTES}"'
# the server's own series carry no `model` label (process, GPU, in-flight): kept to the targets serving $model
SERVING = f'and on (instance) max by (instance) (mlops_model_info{{{MODEL}}})'
# each answering arm's version, joined onto its request series: a KServe canary is a second server whose variant is
# also `champion`, so its traffic is told apart by the version it serves
BY_VERSION = f'* on (instance, model, variant) group_left (version) max by (instance, model, variant, version) ' \
             f'(mlops_model_info{{{MODEL}}})'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    metrics: tuple[str, ...]  # the series `expr` reads, exactly as exported (histograms by their _bucket/_sum...)


@dataclass(frozen=True)
class Threshold:
    value: float
    color: str = "red"


@dataclass(frozen=True)
class PanelSpec:
    title: str
    kind: Literal["timeseries", "stat", "gauge"]
    description: str
    unit: str
    queries: tuple[Query, ...]
    thresholds: tuple[Threshold, ...] = ()
    width: int = 12
    height: int = 8
    # max (min is then 0), stacked, mappings {value: (text, color)}, text_mode "name" (a stat shows series names)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[PanelSpec, ...]


def rows(deploy: DeployConfig, monitor: Any) -> list[Row]:
    """The dashboard's rows and panels; `monitor` is the recipe's MonitorConfig (latency SLA, error-rate bound,
    log limits)."""
    latency, errors, checks = monitor.latency, monitor.error_rate, deploy.rollout.checks
    sla_s = latency.sla_ms / 1000
    max_error_rate = errors.baseline + errors.max_increase
    error_status = "[45].." if errors.count_4xx else "5.."
    _, log_bound = log_size_bound(monitor.log_limits)
    quantiles = sorted({50.0, 95.0, 99.0, float(latency.percentile)})
    requests = f"rate(mlops_requests_total{{{PREDICT}}}[{RATE}])"
    p99_bound = checks.max_p99_ms / 1000 if checks.max_p99_ms is not None else sla_s
    return [
        Row("Traffic", (
            PanelSpec("Request rate", "timeseries", "Requests answered per second, by route.", "reqps", (
                Query(f"sum by (route) (rate(mlops_requests_total{{{MODEL}}}[{RATE}]))", "{{route}}",
                      ("mlops_requests_total",)),)),
            PanelSpec("Errors by status", "timeseries", "Error answers per second, by HTTP status and route (4xx: "
                      "the caller's mistake, 5xx: the server's).", "reqps", (
                Query(f'sum by (status, route) (rate(mlops_requests_total{{{MODEL}, status=~"[45].."}}[{RATE}]))',
                      "{{status}} {{route}}", ("mlops_requests_total",)),)),
            PanelSpec("Predict error ratio", "stat", f"{'4xx and 5xx' if errors.count_4xx else '5xx'} answers / "
                      f"predict requests; the line is the monitor's error-rate bound (baseline {errors.baseline:g} "
                      f"+ max_increase {errors.max_increase:g}), the MlopsErrorRate alert's.", "percentunit", (
                # `or vector(0)`: with no error yet the ratio is 0, not "no data"
                Query(f'(sum(rate(mlops_requests_total{{{PREDICT}, status=~"{error_status}"}}[{RATE}])) or '
                      f"vector(0)) / sum({requests})", "error ratio", ("mlops_requests_total",)),),
                (Threshold(max_error_rate),), width=6),
            PanelSpec("Requests in flight", "stat", "Requests being handled now, per server.", "short", (
                Query(f"sum(mlops_requests_in_flight {SERVING})", "in flight",
                      ("mlops_requests_in_flight", "mlops_model_info")),), width=6),
            PanelSpec(f"Latency percentiles vs the {latency.sla_ms:g} ms SLA", "timeseries",
                      f"Predict request latency percentiles; the line is monitor.latency.sla_ms, which the "
                      f"p{latency.percentile:g} must stay under (the MlopsLatencyOverSLA alert).", "s", tuple(
                Query(f"histogram_quantile({q / 100:g}, sum by (le) "
                      f"(rate(mlops_request_latency_seconds_bucket{{{PREDICT}}}[{RATE}])))", f"p{q:g}",
                      ("mlops_request_latency_seconds_bucket",)) for q in quantiles),
                (Threshold(sla_s),), width=24),
        )),
        Row("Model", (
            PanelSpec("Batch sizes", "timeseries", "Rows per model call with adaptive batching (`mlops serve "
                      "--batch-max`): the mean and the median and 95th percentile of calls.", "short", (
                Query(f"sum(rate(mlops_batch_rows_sum{{{MODEL}}}[{RATE}])) / "
                      f"sum(rate(mlops_batch_rows_count{{{MODEL}}}[{RATE}]))", "mean",
                      ("mlops_batch_rows_sum", "mlops_batch_rows_count")),
                *(Query(f"histogram_quantile({q}, sum by (le) (rate(mlops_batch_rows_bucket{{{MODEL}}}[{RATE}])))",
                        f"p{round(q * 100)}", ("mlops_batch_rows_bucket",)) for q in (0.5, 0.95)))),
            PanelSpec("Predicted classes", "timeseries", "Share of predictions per class and variant: a class "
                      "that drifts shows here before labels arrive.", "percentunit", (
                Query(f"sum by (variant, label) (rate(mlops_predicted_class_total{{{MODEL}}}[{RATE}])) / "
                      f"ignoring (label) group_left () sum by (variant) "
                      f"(rate(mlops_predicted_class_total{{{MODEL}}}[{RATE}]))", "{{variant}} {{label}}",
                      ("mlops_predicted_class_total",)),), extra={"stacked": True, "max": 1}),
            PanelSpec("Unseen categories", "timeseries", "Categories never seen in training, per second and "
                      "feature (answered as missing under data.categories.unseen impute or allow).", "short", (
                Query(f"sum by (feature) (rate(mlops_unseen_categories_total{{{MODEL}}}[{RATE}]))", "{{feature}}",
                      ("mlops_unseen_categories_total",)),)),
            PanelSpec("Versions served", "stat", "The model version each variant serves (mlops_model_info).",
                      "none", (
                Query(f"max by (variant, version) (mlops_model_info{{{MODEL}}})", "{{variant}} v{{version}}",
                      ("mlops_model_info",)),), extra={"text_mode": "name"}),
        )),
        Row("Drift (mlops monitor)", (
            PanelSpec("Drift per feature", "stat", "1 while `mlops monitor` judged the feature drifted in its "
                      "latest window (monitor.alerts.prometheus_textfile, collected by node_exporter); the "
                      "MlopsDriftDetected alert fires on it.", "none", (
                Query(f"max by (feature) (mlops_drift_detected{{{MODEL}}})", "{{feature}}",
                      ("mlops_drift_detected",)),),
                (Threshold(1),), width=24, extra={"mappings": {"0": ("ok", "green"), "1": ("drift", "red")}}),
            PanelSpec("Drift score per feature", "gauge", "Each feature's drift statistic in the monitor's latest "
                      "window, with its method (distances drift above their threshold, p-values below).", "none", (
                Query(f"max by (feature, method) (mlops_drift_score{{{MODEL}}})", "{{feature}} ({{method}})",
                      ("mlops_drift_score",)),), width=24),
        )),
        Row("Shadow and canary", (
            PanelSpec("Shadow disagreement", "timeseries", "Rows where the shadow model (`mlops serve --shadow`) "
                      "answered differently / rows it compared; the line is rollout.checks.max_shadow_disagreement"
                      " when set. Shadow calls that raised or were dropped (queue full), per second.",
                      "percentunit", (
                Query(f"sum(rate(mlops_shadow_disagreements_total{{{MODEL}}}[{RATE}])) / "
                      f"sum(rate(mlops_shadow_rows_total{{{MODEL}}}[{RATE}]))", "disagreement",
                      ("mlops_shadow_disagreements_total", "mlops_shadow_rows_total")),
                Query(f"sum(rate(mlops_shadow_errors_total{{{MODEL}}}[{RATE}]))", "errors/s",
                      ("mlops_shadow_errors_total",)),
                Query(f"sum(rate(mlops_shadow_dropped_total{{{MODEL}}}[{RATE}]))", "dropped/s",
                      ("mlops_shadow_dropped_total",))),
                _bound(checks.max_shadow_disagreement)),
            PanelSpec("Canary share", "timeseries", "Each variant's and version's share of predict requests: the "
                      "A/B challenger of `mlops serve --ab`, or a KServe canary's version during `mlops rollout`.",
                      "percentunit", (
                Query(f"sum by (variant, version) ({requests} {BY_VERSION}) / scalar(sum({requests}))",
                      "{{variant}} v{{version}}", ("mlops_requests_total", "mlops_model_info")),),
                extra={"stacked": True, "max": 1}),
            PanelSpec("Latency per variant (p99)", "timeseries", "Each variant's and version's 99th-percentile "
                      "predict latency; the line is rollout.checks.max_p99_ms (the SLA when unset).", "s", (
                Query("histogram_quantile(0.99, sum by (le, variant, version) "
                      f"(rate(mlops_request_latency_seconds_bucket{{{PREDICT}}}[{RATE}]) {BY_VERSION}))",
                      "{{variant}} v{{version}}", ("mlops_request_latency_seconds_bucket", "mlops_model_info")),),
                (Threshold(p99_bound),), width=24),
        )),
        Row("Resources", (
            PanelSpec("CPU", "timeseries", "CPU seconds per second of each serving process (1 = one core).",
                      "short", (
                Query(f"rate(process_cpu_seconds_total[{RATE}]) {SERVING}", "{{instance}}",
                      ("process_cpu_seconds_total", "mlops_model_info")),), width=8),
            PanelSpec("Memory", "timeseries", "Resident memory of each serving process.", "bytes", (
                Query(f"process_resident_memory_bytes {SERVING}", "{{instance}}",
                      ("process_resident_memory_bytes", "mlops_model_info")),), width=8),
            PanelSpec("Open file descriptors", "timeseries", "Open file descriptors of each serving process "
                      "(sockets and the prediction log's files).", "short", (
                Query(f"process_open_fds {SERVING}", "{{instance}}", ("process_open_fds", "mlops_model_info")),),
                width=8),
            PanelSpec("GPU utilisation", "timeseries", "Share of time a kernel ran on each GPU of the serving "
                      "machines (no series without a GPU).", "percentunit", (
                Query(f"mlops_gpu_utilization_ratio {SERVING}", "{{instance}} gpu {{gpu}}",
                      ("mlops_gpu_utilization_ratio", "mlops_model_info")),), extra={"max": 1}),
            PanelSpec("GPU memory", "timeseries", "GPU memory in use (all processes) and installed.", "bytes", (
                Query(f"mlops_gpu_memory_used_bytes {SERVING}", "{{instance}} gpu {{gpu}} used",
                      ("mlops_gpu_memory_used_bytes", "mlops_model_info")),
                Query(f"mlops_gpu_memory_total_bytes {SERVING}", "{{instance}} gpu {{gpu}} total",
                      ("mlops_gpu_memory_total_bytes", "mlops_model_info")))),
            PanelSpec("Prediction log on disk", "timeseries", "Bytes of the prediction log by part (db, wal, "
                      "archive); the line is the bound of monitor.log_limits (the MlopsPredictionLogSize alert).",
                      "bytes", (
                Query(f"sum by (part) (mlops_prediction_log_bytes{{{MODEL}}})", "{{part}}",
                      ("mlops_prediction_log_bytes",)),),
                _bound(float(log_bound) if log_bound else None)),
            PanelSpec("Prediction log WAL rewinds", "timeseries", "Rewinds (RESTART checkpoints) of the log's WAL "
                      "past its bound, per second (busy: retried because a reader or writer was in the way).",
                      "short", (
                Query(f"sum by (outcome) (rate(mlops_prediction_log_wal_truncations_total{{{MODEL}}}[{RATE}]))",
                      "{{outcome}}", ("mlops_prediction_log_wal_truncations_total",)),)),
        )),
    ]


def _bound(value: float | None) -> tuple[Threshold, ...]:
    return () if value is None else (Threshold(value),)


def queries(deploy: DeployConfig, monitor: Any) -> list[Query]:
    return [q for row in rows(deploy, monitor) for panel in row.panels for q in panel.queries]


def dashboard_uid(model: str) -> str:
    """A Grafana uid (at most 40 characters of [A-Za-z0-9_-]), stable for a model name."""
    uid = "mlops-" + re.sub(r"[^A-Za-z0-9_-]", "-", model)
    return uid if len(uid) <= 40 else f"{uid[:31]}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def dashboard_json(deploy: DeployConfig, monitor: Any, model: str) -> str:
    """The dashboard as Grafana's JSON model, built with grafana-foundation-sdk's typed builders."""
    from grafana_foundation_sdk.builders import dashboard as builder
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as model_types

    cfg = deploy.grafana
    datasource = model_types.DataSourceRef(type_val="prometheus", uid=cfg.datasource_uid)
    variable = (builder.QueryVariable("model").label("Model").datasource(datasource)
                .query("label_values(mlops_requests_total, model)")
                .current(model_types.VariableOption(selected=True, text=model, value=model))
                .refresh(model_types.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model_types.VariableSort.ALPHABETICAL_ASC))
    board = (builder.Dashboard(f"mlops: {model}").uid(dashboard_uid(model)).tags(["mlops", model])
             .description(f"Serving, drift, rollout and resources of {model} (rendered by mlops deploy)")
             .refresh(cfg.refresh).time("now-1h", "now").timezone("browser").editable().with_variable(variable))
    panel_id = 0
    for row in rows(deploy, monitor):
        panel_id += 1
        board = board.with_row(builder.Row(row.title).id(panel_id))
        for spec in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(spec, panel_id, datasource))
    return JSONEncoder(sort_keys=True, indent=2).encode(board.build()) + "\n"


def _panel(spec: PanelSpec, panel_id: int, datasource: Any) -> Any:
    from grafana_foundation_sdk.builders import common as common_builder
    from grafana_foundation_sdk.builders import dashboard as builder
    from grafana_foundation_sdk.builders import gauge, prometheus, stat, timeseries
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model_types

    kinds: dict[str, Any] = {"timeseries": timeseries.Panel, "stat": stat.Panel, "gauge": gauge.Panel}
    panel = (kinds[spec.kind]().id(panel_id).title(spec.title).description(spec.description).datasource(datasource)
             .unit(spec.unit).span(spec.width).height(spec.height))
    for ref, q in zip("ABCDEFGH", spec.queries, strict=False):
        panel = panel.with_target(prometheus.Dataquery().ref_id(ref).expr(q.expr).legend_format(q.legend)
                                  .datasource(datasource))
    steps = [model_types.Threshold(None, "green")] + [model_types.Threshold(t.value, t.color) for t in spec.thresholds]
    panel = panel.thresholds(builder.ThresholdsConfig().mode(model_types.ThresholdsMode.ABSOLUTE).steps(steps))
    if "max" in spec.extra:
        panel = panel.min(0).max(spec.extra["max"])
    if "mappings" in spec.extra:
        panel = panel.mappings([model_types.ValueMap({value: model_types.ValueMappingResult(text=text, color=color)
                                                      for value, (text, color) in spec.extra["mappings"].items()})])
    if spec.kind == "timeseries":
        if spec.thresholds:  # the bound drawn as a line across the graph
            panel = panel.thresholds_style(common_builder.GraphThresholdsStyleConfig()
                                           .mode(common.GraphTresholdsStyleMode.LINE))
        if spec.extra.get("stacked"):
            panel = panel.stacking(common_builder.StackingConfig().mode(common.StackingMode.NORMAL))
    elif spec.kind == "stat":
        panel = (panel.color_mode(common.BigValueColorMode.BACKGROUND)
                 .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
        if spec.extra.get("text_mode") == "name":
            panel = panel.text_mode(common.BigValueTextMode.NAME)
    else:
        panel = panel.reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    return panel


def provisioning(cfg: GrafanaConfig) -> dict[str, str]:
    """The provisioning files, by path under OUT/grafana/: a file provider over the folder the dashboards are
    mounted at (`cfg.dashboards_path`), and the Prometheus datasource with the uid the panels query."""
    provider = {"apiVersion": 1, "providers": [{
        "name": "mlops", "orgId": 1, "folder": cfg.folder, "type": "file", "disableDeletion": False,
        "allowUiUpdates": False, "updateIntervalSeconds": 30, "options": {"path": cfg.dashboards_path}}]}
    datasource = {"apiVersion": 1, "datasources": [{
        "name": cfg.datasource_name, "type": "prometheus", "uid": cfg.datasource_uid, "access": "proxy",
        "url": cfg.datasource_url, "isDefault": False, "editable": False}]}
    return {PROVIDER_FILE: _yaml(provider), DATASOURCE_FILE: _yaml(datasource)}


def _yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_grafana(out: Path, deploy: DeployConfig, monitor: Any, model: str) -> dict[str, Path]:
    """Writes OUT/grafana/: the dashboard and its provisioning files; their paths by role (dashboard, provider,
    datasource, and the provisioning folder Grafana reads at /etc/grafana/provisioning)."""
    root = out / DIR
    board = write_text(root / "dashboards" / f"{_file_name(model)}.json", dashboard_json(deploy, monitor, model))
    files = {"dashboard": board, "provisioning": root / "provisioning"}
    for role, (rel, text) in zip(("provider", "datasource"), provisioning(deploy.grafana).items(), strict=True):
        files[role] = write_text(root / rel, text)
    return files


def _file_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def panel_exprs(dashboard: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in a rendered dashboard JSON."""
    return [(p.get("title", ""), t["expr"]) for p in json.loads(dashboard)["panels"] for t in p.get("targets", [])]
