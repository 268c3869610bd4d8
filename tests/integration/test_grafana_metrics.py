"""Every series the Grafana dashboard's panels query is one that a live `mlops serve` or the monitor's drift
textfile exports: a real server (champion, a shadow, an A/B challenger, adaptive batching, an unseen category)
answers traffic, its /metrics and the textfile `mlops monitor` writes (its own writer) are parsed with
prometheus_client's parser, and each panel query's series (its structured record, and the names read back from the
rendered JSON's PromQL) must be there. Then a real Prometheus scrapes both, and every panel's query, with Grafana's
variables expanded, answers with at least one series.

The one allowed absence: the GPU series, which only a machine with a GPU exports. The Prometheus half needs
Debian's `prometheus` package (`make system-deps`): skipped without it, except in CI."""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlops.deploy.grafana import dashboard_json, panel_exprs, queries
from mlops.monitor.alerts import write_drift_textfile
from mlops.recipe.deploy import DeployConfig
from mlops.recipe.monitor import MonitorConfig
from tests.net import LiveServer, free_port, serve_bundle, stop_process
from tests.serve_fixtures import build_bundle
from tests.unit.test_grafana import promql_metric_names

pytestmark = pytest.mark.integration

MODEL = "toy"
DATA = {"categories": {"unseen": "impute"}}  # an unseen city is answered and counted, not refused
ROW = {"age": 41.0, "income": 50.0, "city": "a"}
# only a machine with a GPU exports these (mlops/serve/gpu.py); nothing else may be missing
GPU_ONLY = {"mlops_gpu_utilization_ratio", "mlops_gpu_memory_used_bytes", "mlops_gpu_memory_total_bytes"}
PROMETHEUS = shutil.which("prometheus")
DEPLOY, MONITOR = DeployConfig(), MonitorConfig()


def call(port: int, body: Any, key: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/v1/models/{MODEL}:predict", body=json.dumps(body).encode(),
                     headers={"content-type": "application/json", "X-Request-Key": key})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Each exported series name (as PromQL names it: _total, _bucket...) and its label sets."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.labels)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("grafana")
    champion, shadow, challenger = (build_bundle(tmp / name, name=MODEL, weights_seed=seed, data=DATA)
                                    for name, seed in (("champion", 1), ("shadow", 2), ("challenger", 3)))
    yield from serve_bundle(champion, tmp, args=("--shadow", str(shadow), "--ab", f"{challenger}:50",
                                                 "--batch-max", "8"))


@pytest.fixture(scope="module")
def traffic(server: LiveServer) -> dict[str, Any]:
    """Requests on both A/B arms (by key), concurrent ones to batch, an unseen category and a refused one; waits
    for the shadow to have compared rows. Returns the answers' variants."""
    variants: set[str] = set()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: call(server.port, {"instances": [ROW] * (1 + i % 3)}, f"key-{i}"),
                                range(40)))
    for status, headers in answers:
        assert status == 200
        variants.add(headers["x-model-variant"])
    assert call(server.port, {"instances": [ROW | {"city": "never-seen"}]}, "key-unseen")[0] == 200
    assert call(server.port, {"instances": []}, "key-empty")[0] == 400
    deadline = time.monotonic() + 30
    while not any(s.value > 0 for f in text_string_to_metric_families(scrape(server.port)) for s in f.samples
                  if s.name == "mlops_shadow_rows_total"):
        assert time.monotonic() < deadline, f"the shadow compared no rows within 30 s\n{server.tail()}"
        time.sleep(0.2)
    return {"variants": variants}


@pytest.fixture(scope="module")
def drift_textfile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The textfile `mlops monitor` writes (monitor.alerts.prometheus_textfile), by its own writer, with columns
    shaped as a judged window's drift summary holds them."""
    path = tmp_path_factory.mktemp("textfile") / "mlops_drift.prom"
    write_drift_textfile(path, MODEL, [
        {"column": "age", "drift": True, "score": 0.31, "method": "psi"},
        {"column": "city", "drift": False, "score": 0.02, "method": "jensenshannon"},
        {"column": "prediction", "drift": False, "score": 0.01, "method": "psi"}])
    return path


@pytest.mark.timeout(300)
def test_every_panel_series_is_exported(server: LiveServer, traffic: dict[str, Any], drift_textfile: Path) -> None:
    exported = samples(scrape(server.port)) | samples(drift_textfile.read_text())
    records = queries(DEPLOY, MONITOR)
    rendered = panel_exprs(dashboard_json(DEPLOY, MONITOR, MODEL))
    wanted = {m for q in records for m in q.metrics} | {m for _, e in rendered for m in promql_metric_names(e)}

    assert traffic["variants"] == {"champion", "challenger"}  # both A/B arms answered
    missing = sorted(wanted - set(exported) - GPU_ONLY)
    assert not missing, f"panels query series nobody exports: {missing}\nexported: {sorted(exported)}"
    for name in wanted & set(exported):  # the panels select by model: the series carry ours
        if any("model" in labels for labels in exported[name]):
            assert any(labels.get("model") == MODEL for labels in exported[name]), name
    for name in GPU_ONLY & set(exported):  # a GPU machine: its series are labelled as the panels expect
        assert all("gpu" in labels for labels in exported[name]), name


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def prometheus(server: LiveServer, drift_textfile: Path, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the server and, as node_exporter's textfile collector would serve it, the drift
    textfile (a plain HTTP file server here), every second; its base URL."""
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed, and CI=true (make system-deps installs Debian's prometheus)")
        pytest.skip("prometheus is not installed (make system-deps): the panels' queries are not run")
    handler = functools.partial(QuietFiles, directory=str(drift_textfile.parent))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: mlops\n    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
        f"  - job_name: node\n    metrics_path: /{drift_textfile.name}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{files.server_address[1]}']\n")
    port = free_port()
    output = tmp_path / "prometheus.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        files.shutdown()


def instant(base: str, promql: str) -> list[dict[str, Any]] | None:
    """The query's result, or None while Prometheus is not answering yet."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return None
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


@pytest.mark.timeout(300)
def test_every_panel_query_answers_in_prometheus(server: LiveServer, traffic: dict[str, Any], prometheus: str) -> None:
    """Grafana's variables expanded ($model: ours; $__rate_interval: a window of several scrapes), each query must
    return series: the joins on mlops_model_info, the label names and the routes all match what is exported."""
    exported = set(samples(scrape(server.port)))
    pending = {expr: title for title, expr in panel_exprs(dashboard_json(DEPLOY, MONITOR, MODEL))
               if not promql_metric_names(expr) & (GPU_ONLY - exported)}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for expr in list(pending):
            if instant(prometheus, expr.replace("$model", MODEL).replace("$__rate_interval", "30s")):
                del pending[expr]
        time.sleep(0.5)

    assert not pending, f"queries with no series after 60 s: {sorted(pending.values())}"
    up = instant(prometheus, "up")
    assert up is not None and {r["metric"]["job"]: r["value"][1] for r in up} == {"mlops": "1", "node": "1"}
