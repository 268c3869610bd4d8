"""Reading a canary's live signals and deciding a rollout step: Prometheus text produced by the server's own
metrics class, a prediction log written by the server's own log writer, and the advance/wait/rollback rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlops.core.predlog import PredictionLog, prediction_rows
from mlops.deploy.live_checks import (
    MetricsEndpoint,
    PredictionLogSource,
    Reading,
    decide,
    histogram_quantile,
    parse_metrics,
)
from mlops.recipe.deploy import RolloutChecks
from mlops.serve.metrics import ServeMetrics


def snapshot_of(metrics: ServeMetrics) -> dict:
    body, _ = metrics.render()
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in parse_metrics(body.decode())}


def traffic(m: ServeMetrics, variant: str, ok: int, errors: int, seconds: float, route: str = "v1_predict") -> None:
    for _ in range(ok):
        m.observe(route, "toy", variant, 200, seconds)
    for _ in range(errors):
        m.observe(route, "toy", variant, 500, seconds)


def test_reading_counts_only_the_canary_variant_and_predict_routes() -> None:
    m = ServeMetrics()
    source = MetricsEndpoint("http://unused", variant="challenger")
    before = snapshot_of(m)
    traffic(m, "champion", ok=500, errors=50, seconds=0.002)  # the stable model's troubles are not the canary's
    traffic(m, "challenger", ok=90, errors=10, seconds=0.004)
    m.observe("ready", "toy", "challenger", 503, 0.001)  # health checks are not predictions
    m.observe("v2_infer", "toy", "challenger", 400, 0.001)  # a bad request is the client's error, not a 5xx

    r = source.reading(before, snapshot_of(m))

    assert r.requests == 101 and r.errors == 10
    assert r.error_rate == pytest.approx(10 / 101)
    assert r.p99_ms == pytest.approx(5.0, rel=0.01)  # 0.004 s falls in the (0.0025, 0.005] bucket


def test_any_variant_reads_a_server_that_is_the_canary_alone() -> None:
    m = ServeMetrics()
    before = snapshot_of(m)
    traffic(m, "champion", ok=30, errors=3, seconds=0.001)

    r = MetricsEndpoint("http://unused", variant="any").reading(before, snapshot_of(m))

    assert (r.requests, r.errors) == (33, 3)


def test_a_step_is_judged_on_its_own_window() -> None:
    m = ServeMetrics()
    traffic(m, "challenger", ok=0, errors=40, seconds=0.5)  # an earlier step's failures
    before = snapshot_of(m)
    traffic(m, "challenger", ok=200, errors=0, seconds=0.001)

    r = MetricsEndpoint("http://unused").reading(before, snapshot_of(m))

    assert (r.requests, r.errors) == (200, 0)
    assert r.p99_ms == pytest.approx(1.0, rel=0.01)


def test_a_restarted_server_counts_from_zero() -> None:
    """Counters that went down belong to a new process: what it counted since is the increase."""
    old, new = ServeMetrics(), ServeMetrics()
    traffic(old, "challenger", ok=1000, errors=0, seconds=0.001)
    before = snapshot_of(old)
    traffic(new, "challenger", ok=20, errors=5, seconds=0.001)

    r = MetricsEndpoint("http://unused").reading(before, snapshot_of(new))

    assert (r.requests, r.errors) == (25, 5)


def test_shadow_counters() -> None:
    m = ServeMetrics()
    before = snapshot_of(m)
    m.shadow_rows.labels("toy").inc(200)
    m.shadow_disagreements.labels("toy").inc(30)

    r = MetricsEndpoint("http://unused").reading(before, snapshot_of(m))

    assert r.disagreement == pytest.approx(0.15)


@pytest.mark.parametrize(("buckets", "q", "expected"), [
    ([(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)], 0.5, 0.1),
    ([(0.1, 0.0), (0.2, 100.0), (float("inf"), 100.0)], 0.99, 0.199),  # linear inside (0.1, 0.2]
    ([(0.1, 10.0), (0.2, 10.0), (float("inf"), 20.0)], 0.99, 0.2),  # in +Inf: the highest finite bound
    ([(0.1, 0.0), (float("inf"), 0.0)], 0.99, None),
])
def test_histogram_quantile_matches_promql(buckets: list, q: float, expected: float | None) -> None:
    result = histogram_quantile(q, buckets)

    assert result == (pytest.approx(expected) if expected is not None else None)


def test_prediction_log_source(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log.sqlite")
    source = PredictionLogSource(tmp_path / "log.sqlite", variant="challenger")
    row = {"age": 1.0, "income": 2.0, "city": "a"}
    log.submit("predictions", prediction_rows(["early"], "toy", "1", "challenger", [row], [{"label": "no"}], 900.0)
               ).result(10)
    time.sleep(0.01)
    before = source.snapshot()
    for i in range(100):
        variant = "challenger" if i % 2 else "champion"
        log.submit("predictions", prediction_rows([f"r{i}"], "toy", "1", variant, [row], [{"label": "yes"}],
                                                  float(i))).result(10)
        label = "no" if i < 10 else "yes"  # the shadow disagrees on 10 rows
        log.submit("predictions", prediction_rows([f"r{i}"], "toy", "2", "shadow", [row], [{"label": label}], 1.0)
                   ).result(10)
    after = source.snapshot()
    log.close()

    r = source.reading(before, after)

    assert r.requests == 50  # the challenger's odd rows; the early row is outside the window
    assert r.p99_ms == 99.0  # exact, from the rows' latencies
    assert r.errors is None  # failed requests are not logged
    assert (r.shadow_rows, r.shadow_disagreements) == (100, 10)


CHECKS = RolloutChecks(max_error_rate=0.05, max_p99_ms=100, max_shadow_disagreement=None, min_requests=100)


@pytest.mark.parametrize(("reading", "decision"), [
    (Reading(requests=150, errors=3, p99_ms=20), "advance"),
    (Reading(requests=50, errors=0, p99_ms=20), "wait"),  # too few requests to judge
    (Reading(requests=150, errors=9, p99_ms=20), "rollback"),  # 6 % > 5 %
    (Reading(requests=150, errors=0, p99_ms=120), "rollback"),  # p99 over its bound
    (Reading(requests=20, errors=6, p99_ms=20), "rollback"),  # 6 errors: over 5 % of 100 whatever comes next
    (Reading(requests=20, errors=5, p99_ms=20), "wait"),  # 5 of 100 could still be 5 %
    (Reading(requests=40, errors=0, p99_ms=500), "wait"),  # a slow start on few requests is not yet a verdict
    (Reading(requests=0), "wait"),
])
def test_decide(reading: Reading, decision: str) -> None:
    got, results = decide(reading, CHECKS)

    assert got == decision, [r.render() for r in results]


def test_decide_with_shadow_disagreement() -> None:
    checks = RolloutChecks(max_error_rate=None, max_p99_ms=None, max_shadow_disagreement=0.1, min_requests=100)

    assert decide(Reading(requests=200, shadow_rows=200, shadow_disagreements=10), checks)[0] == "advance"
    assert decide(Reading(requests=200, shadow_rows=200, shadow_disagreements=40), checks)[0] == "rollback"
    assert decide(Reading(requests=200, shadow_rows=50, shadow_disagreements=0), checks)[0] == "wait"
    assert decide(Reading(requests=200, shadow_rows=None), checks)[0] == "wait"  # no shadow: never "passed"


def test_merged_reading_takes_each_signal_from_the_first_source_that_has_it() -> None:
    metrics = Reading(requests=120, errors=2, p99_ms=7.0, shadow_rows=0, shadow_disagreements=0, sources=["m"])
    log = Reading(requests=118, p99_ms=6.5, shadow_rows=100, shadow_disagreements=4, sources=["l"])

    r = Reading().merged(metrics).merged(log)

    assert (r.requests, r.errors, r.p99_ms) == (120, 2, 7.0)
    assert r.disagreement == pytest.approx(0.04)
    assert r.sources == ["m", "l"]


def test_walk_refuses_what_it_could_not_judge(tmp_path: Path) -> None:
    """Checks that no given source can measure, or no source at all, are refused before any traffic moves."""
    from mlops.core.errors import MlopsError
    from mlops.core.refs import ModelVersion
    from mlops.deploy.rollout import walk
    from mlops.recipe.deploy import DeployConfig

    cfg, v1, v2 = DeployConfig(), ModelVersion("toy", "1"), ModelVersion("toy", "2")

    with pytest.raises(MlopsError, match="need errors, which prediction log .* cannot measure"):
        walk(cfg, v1, v2, [PredictionLogSource(tmp_path / "log.sqlite")], tmp_path)
    with pytest.raises(MlopsError, match="judges each step on the canary's live metrics"):
        walk(cfg, v1, v2, [], tmp_path)
    with pytest.raises(MlopsError, match=r"no rollout step at or above 101 %"):
        walk(cfg, v1, v2, [MetricsEndpoint("http://unused")], tmp_path, start_percent=101)
    assert not list(tmp_path.glob("*.yaml"))  # nothing rendered
