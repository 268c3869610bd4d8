"""The load test's pieces without a server: its config and gateable names, the summary of Locust's samples
(warm-up left out, seconds bucketed, failures counted), bounds, requests built from rows, the report section,
and that the mlops process never imports Locust (it patches the standard library with gevent)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlops.core.errors import MlopsError
from mlops.evaluate.loadtest import (
    LoadTestResult,
    Settings,
    check_bounds,
    request_bodies,
    run_load_test,
    schema_rows,
    summarise,
)
from mlops.evaluate.report import write_report
from mlops.recipe import load_recipe
from mlops.recipe.checks import gate_problems, gateable_metrics
from mlops.recipe.schema import LoadTestConfig
from tests.serve_fixtures import build_bundle, training_frame

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def test_config_defaults_to_off_and_refuses_nonsense() -> None:
    cfg = LoadTestConfig()
    assert not cfg.enabled and cfg.users >= 1 and cfg.duration_s > 0
    for bad in ({"duration_s": 0}, {"users": 0}, {"warmup_s": -1}, {"rps": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            LoadTestConfig.model_validate(bad)


def test_quickstart_gates_the_load_test_and_its_metrics_need_it_on() -> None:
    loaded = load_recipe(QUICKSTART)
    ev = loaded.recipe.evaluate
    assert ev.load_test.enabled
    gated = {g.metric for g in ev.gates}
    assert {"load/p99_ms", "load/error_rate"} <= gated
    names = gateable_metrics(loaded.recipe)
    assert names["load/rps"] == "higher" and names["load/p99_ms"] == "lower" and names["load/error_rate"] == "lower"
    off = load_recipe(QUICKSTART, ["evaluate.load_test.enabled=false"]).recipe
    problems = gate_problems(off)
    assert {p.key for p in problems} == {"evaluate.gates.4.metric", "evaluate.gates.5.metric"}
    assert all("load/ metrics need evaluate.load_test.enabled: true" in p.message for p in problems)


def _samples() -> list[list[object]]:
    start = 1000.0
    warmup = [[start - 0.5, 900.0, None]]  # a slow warm-up request: not counted
    first = [[start + 0.1 * i, float(i + 1), None] for i in range(10)]  # 1..10 ms in the first second
    second = [[start + 1.05, 50.0, "HTTP 503"], [start + 1.5, 5.0, None]]
    late = [[start + 2.5, 1.0, None]]  # after the window
    return warmup + first + second + late


def test_summary_leaves_out_the_warm_up_and_buckets_seconds() -> None:
    out = summarise(_samples(), 1000.0, 1002.0)
    assert out["requests"] == 12 and out["failures"] == 1
    assert out["rps"] == pytest.approx(6.0)
    assert out["error_rate"] == pytest.approx(1 / 12)
    assert out["errors"] == {"HTTP 503": 1}
    assert out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"] < 900  # the warm-up's 900 ms is not in them
    assert [p.requests for p in out["series"]] == [10, 2]
    assert [p.failures for p in out["series"]] == [0, 1]
    assert out["series"][0].p50_ms == pytest.approx(5.5)


def test_nothing_answered_is_all_failures_never_a_pass() -> None:
    out = summarise([], 0.0, 2.0)
    assert out["requests"] == 0 and out["error_rate"] == 1.0 and out["p99_ms"] is None


def _result(**kw: object) -> LoadTestResult:
    base = {"target": "http://127.0.0.1:1/v1/models/m:predict", "users": 2, "rps_target": None, "warmup_s": 1.0,
            "peak_memory_mb": 80.0} | summarise(_samples(), 1000.0, 1002.0)
    return LoadTestResult.model_validate(base | kw)


def test_metrics_and_bounds() -> None:
    result = _result()
    metrics = result.metrics()
    assert set(metrics) == {f"load/{k}" for k in ("rps", "p50_ms", "p95_ms", "p99_ms", "error_rate",
                                                  "peak_memory_mb")}
    assert check_bounds(result, {"load/rps": (1.0, None), "load/error_rate": (None, 0.5)}) == []
    [line] = check_bounds(result, {"load/error_rate": (None, 0.0)})
    assert "load/error_rate" in line and "above its maximum 0" in line
    # a live server's memory is not measured: a bound on it fails rather than passing silently
    live = _result(peak_memory_mb=None)
    assert "load/peak_memory_mb" not in live.metrics()
    assert check_bounds(live, {"load/peak_memory_mb": (None, 1e9)}) == ["load/peak_memory_mb was not measured"]


def test_requests_are_v1_bodies_of_valid_rows(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b")
    frame = training_frame(5)
    frame.loc[1, "age"] = None  # a missing value is sent as null, which the bundle imputes
    bodies = [json.loads(b) for b in request_bodies(bundle, frame, 3)]
    assert len(bodies) == 3 and all(set(b) == {"instances"} and len(b["instances"]) == 1 for b in bodies)
    assert set(bodies[0]["instances"][0]) == {"age", "income", "city"}
    assert bodies[1]["instances"][0]["age"] is None
    with pytest.raises(MlopsError, match="lack the model's input column"):
        request_bodies(bundle, frame.drop(columns=["city"]), 3)


def test_rows_drawn_from_the_bundles_schema_are_valid_requests(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b")
    rows = schema_rows(bundle, 20)
    assert list(rows.columns) == ["age", "income", "city"] and len(rows) == 20
    assert set(rows["city"].dropna()) <= {"a", "b", "c"}
    assert len(request_bodies(bundle, rows, 20)) == 20


def test_report_shows_the_figures_and_the_latency_over_time(tmp_path: Path) -> None:
    report = {"model": {"name": "m"}, "metrics": {}, "gates": [], "load_test": _result().model_dump()}
    paths = write_report(report, tmp_path)
    html = Path(paths["html"]).read_text()
    assert "<h2>Load test</h2>" in html and "HTTP 503" in html and "load test latency" in html
    assert (tmp_path / "load_test_latency.png").is_file()
    saved = json.loads(Path(paths["json"]).read_text())
    assert len(saved["load_test"]["series"]) == 2


def test_the_mlops_process_never_imports_locust() -> None:
    code = ("import sys, mlops.evaluate.loadtest, mlops.evaluate.assess, mlops.evaluate.locustfile, "
            "mlops.cli.loadtest; print(sorted(m for m in sys.modules if m.split('.')[0] in ('locust', 'gevent')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nonsense_settings_are_refused_before_anything_starts(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b")
    nan = float("nan")
    for bad, named in (({"users": 0}, "--users (users) 0"), ({"duration_s": 0.0}, "--duration (duration_s) 0"),
                       ({"duration_s": nan}, "--duration (duration_s) nan"),  # ran for ever
                       ({"warmup_s": -1.0}, "--warmup (warmup_s) -1"), ({"timeout_s": nan}, "--timeout"),
                       ({"rps": -1.0}, "--rps (rps) -1"),  # Locust's traceback
                       ({"rps": 0.0}, "--rps (rps) 0"), ({"spawn_rate": nan}, "--spawn-rate")):
        settings = Settings(**({"users": 1, "duration_s": 1.0, "warmup_s": 0.0, "rows": 5, "timeout_s": 5} | bad))
        with pytest.raises(MlopsError, match=re.escape(f"the load test's settings: {named}")):
            run_load_test(bundle, training_frame(5), settings)
