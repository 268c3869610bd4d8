"""A real Prometheus scrapes a real `mlops serve`: the target is up, and what PromQL says about requests by
route and status, latency buckets (down to 0.1 ms) and predicted classes is what the test sent. The raw
/metrics text passes `promtool check metrics`.

Needs Debian's `prometheus` package (`make system-deps` installs it): skipped without it, except in CI."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.net import free_port, stop_process, wait_ready
from tests.polling import until
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
if PROMETHEUS is None:
    if os.environ.get("CI") == "true":
        pytest.fail("prometheus is not installed, and CI=true: the Prometheus scrape test must run in CI "
                    "(make system-deps installs Debian's prometheus package)", pytrace=False)
    pytest.skip("prometheus is not installed (make system-deps, or apt-get install --no-install-recommends "
                "prometheus): the real-Prometheus scrape is not checked", allow_module_level=True)

MODEL = "toy"
JOB = "mlops"
START_TIMEOUT = 90
ROW = {"age": 41.0, "income": 50.0, "city": "a"}
V2_OK = {"inputs": [{"name": "age", "shape": [2], "datatype": "FP32", "data": [41.0, None]},
                    {"name": "income", "shape": [2], "datatype": "FP32", "data": [50.0, 20.0]},
                    {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
# (method, path, body, expected status, route label, rows predicted)
REQUESTS: list[tuple[str, str, Any, int, str, int]] = [
    *[("POST", f"/v1/models/{MODEL}:predict", {"instances": [ROW] * n}, 200, "v1_predict", n) for n in (1, 2, 3, 1)],
    *[("POST", f"/v2/models/{MODEL}/infer", V2_OK, 200, "v2_infer", 2)] * 2,
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": []}, 400, "v1_predict", 0),
    ("POST", f"/v1/models/{MODEL}:predict", b"{not json", 400, "v1_predict", 0),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [ROW | {"zip": 1}]}, 400, "v1_predict", 0),
    ("POST", "/v1/models/other:predict", {"instances": [ROW]}, 404, "v1_predict", 0),
    ("POST", f"/v2/models/{MODEL}/infer", {"outputs": []}, 400, "v2_infer", 0),
    ("POST", f"/v1/models/{MODEL}:predict", {"instances": [ROW], "id": "x"}, 200, "v1_predict", 1),
    ("POST", "/v1/feedback", {"id": "x", "label": "yes"}, 200, "feedback", 0),
    ("POST", "/v1/feedback", {"label": "yes"}, 400, "feedback", 0),
    ("GET", f"/v2/models/{MODEL}/ready", None, 200, "ready", 0),
]


def call(port: int, method: str, path: str, body: Any = None, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no output)"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """`mlops serve BUNDLE` on a free port; its port. Killed however the test ends."""
    bundle = build_bundle(tmp_path / "bundle", name=MODEL)
    port = free_port()
    output = tmp_path / "server.out"
    env = os.environ | {"MLOPS_HOME": str(tmp_path / ".mlops"), "PYTHONUNBUFFERED": "1"}
    with open(output, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port", str(port),
                                 "--log", str(tmp_path / "predictions.sqlite")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc, START_TIMEOUT, lambda: tail(output), interval=0.25)
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Starts a real Prometheus scraping 127.0.0.1:PORT/metrics every second; returns its base URL.
    Its own free port and a TSDB in tmp: never the system's :9090 or /var/lib/prometheus."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        port = free_port()
        output = tmp_path / "prometheus.out"
        assert PROMETHEUS is not None
        with open(output, "wb") as out:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc)


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, promql: str) -> dict[tuple[str, ...], float]:
    """An instant vector as {label values in label-name order (no __name__): value}."""
    data = api(base, "/api/v1/query", query=promql)
    assert data["resultType"] == "vector", data
    return {tuple(v for k, v in sorted(r["metric"].items()) if k != "__name__"): float(r["value"][1])
            for r in data["result"]}


@pytest.mark.timeout(180)
def test_prometheus_scrapes_what_was_sent(server: int, prometheus: Callable[[int], str], tmp_path: Path) -> None:
    expected: dict[tuple[str, str], float] = {}
    rows = 0
    for method, path, body, status, route, n in REQUESTS:
        got, raw = call(server, method, path, body)
        assert got == status, (method, path, got, raw[:300])
        expected[(route, str(status))] = expected.get((route, str(status)), 0) + 1
        rows += n
    per_route: dict[str, float] = {}
    for (route, _), n in expected.items():
        per_route[route] = per_route.get(route, 0) + n

    # what the server exposes now (scrapes of /metrics are not requests it counts: it stays put)
    status, raw = call(server, "GET", "/metrics")
    assert status == 200
    text = raw.decode()
    buckets: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlops_request_latency_seconds_bucket":
                buckets[(sample.labels["route"], sample.labels["le"])] = sample.value
    assert {r for r, le in buckets if le == "0.0001"} == set(per_route)

    if PROMTOOL is not None:
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0, f"promtool check metrics: exit {lint.returncode}\n{lint.stdout}\n{lint.stderr}"

    base = prometheus(server)
    log = tmp_path / "prometheus.out"

    def target_up() -> dict[str, Any] | None:
        targets = api(base, "/api/v1/targets")["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == JOB]
        return ours[0] if ours and ours[0]["health"] == "up" else None

    target = until(target_up, "the scrape target to be up", 60, interval=0.25, diagnose=lambda: tail(log),
                   ignore=(OSError,))
    assert target["scrapeUrl"] == f"http://127.0.0.1:{server}/metrics", target
    selector = f'job="{JOB}"'
    requests = until(lambda: query(base, f"sum by (route, status) (mlops_requests_total{{{selector}}})"),
                     "the request counter in Prometheus", 30, interval=0.25, diagnose=lambda: tail(log),
                     ignore=(OSError,))

    assert requests == expected  # by (route, status): labels sort as route, status
    assert query(base, f"up{{{selector}}}") == {(f"127.0.0.1:{server}", JOB): 1.0}
    low = query(base, f'sum by (route) (mlops_request_latency_seconds_bucket{{{selector},le="0.0001"}})')
    assert low == {(route,): buckets[(route, "0.0001")] for route in per_route}
    assert all(0 <= v <= per_route[r] for (r,), v in low.items())
    inf = query(base, f'sum by (route) (mlops_request_latency_seconds_bucket{{{selector},le="+Inf"}})')
    assert inf == {(route,): n for route, n in per_route.items()}
    count = query(base, f"sum by (route) (mlops_request_latency_seconds_count{{{selector}}})")
    assert count == inf
    classes = query(base, f"sum(mlops_predicted_class_total{{{selector}}})")
    assert classes == {(): float(rows)}
