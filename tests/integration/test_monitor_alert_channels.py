"""Alerts leave the process: a webhook POST received by a real HTTP listener on loopback, and a Prefect event
that the Prefect API (the test harness's own server) stores and returns through its events API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlops.monitor.run import monitor_recipe
from tests.monitor_fixtures import QUICKSTART, build_breast_cancer_bundle, log_traffic, quickstart_split

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0


@pytest.fixture
def listener() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on a free loopback port that records every POSTed JSON body; its URL and the bodies."""
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                             "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/mlops", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_webhook_and_prefect_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   listener: tuple[str, list[dict[str, Any]]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
    from prefect.testing.utilities import prefect_test_harness

    url, received = listener
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    bundle = build_breast_cancer_bundle(tmp_path / "bundle")
    train = quickstart_split()["train"]
    log = tmp_path / "log.sqlite"
    rng = np.random.default_rng(7)
    frame = train.iloc[rng.integers(0, len(train), 2000)].reset_index(drop=True)
    frame["mean_radius"] += 0.5 * train["mean_radius"].std()
    log_traffic(log, bundle, frame, T0 + np.arange(2000.0))
    overrides = ["monitor.drift.features={mean_radius: {key: true}}", "monitor.report.evidently=false",
                 f"monitor.alerts.webhook={url}"]
    started = time.time()

    with prefect_test_harness(server_startup_timeout=180):
        fired = monitor_recipe(str(QUICKSTART), overrides, str(bundle), log=str(log))  # prefect: auto
        clean = train.iloc[rng.integers(0, len(train), 1000)].reset_index(drop=True)
        log_traffic(log, bundle, clean, T0 + 2000 + np.arange(1000.0))
        resolved = monitor_recipe(str(QUICKSTART), overrides, str(bundle), log=str(log))
        events = _events(get_client(sync_client=True), EventFilter(
            event=EventNameFilter(prefix=["mlops."]),
            occurred=EventOccurredFilter(since=datetime.fromtimestamp(started - 60, UTC))),
            want=2)

    assert [(a.rule, a.state) for a in fired.alerts] == [("drift", "fired")]
    assert [(a.rule, a.state) for a in resolved.alerts] == [("drift", "resolved")]
    delivery = fired.alerts[0].delivery
    assert delivery is not None and delivery["webhook"] == {"status": 204} and "event_id" in delivery["prefect"]

    assert [r["path"] for r in received] == ["/hooks/mlops"] * 2
    hook = received[0]["body"]
    assert received[0]["content_type"] == "application/json"
    assert hook["event"] == "mlops.alert.drift" and hook["state"] == "fired" and hook["model"] == "quickstart"
    assert hook["id"] == fired.alerts[0].id  # the alert as recorded, with its id in the store
    assert hook["window"]["index"] == 1 and hook["window"]["rows"] == 1000
    assert hook["value"] == pytest.approx(1 / 30) and hook["threshold"] == 0.5
    assert hook["detail"]["drifted"][0]["column"] == "mean_radius" and hook["detail"]["drifted"][0]["method"] == "psi"
    assert received[1]["body"]["event"] == "mlops.resolved.drift"

    by_name = {e.event: e for e in events}
    assert set(by_name) == {"mlops.alert.drift", "mlops.resolved.drift"}
    event = by_name["mlops.alert.drift"]
    assert str(event.id) == delivery["prefect"]["event_id"]
    assert event.resource.id == "mlops.model.quickstart"
    assert event.resource["mlops.model.version"] == "unregistered"  # a bundle directory has no registry version
    assert event.payload["window"]["start_iso"] == hook["window"]["start_iso"]
    assert event.payload["value"] == pytest.approx(1 / 30) and event.payload["threshold"] == 0.5


def _events(client: Any, flt: Any, want: int, timeout: float = 90.0) -> list[Any]:
    """The API stores events asynchronously: poll until `want` of them are readable."""
    deadline = time.monotonic() + timeout
    with client:
        while True:
            events = client.read_events(filter=flt, limit=50).events
            if len(events) >= want or time.monotonic() > deadline:
                return events
            time.sleep(1.0)
