"""`mlops monitor` over what a real `mlops serve` server logged: requests go over HTTP to the server (its
Starlette app under uvicorn on a loopback port, in this process), which writes the prediction log itself.

- latency: the second server's model is made slow by an INJECTED delay (150 ms of sleep wrapped around its
  Predictor.predict, inside the real request path), so the log's latency_ms values are what that server
  measured; the SLA rule fires on the second slow window;
- a new category sent to the server is caught by the schema checks and by drift, against a production
  reference window (the first minutes of traffic);
- the error rate comes from scraping the server's Prometheus /metrics (4xx counted on request).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlops.cli.output import jsonable
from mlops.monitor.run import monitor_recipe
from tests.net import free_port
from tests.serve_fixtures import build_bundle, training_frame

pytestmark = pytest.mark.integration


@contextmanager
def serving(bundle: Path, log: Path, delay_s: float = 0.0) -> Iterator[str]:
    """The server `mlops serve BUNDLE --log LOG` builds, on a free port; `delay_s` is slept inside every model
    call. Yields its base URL; stopped (log drained and closed) on exit."""
    import uvicorn

    from mlops.serve.run import ServeOptions, build_server

    server = build_server(ServeOptions(model=str(bundle), log=str(log)))
    if delay_s:
        predict = server.predictor.predict

        def slow(feeds: Any) -> Any:
            time.sleep(delay_s)
            return predict(feeds)

        server.predictor.predict = slow  # type: ignore[method-assign]
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


def predict(url: str, row: dict[str, Any]) -> int:
    body = json.dumps({"instances": [row]}).encode()
    request = urllib.request.Request(f"{url}/v1/models/toy:predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    frame = training_frame(n, seed=seed).drop(columns="y")
    return [{"age": float(r["age"]), "income": float(r["income"]), "city": str(r["city"])}
            for r in frame.to_dict("records")]


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The toy bundle, a recipe over the frame it was trained on (CSV), and a home of its own."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    training_frame().to_csv(tmp_path / "toy.csv", index=False)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("name: toy\ndata:\n  path: toy.csv\n  target: y\nmonitor:\n  report:\n    evidently: false\n")
    return {"bundle": build_bundle(tmp_path / "bundle"), "recipe": recipe, "log": tmp_path / "log.sqlite"}


def monitor(toy: dict[str, Path], *overrides: str) -> dict[str, Any]:
    """The run's result as `mlops monitor --json` prints it."""
    return jsonable(monitor_recipe(str(toy["recipe"]), list(overrides), str(toy["bundle"]), log=str(toy["log"])))


def test_latency_sla_alert_from_a_slowed_server(toy: dict[str, Path]) -> None:
    with serving(toy["bundle"], toy["log"]) as url:
        assert all(predict(url, r) == 200 for r in rows(20, seed=5))
    with serving(toy["bundle"], toy["log"], delay_s=0.15) as url:
        assert all(predict(url, r) == 200 for r in rows(40, seed=6))

    result = monitor(toy, "monitor.window.size=20", "monitor.window.min_samples=20", "monitor.latency.sla_ms=100",
                     "monitor.drift.enabled=false")

    latency = [w["latency_ms"] for w in result["windows"]]
    assert len(latency) == 3
    assert latency[0]["p99"] < 100 and latency[1]["p50"] >= 150 and latency[2]["p50"] >= 150
    assert [w["breaches"] for w in result["windows"]] == [[], ["latency"], ["latency"]]
    fired = [a for a in result["alerts"] if a["rule"] == "latency"]
    assert [(a["state"], a["window"]["index"], a["threshold"]) for a in fired] == [("fired", 2, 100.0)]
    assert fired[0]["event"] == "mlops.alert.latency" and fired[0]["value"] >= 150


def test_new_category_against_a_production_reference(toy: dict[str, Path]) -> None:
    with serving(toy["bundle"], toy["log"]) as url:
        start = time.time()
        assert all(predict(url, r) == 200 for r in rows(60, seed=7))
        end = time.time()
        time.sleep(0.05)
        assert all(predict(url, r) == 200 for r in rows(60, seed=8))
        unseen = rows(60, seed=9)
        for r in unseen[::3]:
            r["city"] = "zurich"  # the model never saw it: the server still answers (the graph encodes it as none)
        assert all(predict(url, r) == 200 for r in unseen)

    result = monitor(toy, "monitor.reference.source=production", f"monitor.reference.start={start - 0.001}",
                     f"monitor.reference.end={end + 0.001}", "monitor.window.size=60",
                     "monitor.window.min_samples=60", "monitor.alerts.consecutive=1",
                     "monitor.drift.features={city: {key: true}}",
                     # 200 training rows: fresh rows of the same distribution fall past their extremes now and
                     # then; a wide margin keeps this test about categories
                     "monitor.schema_checks.range_margin=0.5")

    assert result["reference"]["source"] == "production" and result["reference"]["rows"] == 60
    windows = result["windows"]
    assert len(windows) == 3 and windows[0]["drifted_features"] == []  # the reference window against itself
    assert "city" in windows[2]["drifted_features"] and "city" not in windows[1]["drifted_features"]
    assert windows[2]["schema_violation_rate"] == pytest.approx(20 / 60)
    fired = {a["rule"]: a for a in result["alerts"] if a["state"] == "fired"}
    assert {"schema", "drift"} <= set(fired) and fired["schema"]["window"]["index"] == 2
    problem = fired["schema"]["detail"]["problems"][0]
    assert problem == {"column": "city", "problem": "new_category", "rows": 20, "rate": pytest.approx(1 / 3),
                       "examples": ["zurich"]}


def test_error_rate_from_the_servers_metrics(toy: dict[str, Path]) -> None:
    overrides = ["monitor.window.size=50", "monitor.window.min_samples=50", "monitor.alerts.consecutive=1",
                 "monitor.error_rate.count_4xx=true", "monitor.error_rate.min_requests=50", "monitor.drift.enabled=false"]
    with serving(toy["bundle"], toy["log"]) as url:
        good = rows(110, seed=10)
        statuses = [predict(url, r) for r in good[:60]]
        statuses += [predict(url, {**r, "colour": "red"}) for r in good[60:100]]  # unknown column: 400
        assert statuses.count(200) == 60 and statuses.count(400) == 40
        first = monitor(toy, *overrides, f"monitor.error_rate.metrics_url={url}/metrics")
        statuses = [predict(url, r) for r in rows(50, seed=11)]
        second = monitor(toy, *overrides, f"monitor.error_rate.metrics_url={url}/metrics")

    assert len(first["windows"]) == 1 and first["pending_rows"] == 10
    fired = [a for a in first["alerts"] if a["rule"] == "error_rate"]
    assert len(fired) == 1 and fired[0]["value"] == pytest.approx(40 / 100)
    assert fired[0]["detail"]["by_status"] == {"200": 60.0, "400": 40.0}
    assert fired[0]["threshold"] == pytest.approx(0.02)
    # the next run counts only requests since the first: 50 good ones
    assert [(a["rule"], a["state"]) for a in second["alerts"]] == [("error_rate", "resolved")]
    assert second["alerts"][0]["value"] == 0.0
