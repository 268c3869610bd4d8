"""The prediction log on PostgreSQL, against a real server: the same guarantee as SQLite's (a future resolves
only once its rows are committed and visible to any other connection), many concurrent writers, a failed commit
failing its requests, and a reader whose every method answers what SQLite's answers for the same rows.

Each test writes into its own throwaway database (tests/postgres.py), so parallel workers never meet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlops.core.errors import MlopsError
from mlops.core.predlog import (
    LogFilter,
    LogReader,
    PredictionLog,
    Traffic,
    prediction_rows,
)
from mlops.core.predlog_pg import LogWriteError
from mlops.core.predlog_store import open_idempotent_log, open_log, open_reader, record_feedback
from tests.postgres import throwaway_url

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_url("mlops_predlog") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a log lives, in each store, as `--log` takes it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.sqlite'}"  # four slashes: an absolute path
    return request.getfixturevalue("pg_url")


def admin(url: str) -> Any:
    import psycopg2

    db = psycopg2.connect(url)
    db.autocommit = True
    return db


def test_url_picks_the_store(target: str) -> None:
    log = open_log(target)
    try:
        assert isinstance(log, PredictionLog) == target.startswith("sqlite")
        assert type(log).__name__ == ("PredictionLog" if target.startswith("sqlite") else "PgPredictionLog")
    finally:
        log.close()


def test_concurrent_submits_are_all_durable(target: str) -> None:
    """8 threads submitting one row at a time, as concurrent requests do: every future resolves, and every row
    is there once for a reader opened after the writer closed."""
    log = open_log(target, max_group=64)
    threads, per_thread = 8, 40
    failures: list[BaseException] = []

    def client(k: int) -> None:
        futures = [log.submit("predictions", prediction_rows([f"{k}-{i}"], "m", "1", "champion", [{"x": i}],
                                                             [{"y": k}], 0.5)) for i in range(per_thread)]
        for f in futures:
            try:
                f.result(timeout=60)
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    assert failures == []
    ids = [f"{k}-{i}" for k in range(threads) for i in range(per_thread)]
    with open_reader(target) as reader:
        assert reader.known_ids(ids) == set(ids)
        rows = reader.chunk(LogFilter("m"), 0, 10 * len(ids))
    assert sorted(r[1] for r in rows) == sorted(ids)  # each once
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_feedback_is_recorded_for_known_ids_only(target: str) -> None:
    """`mlops feedback FILE --log TARGET`'s work, over each store."""
    log = open_log(target)
    log.submit("predictions", prediction_rows(["p1", "p2"], "m", "1", "champion", [{}, {}], [{}, {}], 1.0)).result()
    log.close()
    result = record_feedback(target, [("p1", 1.0, "a", None, "{}"), ("nope", 1.0, "b", None, "{}"),
                                      ("p2", 2.0, None, 0.5, '{"value": 0.5}')])
    assert (result["rows"], result["matched"], result["unknown_ids"]) == (3, 2, ["nope"])
    with open_reader(target) as reader:
        assert reader.latest_feedback(["p1", "p2", "nope"]) == {
            "p1": {"label": "a", "value": None, "payload": {}}, "p2": {"label": None, "value": 0.5,
                                                                       "payload": {"value": 0.5}}}


def test_a_future_resolves_only_once_the_row_is_visible_elsewhere(pg_url: str) -> None:
    """Checked from the writer's own thread the moment it resolves each future, on another connection."""
    log = open_log(pg_url)
    watcher = admin(pg_url)
    seen: list[bool] = []
    try:
        for i in range(20):
            done: Future[None] = log.submit("predictions", prediction_rows([f"id-{i}"], "m", None, "champion",
                                                                           [{}], [{}], 1.0))

            def check(_: Future[None], pid: str = f"id-{i}") -> None:
                with watcher.cursor() as cur:
                    cur.execute("SELECT count(*) FROM predictions WHERE id = %s", (pid,))
                    seen.append(cur.fetchone()[0] == 1)

            done.add_done_callback(check)
            done.result(timeout=30)
    finally:
        log.close()
        watcher.close()
    assert seen == [True] * 20


def test_a_failed_commit_fails_its_requests_and_the_log_recovers(pg_url: str) -> None:
    log = open_log(pg_url)
    db = admin(pg_url)
    try:
        with db.cursor() as cur:
            cur.execute("ALTER TABLE feedback RENAME TO feedback_away")
        failed = log.submit("feedback", [("a", time.time(), "x", None, "{}")])
        with pytest.raises(LogWriteError, match="UndefinedTable.*feedback"):
            failed.result(timeout=30)
        with db.cursor() as cur:
            cur.execute("ALTER TABLE feedback_away RENAME TO feedback")
        log.submit("feedback", [("b", time.time(), "y", None, "{}")]).result(timeout=30)
        with db.cursor() as cur:
            cur.execute("SELECT id FROM feedback")
            assert [r[0] for r in cur.fetchall()] == ["b"]
    finally:
        log.close()
        db.close()


def _terminate(db: Any, application: str) -> int:
    """End the log's own connections to this database (as a PostgreSQL restart would)."""
    with db.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = %s AND pid != pg_backend_pid()", (application,))
        return int(cur.fetchone()[0])


def test_a_broken_connection_fails_one_group_then_the_writer_and_reader_reconnect(pg_url: str) -> None:
    log = open_log(pg_url)
    reader = open_reader(pg_url)
    db = admin(pg_url)
    try:
        log.submit("predictions", prediction_rows(["a"], "m", None, "champion", [{}], [{}], 1.0)).result(timeout=30)
        assert reader.known_ids(["a"]) == {"a"}
        assert _terminate(db, "mlops prediction log") == 2  # the writer's and the reader's
        with pytest.raises(LogWriteError):  # that commit's outcome is unknown: never acknowledged
            log.submit("predictions", prediction_rows(["b"], "m", None, "champion", [{}], [{}], 1.0)).result(30)
        log.submit("predictions", prediction_rows(["c"], "m", None, "champion", [{}], [{}], 1.0)).result(timeout=30)
        assert reader.known_ids(["a", "b", "c"]) == {"a", "c"}
    finally:
        log.close()
        reader.close()
        db.close()


def test_replicas_starting_together_share_one_schema(pg_url: str) -> None:
    logs: list[Any] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            logs.append(open_log(pg_url))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    starters = [threading.Thread(target=start) for _ in range(4)]
    for s in starters:
        s.start()
    for s in starters:
        s.join()
    for log in logs:
        log.submit("predictions", prediction_rows(["r"], "m", None, "champion", [{}], [{}], 1.0)).result(timeout=30)
        log.close()
    assert errors == []
    with open_reader(pg_url) as reader:
        assert len(reader.predictions(("champion",))) == 4


@contextmanager
def role_without_create(pg_url: str, *grants: str) -> Iterator[str]:
    """The log's URL as a new login role that may not create tables in it (PUBLIC's CREATE on schema public
    revoked), given `grants` (GRANT statements' privilege clauses); the role is dropped on exit."""
    db = admin(pg_url)
    role = f"writer_{pg_url.rsplit('_', 1)[-1]}"
    try:
        with db.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN')
            cur.execute('REVOKE CREATE ON SCHEMA public FROM PUBLIC')
            for grant in grants:
                cur.execute(f'GRANT {grant} TO "{role}"')
        yield pg_url.replace("://postgres@", f"://{role}@")
    finally:
        with db.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{role}"')
        db.close()
        with admin(pg_url.rsplit("/", 1)[0] + "/postgres").cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_role_without_create_serves_a_log_that_exists(pg_url: str) -> None:
    """Tables made once (by an owner, a migration); the servers' role may only insert and select."""
    open_log(pg_url).close()
    with role_without_create(pg_url, "SELECT, INSERT ON predictions, feedback",
                             "USAGE ON SEQUENCE predictions_rowid_seq, feedback_rowid_seq") as url:
        log = open_log(url)
        log.submit("predictions", prediction_rows(["w"], "m", None, "champion", [{}], [{}], 1.0)).result(timeout=30)
        log.close()
        with open_reader(url) as reader:
            assert reader.known_ids(["w"]) == {"w"}


def test_a_role_without_create_on_a_database_without_the_tables_is_told_what_to_do(pg_url: str) -> None:
    """A server (or a stream consumer) started as such a role stops at startup with what to fix, not a traceback
    from the driver."""
    with role_without_create(pg_url) as url:
        for opener in (open_log, open_idempotent_log):
            with pytest.raises(MlopsError) as caught:
                opener(url)
            message = str(caught.value)
            assert message.startswith(f"cannot use the prediction log {url}: permission denied"), message
            assert "may not create them" in message and "GRANT" in message
    with pytest.raises(MlopsError, match="no prediction log at"):  # nothing half-made behind
        open_reader(pg_url)


def test_an_unreachable_server_fails_at_open(pg_url: str) -> None:
    with pytest.raises(MlopsError, match="cannot open the prediction log postgresql://nohost:1/x"):
        open_log("postgresql://nohost:1/x")
    with pytest.raises(MlopsError, match="cannot open the prediction log") as caught:
        open_reader("postgresql://someone:s3cret@nohost:1/x")
    assert "s3cret" not in str(caught.value)


def test_a_database_without_the_tables_is_not_a_log(pg_url: str) -> None:
    with pytest.raises(MlopsError, match="no prediction log at"):
        open_reader(pg_url)


# --- the reader over PostgreSQL answers as over SQLite -----------------------------------------------------------

T0 = 1_700_000_000.0


def _rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Predictions of two models, two versions, every variant (a shadow beside some), feedback arriving twice
    for some ids, at fixed times."""
    predictions: list[tuple[Any, ...]] = []
    for i in range(30):
        model = "iris" if i % 3 else "wine"
        version = "2" if i >= 15 else "1"
        variant = "challenger" if i % 5 == 0 else "champion"
        out = {"label": "a" if i % 2 else "b", "p": i / 30}
        predictions.append((f"id{i}", T0 + i, model, version, variant, json.dumps({"x": i}), json.dumps(out),
                            1.0 + i))
        if i % 4 == 0:
            predictions.append((f"id{i}", T0 + i + 0.5, model, version, "shadow", json.dumps({"x": i}),
                                json.dumps({"label": "a", "p": 0.5}), 2.0 + i))
    feedback = [(f"id{i}", T0 + 100 + i, "a", None, json.dumps({"id": f"id{i}", "label": "a"})) for i in range(0, 30, 2)]
    feedback += [(f"id{i}", T0 + 200 + i, "b", 1.5, json.dumps({"id": f"id{i}", "label": "b"})) for i in range(0, 30, 6)]
    feedback.append(("id1", T0 + 300, None, 3.0, "not json"))
    return predictions, feedback


def _answers(reader: Any) -> dict[str, Any]:
    """Every reader method, over filters that each select something different."""
    ids = [f"id{i}" for i in range(35)]
    return {
        "chunk all": reader.chunk(LogFilter("iris"), 0, 1000),
        "chunk paged": reader.chunk(LogFilter("iris", variants=("champion",)), 5, 4),
        "chunk version window": reader.chunk(LogFilter("wine", version="2", since=T0 + 16, until=T0 + 28), 0, 100),
        "chunk shadow": reader.chunk(LogFilter("iris", variants=("shadow",)), 0, 100),
        "traffic": reader.traffic(),
        "traffic after": reader.traffic(after_rowid=20, limit=2),
        "predictions": reader.predictions(("champion", "challenger")),
        "predictions filtered": reader.predictions(("champion",), model="iris", since=T0 + 10, version="2"),
        "latest feedback": reader.latest_feedback(ids),
        "known ids": reader.known_ids(ids),
        "latencies": sorted(reader.latencies(T0, T0 + 20)),
        "latencies of a variant": sorted(reader.latencies(T0, T0 + 40, variant="shadow", model="iris")),
        "shadow pairs": sorted(reader.shadow_pairs(T0, T0 + 100), key=json.dumps),
    }


def test_the_reader_answers_the_same_over_both_stores(tmp_path: Path, pg_url: str) -> None:
    predictions, feedback = _rows()
    answers = {}
    for target in (tmp_path / "log.sqlite", pg_url):
        log = open_log(target)
        log.submit("predictions", predictions).result(timeout=30)
        log.submit("feedback", feedback).result(timeout=30)
        log.close()
        with open_reader(target) as reader:
            answers[str(target)] = _answers(reader)
    sqlite, postgresql = answers.values()
    assert all(type(k) is Traffic for k in sqlite["traffic"]) and all(type(k) is Traffic for k in postgresql["traffic"])
    for key, expected in sqlite.items():
        assert expected, f"{key}: the rows select nothing, so the comparison proves nothing"
        assert postgresql[key] == expected, key
    with LogReader(tmp_path / "log.sqlite") as reader:  # the dispatch returned SQLite's own reader
        assert _answers(reader) == sqlite


# --- the server on a PostgreSQL log ------------------------------------------------------------------------------

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


def test_the_server_logs_and_takes_feedback_on_postgresql(pg_url: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 only once the row is in PostgreSQL; feedback checks ids there; a failed commit is a 503, never a 200;
    and no file is created for the URL."""
    from starlette.testclient import TestClient

    from mlops.package.predictor import Predictor
    from mlops.serve.app import Server
    from tests.serve_fixtures import build_bundle

    monkeypatch.chdir(tmp_path)
    bundle = build_bundle(tmp_path / "bundle")
    db = admin(pg_url)
    try:
        with TestClient(Server(Predictor(bundle), open_log(pg_url), version="3").app()) as client:
            assert client.post("/v1/models/toy:predict", json={"id": "p1", "instances": [ROW]}).status_code == 200
            with db.cursor() as cur:  # already there when the 200 arrived
                cur.execute("SELECT id, model, version, variant FROM predictions")
                assert cur.fetchall() == [("p1", "toy", "3", "champion")]
            assert client.post("/v1/feedback", json={"id": "p1", "label": "yes"}).json() == {"recorded": 1}
            assert client.post("/v1/feedback", json={"id": "nope", "label": "yes"}).status_code == 404
            with db.cursor() as cur:
                cur.execute("ALTER TABLE predictions RENAME TO moved")
            failed = client.post("/v1/models/toy:predict", json={"id": "lost", "instances": [ROW]})
            assert failed.status_code == 503 and failed.json()["field"] == "log"
            with db.cursor() as cur:
                cur.execute("ALTER TABLE moved RENAME TO predictions")
            assert client.post("/v1/models/toy:predict", json={"id": "back", "instances": [ROW]}).status_code == 200
    finally:
        db.close()
    with open_reader(pg_url) as reader:
        assert [r["id"] for r in reader.predictions(("champion",))] == ["p1", "back"]
        assert reader.latest_feedback(["p1"])["p1"]["label"] == "yes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_monitor_never_shows_the_password_of_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`mlops monitor --log postgresql://USER:PASSWORD@...` printed the URL as given: in its summary line, in
    `--json`'s `log`, in every alert (sent to a webhook as it is recorded) and on the dashboard."""
    import uuid

    from mlops.cli import main
    from mlops.package.predictor import Predictor
    from tests.monitor_fixtures import QUICKSTART, build_breast_cancer_bundle, quickstart_split
    from tests.postgres import throwaway_database

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    bundle = build_breast_cancer_bundle(tmp_path / "bundle")
    predictor = Predictor(bundle, max_batch=200)
    columns = [i.name for i in predictor.meta.inputs]
    frame = quickstart_split()["train"].iloc[:200]
    feeds = predictor.feeds_from_rows([{c: float(row[c]) for c in columns} for row in frame.to_dict("records")])
    rows = [(uuid.uuid4().hex, 1_767_225_600.0 + k, predictor.name, None, "champion", json.dumps(i), json.dumps(o),
             2.0) for k, (i, o) in enumerate(zip(predictor.log_rows(feeds), predictor.predict(feeds).log_instances(),
                                                 strict=True))]
    with throwaway_database("mlops_monitor") as (info, name):
        secret = info.password or "s3cret"  # trust authentication takes any; a server that asks gets the right one
        url = f"postgresql://{info.user}:{secret}@{info.host}:{info.port}/{name}"
        shown = f"postgresql://{info.user}:***@{info.host}:{info.port}/{name}"
        log = open_log(url)
        log.submit("predictions", rows).result()
        log.close()
        code = main(["monitor", str(QUICKSTART), "--model", str(bundle), "--log", url, "--json",
                     "monitor.window.size=100", "monitor.window.min_samples=100", "monitor.report.evidently=false",
                     "monitor.drift.features={mean_radius: {key: true}}", "monitor.alerts.consecutive=1"])
        out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["log"] == shown
    assert result["windows"] and result["alerts"], result  # the alerts carry the log too
    assert secret not in out and secret not in err
    assert secret not in Path(result["dashboard"]).read_text()


def test_label_commands_never_show_the_password_of_their_log(tmp_path: Path) -> None:
    """`mlops label export` and `import` named a `--log postgresql://USER:PASSWORD@...` as given in their errors,
    their summary line and `--json`'s `log`."""
    from mlops.improve.labelling import FROM_NAME, import_annotations, select_for_labelling
    from tests.postgres import throwaway_database

    with throwaway_database("mlops_label") as (info, name):
        secret = info.password or "s3cret"  # trust authentication takes any; a server that asks gets the right one
        url = f"postgresql://{info.user}:{secret}@{info.host}:{info.port}/{name}"
        log = open_log(url)
        log.submit("predictions", prediction_rows(["p1"], "toy", "1", "champion", [{"x": 1.0}],
                                                  [{"label": "yes"}], 1.0)).result()
        log.close()
        with pytest.raises(MlopsError, match="no served prediction of 'other' in ") as missing:
            select_for_labelling(url, "other", count=1)
        export = tmp_path / "export.json"
        export.write_text(json.dumps([{"prediction_id": "unknown", FROM_NAME: "no"}]))
        with pytest.raises(MlopsError, match="none of the 1 prediction ids in ") as unknown:
            import_annotations(export, url)
        export.write_text(json.dumps([{"prediction_id": "p1", FROM_NAME: "no"}]))
        imported = import_annotations(export, url)
    assert secret not in str(missing.value) and secret not in str(unknown.value)
    assert imported.imported == 1 and secret not in imported.log and ":***@" in imported.log, imported
