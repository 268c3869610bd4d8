"""Resources, for real:

- a real `mlops serve` (its own process) exports the CPU, memory and file descriptors of the process that answers
  requests, and on a machine without a GPU no `mlops_gpu_*` series and no error;
- the monitor's memory_growth rule reads the resident memory a real server reports: memory the serving process
  takes between two scrapes is the growth it judges (the server runs in this process, so the test can grow it);
- the rendered MlopsMemoryGrowth alert, evaluated by promtool over the server's metric names;
- a real `mlops run` records MLflow's system metrics in its run.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import yaml
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from mlops.deploy.alerts import ALERT_NAMES, alert_rules
from mlops.monitor.operations import MB, scrape_memory, server_memory
from mlops.monitor.results import WindowSummary
from mlops.monitor.rules import memory_growth_rule
from mlops.recipe.deploy import AlertsConfig
from mlops.recipe.monitor import MonitorConfig
from tests.conftest import last_json, run_cli
from tests.net import free_port, serve_bundle
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

HAS_NVML = ctypes.util.find_library("nvidia-ml") is not None
PROMTOOL = shutil.which("promtool")


def metrics(url: str) -> dict[str, list[Any]]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_a_real_server_exports_its_own_process_resources(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "bundle")
    for server in serve_bundle(bundle, tmp_path):
        scraped = metrics(f"{server.base}/metrics")
        process = psutil.Process(server.proc.pid)  # `python -m mlops.cli serve`: one process, no workers
        rss = process.memory_info().rss

    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds", "python_info"):
        assert name in scraped, name
    # the serving process's, not this test's: its start time and its memory
    assert scraped["process_start_time_seconds"][0].value == pytest.approx(process.create_time(), abs=1.5)
    assert scraped["process_resident_memory_bytes"][0].value == pytest.approx(rss, rel=0.25)
    assert scraped["process_cpu_seconds_total"][0].value > 0
    if not HAS_NVML:  # this machine: no GPU, no NVML library: no series, and the server answered
        assert not [n for n in scraped if n.startswith("mlops_gpu_")]


@contextmanager
def serving(bundle: Path, log: Path) -> Iterator[str]:
    """The server `mlops serve BUNDLE --log LOG` builds, under uvicorn in this process on a free port."""
    import uvicorn

    from mlops.serve.run import ServeOptions, build_server

    server = build_server(ServeOptions(model=str(bundle), log=str(log)))
    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=30)


def latest_window(memory: dict[str, Any]) -> WindowSummary:
    return WindowSummary(index=0, start_ts=0.0, end_ts=1.0, start_iso="", end_iso="", start_rowid=1, end_rowid=2,
                         rows=2, judged=True, versions=[], operations={"memory": memory})


def test_memory_growth_of_a_real_server(tmp_path: Path) -> None:
    with serving(build_bundle(tmp_path / "bundle"), tmp_path / "log.sqlite") as url:
        first = server_memory(f"{url}/metrics", 3600, [])
        held = bytearray(160_000_000)  # the serving process takes 160 MB more (touched: resident)
        held[::4096] = b"\x01" * len(range(0, len(held), 4096))
        # what the store gives back: the earlier run's latest window, with its sample
        stored = [{"summary": {"operations": {"memory": first}}}]
        second = server_memory(f"{url}/metrics", 3600, stored)
        del held
        released = server_memory(f"{url}/metrics", 3600, [{"summary": {"operations": {"memory": second}}}])
        other = dict(second["sample"], process_start=second["sample"]["process_start"] - 600)
        restarted = server_memory(f"{url}/metrics", 3600, [{"summary": {"operations": {"memory": {
            "url": f"{url}/metrics", "sample": other}}}}])
    cfg = MonitorConfig.model_validate({"resources": {"metrics_url": f"{url}/metrics", "max_memory_growth_mb": 64}})

    assert first["growth_mb"] is None  # the first scrape of this process: nothing to grow from
    assert first["sample"]["process_start"] == pytest.approx(psutil.Process().create_time(), abs=1.5)
    assert second["growth_mb"] == pytest.approx((second["sample"]["rss_bytes"] - first["sample"]["rss_bytes"]) / MB)
    assert second["growth_mb"] > 150
    fired = memory_growth_rule(latest_window(second), cfg, {})
    assert fired.breach is True and fired.value == second["growth_mb"] and fired.threshold == 64
    # another process (a restart) is not compared with this one's samples
    assert restarted["growth_mb"] is None
    assert released["growth_mb"] < 150  # freed: the growth since the previous run shrinks


def test_scrape_memory_of_a_server_without_process_metrics(tmp_path: Path) -> None:
    """A /metrics without process metrics (not Linux, or another exporter): no sample, not an error."""
    page = tmp_path / "metrics"
    page.write_text("# TYPE up gauge\nup 1\n")
    assert scrape_memory(page.as_uri()) is None


@pytest.mark.skipif(PROMTOOL is None and os.environ.get("CI") != "true",
                    reason="promtool is not installed (make system-deps): the alert rule is not evaluated")
def test_memory_growth_alert_under_promtool(tmp_path: Path) -> None:
    """The rule fires for the model's server whose memory grows past the bound over the window, after `for`;
    not for a flat server, nor for another process growing (Prometheus itself: no mlops_model_info)."""
    assert PROMTOOL is not None, "promtool is not installed, and CI=true (make system-deps)"
    model = "quickstart"
    monitor = MonitorConfig.model_validate({"resources": {"max_memory_growth_mb": 100, "window": "30m"}})
    rules = tmp_path / "alerts.rules.yml"
    rules.write_text(alert_rules(AlertsConfig.model_validate({"window": "5m", "for": "10m"}), monitor, model))
    target = 'instance="10.0.0.1:8080",job="mlops"'
    series = [
        # +5 MB a minute: 150 MB per 30 minutes, over the 100 MB bound
        {"series": f"process_resident_memory_bytes{{{target}}}", "values": "200000000+5000000x90"},
        {"series": f'mlops_model_info{{{target},model="{model}",variant="champion",version="3"}}', "values": "1x90"},
        # a flat server of the same model
        {"series": 'process_resident_memory_bytes{instance="10.0.0.2:8080",job="mlops"}', "values": "300000000x90"},
        {"series": f'mlops_model_info{{instance="10.0.0.2:8080",job="mlops",model="{model}",variant="champion",'
                   'version="3"}', "values": "1x90"},
        # Prometheus itself, growing as fast: not a server of the model
        {"series": 'process_resident_memory_bytes{instance="localhost:9090",job="prometheus"}',
         "values": "100000000+5000000x90"},
    ]
    fired = {"exp_labels": {"severity": "page", "rule": "memory_growth", "model": model, "instance": "10.0.0.1:8080",
                            "job": "mlops"},
             "exp_annotations": {
                 "summary": "the resident memory of the quickstart server grew by more than 100 MB in 30m",
                 "description": "the server of quickstart at 10.0.0.1:8080 grew by 150MB of resident memory in "
                                "30m: a leak? (monitor.resources)"}}
    name = ALERT_NAMES["memory_growth"]
    spec = tmp_path / "alerts.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "25m", "alertname": name, "exp_alerts": []},  # 125 MB in the 25 minutes so far: but
            # growth over the window crossed 100 MB only at ~20 min, not yet for 10 minutes
            {"eval_time": "60m", "alertname": name, "exp_alerts": [fired]}]}]}))

    proc = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.e2e
def test_a_run_records_system_metrics_in_mlflow(isolated_env: dict[str, str]) -> None:
    summary = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=2"], isolated_env))
    uri = f"sqlite:///{isolated_env['MLOPS_HOME']}/mlflow.db"
    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])

    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    memory = client.get_metric_history(summary["run_id"], "system/system_memory_usage_megabytes")
    assert memory and all(0 < m.value < psutil.virtual_memory().total / 1e6 for m in memory)
    # sampled while the model trained: between the run's start and its end
    assert all(run.info.start_time <= m.timestamp <= run.info.end_time for m in memory)


def test_monitor_fires_memory_growth_on_a_growing_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlops monitor` twice over a real server: the first run keeps its resident memory, the second judges the
    growth since (the serving process took 200 MB meanwhile) and fires memory_growth."""
    from mlops.cli.output import jsonable
    from mlops.monitor.run import monitor_recipe
    from tests.serve_fixtures import training_frame

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    training_frame().to_csv(tmp_path / "toy.csv", index=False)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("name: toy\ndata:\n  path: toy.csv\n  target: y\nmonitor:\n  report:\n    evidently: false\n")
    bundle, log = build_bundle(tmp_path / "bundle"), tmp_path / "log.sqlite"
    rows = [{"age": float(r["age"]), "income": float(r["income"]), "city": str(r["city"])}
            for r in training_frame(100, seed=5).drop(columns="y").to_dict("records")]

    def traffic(url: str, batch: list[dict[str, Any]]) -> None:
        for row in batch:
            body = json.dumps({"instances": [row]}).encode()
            request = urllib.request.Request(f"{url}/v1/models/toy:predict", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200

    with serving(bundle, log) as url:
        overrides = ["monitor.window.size=50", "monitor.window.min_samples=50", "monitor.alerts.consecutive=1",
                     "monitor.drift.enabled=false", f"monitor.resources.metrics_url={url}/metrics",
                     "monitor.resources.max_memory_growth_mb=100"]

        def monitor() -> dict[str, Any]:
            return jsonable(monitor_recipe(str(recipe), overrides, str(bundle), log=str(log)))

        traffic(url, rows[:50])
        first = monitor()
        held = bytearray(200_000_000)
        held[::4096] = b"\x01" * len(range(0, len(held), 4096))
        traffic(url, rows[50:])
        second = monitor()
        del held

    assert not [a for a in first["alerts"] if a["rule"] == "memory_growth"]  # the first scrape: nothing to compare
    fired = [a for a in second["alerts"] if a["rule"] == "memory_growth"]
    assert len(fired) == 1 and fired[0]["state"] == "fired"
    assert fired[0]["value"] > 150 and fired[0]["threshold"] == 100
    assert fired[0]["detail"]["url"] == f"{url}/metrics"


def test_system_metrics_of_a_fit_shorter_than_one_sample(tmp_path: Path) -> None:
    """MLflow's loop drops an unfinished interval: the callback still logs the fit's last sample. Rank 0 only."""
    from mlops.train.result import TrackingLink
    from mlops.train.system_metrics import SystemMetrics

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("sys")).info.run_id
    zero, other = SimpleNamespace(is_global_zero=True), SimpleNamespace(is_global_zero=False)

    SystemMetrics(TrackingLink(tracking_uri=uri, run_id=run_id), interval_s=30).on_train_start(other, None)
    callback = SystemMetrics(TrackingLink(tracking_uri=uri, run_id=run_id), interval_s=30)
    callback.on_train_start(zero, None)
    callback.on_train_end(zero, None)

    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) == 1 and 0 <= history[0].value <= 100
    assert "system/system_memory_usage_megabytes" in client.get_run(run_id).data.metrics
