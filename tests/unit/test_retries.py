"""Retries with backoff against a real local HTTP server: a receiver that fails twice gets the alert once,
after the backoff; a 4xx is never retried. The drift textfile and the /metrics scrape through
prometheus_client, and kubectl's transient failures told from its refusals."""

from __future__ import annotations

import http.server
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mlops.core.retry as retry
from mlops.deploy.kubectl import kubectl_apply, transient_kubectl
from mlops.monitor.alerts import post_webhook, write_drift_textfile
from mlops.monitor.operations import scrape_requests


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers the first `fail` requests with `status`, the rest 200; records every body it got."""

    fail = 0
    status = 503
    bodies: list[dict[str, Any]] = []
    times: list[float] = []
    text = ""

    def _answer(self, body: bytes = b"{}") -> None:
        cls = type(self)
        cls.times.append(time.monotonic())
        if len(cls.times) <= cls.fail:
            self.send_response(cls.status)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if len(type(self).times) >= type(self).fail:
            type(self).bodies.append(payload)
        self._answer()

    def do_GET(self) -> None:
        self._answer(type(self).text.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_Receiver]]]:
    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.05)
    handler = type("Handler", (_Receiver,), {"bodies": [], "times": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_a_webhook_that_fails_twice_is_delivered_once_after_backoff(
        receiver: tuple[str, type[_Receiver]], capsys: pytest.CaptureFixture[str]) -> None:
    url, handler = receiver
    handler.fail, handler.status = 2, 503
    assert post_webhook(f"{url}/hook", {"rule": "drift", "id": 7}, timeout=5) == {"status": 200}
    assert len(handler.times) == 3 and handler.bodies == [{"rule": "drift", "id": 7}]
    gaps = [b - a for a, b in zip(handler.times, handler.times[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # exponential: 0.05 then 0.1 s
    out = capsys.readouterr().out
    assert out.count("mlops: webhook") == 2 and "retry 1 of 3" in out and "retry 2 of 3" in out


def test_a_4xx_is_not_retried(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    handler.fail, handler.status = 5, 404
    out = post_webhook(f"{url}/wrong", {"rule": "drift"}, timeout=5)
    assert "404" in out["error"] and len(handler.times) == 1


def test_a_dead_receiver_is_given_up_after_the_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.01)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    started = time.monotonic()
    out = post_webhook(f"http://127.0.0.1:{port}/hook", {"rule": "drift"}, timeout=2)
    assert "refused" in out["error"].lower() and time.monotonic() - started < 5


def test_the_scrape_retries_a_503_and_parses_with_prometheus_client(receiver: tuple[str, type[_Receiver]]) -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    c = Counter("mlops_requests", "r", ["route", "model", "variant", "status"], registry=registry)
    c.labels("v1_predict", "m", "champion", "200").inc(12)
    c.labels("v2_infer", "m", "champion", "500").inc(3)
    c.labels("v1_predict", "other", "champion", "200").inc(99)
    c.labels("health", "m", "champion", "200").inc(40)
    url, handler = receiver
    handler.fail, handler.status, handler.text = 1, 503, generate_latest(registry).decode()
    assert scrape_requests(f"{url}/metrics", "m") == {"200": 12.0, "500": 3.0}
    assert len(handler.times) == 2


def test_the_drift_textfile_reads_back_with_the_same_series(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "deep" / "drift.prom"
    write_drift_textfile(path, 'we"ird', [{"column": "age", "drift": True, "score": 0.25, "method": "psi"},
                                          {"column": "income", "drift": False, "score": 0.01, "method": "ks"},
                                          {"column": "id", "drift": None, "score": None, "method": "none"}])
    text = path.read_text()
    assert "# TYPE mlops_drift_detected gauge" in text and "# TYPE mlops_drift_score gauge" in text
    series = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert series == {
        ("mlops_drift_detected", (("feature", "age"), ("model", 'we"ird'))): 1.0,
        ("mlops_drift_detected", (("feature", "income"), ("model", 'we"ird'))): 0.0,
        ("mlops_drift_score", (("feature", "age"), ("method", "psi"), ("model", 'we"ird'))): 0.25,
        ("mlops_drift_score", (("feature", "income"), ("method", "ks"), ("model", 'we"ird'))): 0.01,
    }
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it


def test_kubectl_transient_failures_are_retried_and_refusals_are_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A stand-in kubectl on PATH (no cluster here): it fails `apply` with the given message until its
    counter runs out."""
    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.01)
    calls = tmp_path / "calls"
    script = tmp_path / "bin" / "kubectl"
    script.parent.mkdir()
    script.write_text(f"""#!/bin/sh
case "$*" in *current-context*) echo test; exit 0;; esac
echo x >> {calls}
n=$(wc -l < {calls})
if [ "$n" -le "$FAILS" ]; then echo "$MESSAGE" >&2; exit 1; fi
echo "inferenceservice.serving.kserve.io/m configured"
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("kind: InferenceService\n")

    monkeypatch.setenv("FAILS", "2")
    monkeypatch.setenv("MESSAGE", "Error from server: etcdserver: request timed out")
    assert kubectl_apply(manifest, "ns").endswith("configured")
    assert len(calls.read_text().splitlines()) == 3 and capsys.readouterr().out.count("retry") == 2

    calls.unlink()
    monkeypatch.setenv("MESSAGE", 'Error from server (BadRequest): error when creating "m.yaml": strict decoding '
                                  'error: unknown field "spec.predictor.foo"')
    with pytest.raises(Exception, match="unknown field"):
        kubectl_apply(manifest, "ns")
    assert len(calls.read_text().splitlines()) == 1
    assert not transient_kubectl(ValueError("connection refused"))
