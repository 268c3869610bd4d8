"""The production loop's state on PostgreSQL (it follows the prediction log): the audit trail and its locks."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops.core import state_pg
from mlops.core.errors import MlopsError
from mlops.improve import audit
from mlops.improve.triggers import read_alerts
from mlops.monitor.results import AlertRecord, AlertWindow, WindowSummary
from mlops.monitor.rules import RuleState
from mlops.monitor.store import MonitorStore, PgMonitorStore, open_store
from tests.postgres import throwaway_url

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_url("mlops_state") as url:
        yield url


def test_audit_round_trip(pg_url: str) -> None:
    log = audit.open_audit(pg_url)
    assert isinstance(log, audit.PgAuditLog)
    written = [log.append(audit.STARTED, model="m", run_id="r1", by="policy:auto"),
               log.append(audit.TRAINED, model="m", run_id="r1", metrics={"f1": 0.5}),
               log.append(audit.STARTED, model="other", run_id="r2")]
    again = audit.open_audit(pg_url)  # a fresh connection reads what another wrote
    assert again.records() == written
    assert again.records("m") == written[:2]
    assert again.history("r1") == written[:2]


def test_default_stays_local(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert type(audit.open_audit(None)) is audit.AuditLog
    assert type(audit.open_audit(str(tmp_path / "predictions.db"))) is audit.AuditLog


def _try_retrain(url: str, start: float, out: multiprocessing.Queue) -> None:  # in a child process
    log = audit.open_audit(url)
    while time.time() < start:
        time.sleep(0.001)
    with log.locked():
        refusal = audit.limit_refusal(log.records("m"), cooldown_minutes=60, max_per_day=10, now=time.time())
        if refusal is None:
            time.sleep(0.2)  # widen the race: a second process reading now would also pass without the lock
            log.append(audit.STARTED, model="m")
    out.put(refusal)


def test_two_concurrent_limit_checks_one_passes(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 3
    procs = [ctx.Process(target=_try_retrain, args=(pg_url, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [out.get(timeout=5) for _ in procs]
    assert sorted(r is None for r in results) == [False, True]
    assert any(r and r.startswith("cooldown") for r in results)
    assert len([r for r in audit.open_audit(pg_url).records("m") if r["event"] == audit.STARTED]) == 1


def test_advisory_key_stable_and_distinct() -> None:
    assert state_pg.advisory_key("monitor", "a") == state_pg.advisory_key("monitor", "a")
    assert state_pg.advisory_key("monitor", "a") != state_pg.advisory_key("monitor", "b")
    assert -2**63 <= state_pg.advisory_key("x") < 2**63
    assert state_pg.is_postgres("postgresql://u@h/db") and not state_pg.is_postgres("/tmp/p.db")
    assert not state_pg.is_postgres(None)


# --- the monitor's state ------------------------------------------------------------------------------------------

def _window(index: int, first: int, last: int) -> WindowSummary:
    return WindowSummary(index=index, start_ts=1000.0 + index, end_ts=1001.0 + index, start_iso="", end_iso="",
                         start_rowid=first, end_rowid=last, rows=last - first + 1, judged=True, versions=["1"])


def _alert(w: WindowSummary) -> AlertRecord:
    return AlertRecord(rule="drift", state="fired", event="mlops.alert.drift", model="m", version="1", value=0.7,
                       threshold=0.5, reason="drifted", consecutive=2,
                       window=AlertWindow(w.index, w.start_ts, w.end_ts, "", "", w.rows, w.start_rowid, w.end_rowid),
                       detail={}, dashboard="d.html", log="log")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[MonitorStore]:
    if request.param == "sqlite":
        yield open_store(tmp_path / "m.sqlite", tmp_path / "predictions.db")
        return
    with throwaway_url("mlops_mon") as url:
        yield open_store(tmp_path / "unused.sqlite", url)


def test_monitor_state_round_trip_and_hysteresis(store: MonitorStore, tmp_path) -> None:
    assert isinstance(store, PgMonitorStore) == (not (tmp_path / "m.sqlite").exists())
    assert store.cursor("m", "1", "log", "rows") == (0, None)
    w = _window(0, 1, 100)
    alert = _alert(w)
    with store.exclusive("m"):
        store.commit_run("m", "1", "log", "rows", 0, [w], [alert], {"drift": RuleState(2, True, 1001.0)},
                         (100, 7), ("http://s/metrics", {"errors": 1.0}))
    assert alert.id
    assert store.cursor("m", "1", "log", "rows") == (100, 7)
    assert store.cursor("m", "1", "log", "time") == (100, None)  # a key of another window kind is not reused
    assert store.rule_states("m", "1") == {"drift": RuleState(2, True, 1001.0)}
    assert store.last_scrape("http://s/metrics", "m") == {"errors": 1.0}
    [stored] = store.windows("m", 10)
    assert (stored["start_rowid"], stored["end_rowid"], stored["summary"]["rows"]) == (1, 100, 100)
    store.record_delivery(alert.id, {"slack": "sent"})
    [a] = store.alerts("m")
    assert (a["id"], a["rule"], a["delivery"]) == (alert.id, "drift", {"slack": "sent"})
    # a run that read the cursor before another advanced it is refused: the window is not judged twice
    with pytest.raises(MlopsError, match="meanwhile"):
        store.commit_run("m", "1", "log", "rows", 0, [_window(0, 1, 100)], [], {}, (100, None), None)
    assert len(store.windows("m", 10)) == 1


def _monitor_once(url: str, start: float, out: multiprocessing.Queue) -> None:  # in a child process
    store = open_store(Path("unused.sqlite"), url)
    while time.time() < start:
        time.sleep(0.001)
    try:
        with store.exclusive("m"):
            after, _ = store.cursor("m", "1", "log", "rows")
            time.sleep(0.5)  # judging: the other monitor starts meanwhile
            store.commit_run("m", "1", "log", "rows", after, [_window(0, after + 1, after + 50)], [], {},
                             (after + 50, None), None)
        out.put("judged")
    except MlopsError as exc:
        out.put(str(exc))


def test_two_monitors_one_judges(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 3
    procs = [ctx.Process(target=_monitor_once, args=(pg_url, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = sorted(out.get(timeout=5) for _ in procs)
    assert results[1] == "judged"
    assert "another `mlops monitor` of 'm' is judging" in results[0] and "pid" in results[0]
    store = open_store(Path("unused.sqlite"), pg_url)
    assert [(w["start_rowid"], w["end_rowid"]) for w in store.windows("m", 10)] == [(1, 50)]
    assert store.cursor("m", "1", "log", "rows") == (50, None)
    with store.exclusive("m"):  # released by the one that judged: the next run may go
        pass


def test_a_retrain_anywhere_reads_the_alerts_a_monitor_recorded_in_the_database(pg_url: str, tmp_path) -> None:
    """The monitor's state follows the log into PostgreSQL; so must what a retrain answers (its trigger)."""
    store = open_store(tmp_path / "unused.sqlite", pg_url)
    w = _window(0, 1, 100)
    with store.exclusive("m"):
        store.commit_run("m", "1", "log", "rows", 0, [w], [_alert(w)], {}, (100, None), None)
    empty = tmp_path / "no-monitor-here"  # another machine: nothing of the monitor's on its disk
    [alert] = read_alerts(empty, "m", pg_url)
    assert alert.kind == "drift" and alert.ts > 0 and "@" in alert.source
    assert read_alerts(empty, "other-model", pg_url) == []
    assert read_alerts(empty, "m") == []  # without the log, only local files are read
