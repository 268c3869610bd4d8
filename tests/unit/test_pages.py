"""The HTML pages as one family (`mlops.core.pages`): the evaluation report, the monitor dashboard, the backtest
page and the error analysis all inline the one stylesheet, escape what users and traffic put in them, and stay
fast on a long history."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlops.core.pages import fmt, render_page, stylesheet
from mlops.evaluate.report import write_report
from mlops.improve.error_analysis import write_report as write_errors
from mlops.monitor.dashboard import render_dashboard, write_dashboard
from mlops.monitor.run import _write_backtest

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
T0 = 1_767_225_600.0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def windows(n: int, name: str = "radius", value: str = "a") -> list[dict[str, Any]]:
    """`n` judged window summaries as the monitor records them: two features, one drifting from the middle
    on, ground truth joined, a schema problem; `name` and `value` are a feature's name and a category value."""
    out = []
    for i in range(n):
        start, end = T0 + 600 * i, T0 + 600 * (i + 1)
        drifted = i >= n // 2
        cols = [{"column": name, "kind": "numeric", "method": "psi", "threshold": 0.1,
                 "score": 0.3 if drifted else 0.02, "drift": drifted},
                {"column": "texture", "kind": "numeric", "method": "ks", "threshold": 0.05, "score": 0.4,
                 "drift": False}]
        out.append({
            "index": i, "start_ts": start, "end_ts": end, "start_iso": _iso(start), "end_iso": _iso(end),
            "start_rowid": 1000 * i, "end_rowid": 1000 * i + 999, "rows": 1000, "judged": True, "versions": ["1"],
            "drift": {"columns": cols, "predictions": [],
                      "dataset": {"columns": 2, "drifted": int(drifted), "share": 0.5 * drifted, "threshold": 0.5,
                                  "drift": drifted, "drifted_columns": [name] if drifted else []}},
            "schema": {"violation_rate": 0.002, "problems": [{"column": "city", "problem": "unknown_category",
                                                              "rows": 2, "rate": 0.002, "examples": [value]}]},
            "quality": {"labelled": 500, "metrics": {"accuracy": 0.9 - 0.2 * drifted},
                        "confusion": {"labels": ["0", value], "matrix": [[200, 20], [30, 250]]},
                        "error_rate_by_class": {"0": 0.09, value: 0.11},
                        "errors_by_slice": {"city": {value: {"rows": 100, "error_rate": 0.2}}}},
            "operations": {"rows": 1000, "requests": 400, "latency_ms": {"p50": 2.0, "p95": 5.0, "p99": 9.0 + i % 3},
                           "rows_per_s": 1.7, "requests_per_s": 0.7},
            "distributions": {"label_shares": {"0": 0.45, value: 0.55}, "confidence": {"mean": 0.8}},
            "rules": [{"rule": "drift", "value": 0.5 * drifted, "threshold": 0.5, "breach": drifted,
                       "reason": f"{name} drifted" if drifted else "", "detail": {}}],
        })
    return out


def alerts(ws: list[dict[str, Any]]) -> list[dict[str, Any]]:
    w = ws[len(ws) // 2 + 1]
    return [{"rule": "drift", "state": "fired", "event": "mlops.alert.drift", "value": 0.5, "threshold": 0.5,
             "reason": "drifted", "window": {"index": w["index"], "start": w["start_ts"], "end": w["end_ts"],
                                             "start_iso": w["start_iso"], "end_iso": w["end_iso"], "rows": 1000}}]


def dashboard_context(model: str, al: list[dict[str, Any]]) -> dict[str, Any]:
    return {"generated": "2026-01-02T00:00:00Z", "model": model, "version": "3", "bundle": "/b", "log": "/log",
            "reference": "training split", "window": "every 1000 rows", "max_drop": 0.05, "sla_ms": 50.0,
            "baseline": {"metric": "accuracy", "value": 0.93, "direction": "higher"}, "alerts": al}


def analysis(model: str, value: str) -> dict[str, Any]:
    """What `analyse_errors` returns, for a classifier."""
    rate = {"rows": 100, "errors": 31, "error_rate": 0.31, "ci": [0.23, 0.41]}
    return {"model": model, "log": "/log", "since": None, "version": None, "task": "classification",
            "tolerance": None, "overall": {"rows": 300, "errors": 45, "error_rate": 0.15, "ci": [0.11, 0.19]},
            "slices": [rate | {"column": "city", "slice": value, "above_overall": True}], "all_slices": 1,
            "clusters": [rate | {"rule": f"city = {value}"}],
            "confident_mistakes": [{"id": "r1", "predicted": value, "truth": "no", "confidence": 0.93,
                                    "version": "1", "variant": "champion", "inputs": {"city": value}}],
            "min_rows": 10, "alpha": 0.05}


def evaluation(model: str, value: str) -> dict[str, Any]:
    return {"model": {"name": model, "version": "1", "task": "binary", "labels": ["0", value]},
            "outcome": "failed", "metrics": {"test/accuracy": 0.91},
            "gates": [{"metric": "test/accuracy", "kind": "absolute", "slice": f"city={value}",
                       "threshold": ">= 0.95", "value": 0.91, "status": "failed", "detail": "too low"}],
            "slices": [{"column": "city", "slice": value, "count": 40, "metrics": {"accuracy": 0.8}}],
            "fairness": {"city": {"positive_label": value, "groups": [{"group": value, "count": 40}]}}}


def every_page(tmp_path: Path, model: str = "churn", value: str = "a") -> dict[str, str]:
    """Each page as its writer writes it, for a model called `model` whose traffic holds category `value`."""
    ws = windows(12, value=value)
    al = alerts(ws)
    ctx = dashboard_context(model, al)
    result = {"model": model, "notes": [f"no rows of {value}"], "alerts": al,
              "first_fired": {"drift": {"window": 7, "start": ws[7]["start_iso"], "end": ws[7]["end_iso"],
                                        "value": 0.5, "threshold": 0.5}}}
    _, backtest = _write_backtest(tmp_path / "monitor", result, ws, ctx)
    paths = {"evaluation": write_report(evaluation(model, value), tmp_path / "eval")["html"],
             "dashboard": str(write_dashboard(tmp_path / "dashboard.html", ctx, ws, al)),
             "backtest": backtest,
             "errors": write_errors(analysis(model, value), tmp_path / "errors")["html"]}
    return {name: Path(path).read_text() for name, path in paths.items()}


def test_every_page_inlines_the_one_stylesheet(tmp_path: Path) -> None:
    pages = every_page(tmp_path)
    css = stylesheet()
    assert ".badge" in css and "td.num" in css and ".breach" in css and ".bar" in css  # each page's classes
    for name, html in pages.items():
        assert html.startswith("<!DOCTYPE html>"), name
        assert re.findall(r"<style>\s*(.*?)\s*</style>", html, re.S) == [css], name
        assert html.count("<style") == 1 and not re.search(r"<link\b|<script\b|https?://(?!www\.w3\.org/2000/svg)",
                                                            html), name


def test_user_strings_are_escaped_on_every_page(tmp_path: Path) -> None:
    """A model name and a category value seen in traffic are shown as text on every page, never run."""
    pages = every_page(tmp_path, model=f"churn{EVIL}", value=f"north{EVIL}")
    for name, html in pages.items():
        assert "<script" not in html, name
        assert f"churn{ESCAPED}" in html, f"{name}: the model name is not shown"
        assert f"north{ESCAPED}" in html, f"{name}: the category value is not shown"


def test_backtest_page_is_written_beside_its_json_and_named_there(tmp_path: Path) -> None:
    ws = windows(6)
    al = alerts(ws)
    result = {"model": "churn", "notes": [], "alerts": al, "first_fired": {}}
    json_path, html_path = map(Path, _write_backtest(tmp_path, result, ws, dashboard_context("churn", al)))
    assert json_path.parent == html_path.parent == tmp_path
    assert json_path.suffix == ".json" and html_path.suffix == ".html" and json_path.stem == html_path.stem
    record = json.loads(json_path.read_text())
    assert record["report"] == str(json_path) and record["report_html"] == str(html_path)
    assert len(record["summaries"]) == 6
    html = html_path.read_text()
    assert 'id="no-first-fired"' in html and 'id="heatmap-drift"' in html and 'id="windows"' in html
    assert str(json_path) in html
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([json_path.name, html_path.name])  # no temporaries


def test_dashboard_of_500_windows_renders_in_bounded_time() -> None:
    ws = windows(500)
    al = alerts(ws)
    ctx = dashboard_context("churn", al)
    render_dashboard(ctx, ws, al)  # templates compiled once per process
    start = time.perf_counter()
    html = render_dashboard(ctx, ws, al)
    # a guard against rendering that grows with the windows' square (seconds), not a speed figure: about 0.3 s
    # quiet, 1.4 s seen on a loaded CI machine
    assert time.perf_counter() - start < 10.0
    assert html.count('<rect class="cell') == 2 * 120  # the heatmap keeps the latest 120 windows


@pytest.mark.parametrize(("value", "missing", "text"), [
    (None, "n/a", "n/a"), (None, "-", "-"), (float("nan"), "-", "-"), (float("inf"), "n/a", "n/a"),
    (True, "-", "yes"), (False, "-", "no"), (np.int64(7), "-", "7"), (np.float32(0.123456), "-", "0.1235"),
    (1234567.0, "-", "1.235e+06"), (3, "-", "3"), ("<b>", "-", "<b>"),
])
def test_one_number_format(value: Any, missing: str, text: str) -> None:
    assert fmt(value, missing) == text


def test_a_value_the_template_needs_must_be_passed() -> None:
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render_page("errors.html.j2", model="m")


def test_latency_and_rate_axes_start_at_zero() -> None:
    from mlops.monitor.dashboard import _latency_chart, _schema_chart, _throughput_chart

    ws = windows(6)
    for w in ws:  # steady latencies: the padded range used to reach below zero (p50 0.2 ms, range 0.2-0.4)
        w["operations"] = {"latency_ms": {"p50": 0.2, "p95": 0.3, "p99": 0.4}, "rows_per_s": 5.0,
                           "requests_per_s": 5.0}
    for chart in (_latency_chart(ws, {}), _throughput_chart(ws), _schema_chart(ws)):
        ticks = [t["value"] for t in chart["y_ticks"]]
        assert ticks[0] == 0.0 and ticks[-1] > 0, (chart["id"], ticks)
