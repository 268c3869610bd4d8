"""`mlops stream` against the real local redis-server: consumers SIGKILLed mid-batch at the two moments that
matter (outputs written but not logged; written and logged but not acknowledged), restarted, and every message
ends with exactly one output record and one log row, with the log in SQLite and on the real local PostgreSQL;
SIGTERM finishes the batch in flight."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlops.core.predlog import IdempotentLog, prediction_rows, read_predictions
from mlops.core.predlog_pg import WRITE_LOCK, PgIdempotentLog, connect
from mlops.package.predictor import Predictor
from tests.conftest import ROOT
from tests.net import REDIS_URL, drop_stream, redis_client
from tests.polling import until
from tests.postgres import throwaway_url
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

BATCH = 16


@pytest.fixture
def r() -> Iterator[Any]:
    client = redis_client()
    yield client
    client.close()


@pytest.fixture
def stream(r: Any) -> Iterator[str]:
    """A stream name no other test uses; its keys (and dedupe markers) are deleted afterwards."""
    name = f"mlops-test-{uuid.uuid4().hex[:12]}"
    yield name
    r.client_unpause()  # in case a test failed while Redis was paused
    drop_stream(r, name)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    bundle = build_bundle(tmp_path / "bundle")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: toy\ndata:\n  path: data.csv\n  target: y\n")
    log = tmp_path / "predictions.sqlite"
    IdempotentLog(log).close()  # created up front so the test can lock it
    return bundle, recipe, log


class HeldLog:
    """The prediction log under test, which the test can hold so that a consumer's log write waits, and read back:
    a SQLite file (held by its write lock)."""

    def __init__(self, path: Path) -> None:
        self.target = str(path)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)

    def hold(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.db.execute("ROLLBACK")

    def rows(self) -> list[tuple[str, str]]:
        return [(row["id"], row["variant"]) for row in read_predictions(self.target)]


class HeldPgLog(HeldLog):
    """The log on PostgreSQL, held by the writers' advisory lock: a session-level lock on the same key blocks the
    transaction-level one every writer takes."""

    def __init__(self, url: str) -> None:
        self.target = url
        PgIdempotentLog(url).close()  # the tables, before the test reads them
        self.db = connect(url)
        self.db.autocommit = True

    def _run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.db.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def hold(self) -> None:
        self._run("SELECT pg_advisory_lock(%s)", WRITE_LOCK)

    def release(self) -> None:
        self._run("SELECT pg_advisory_unlock(%s)", WRITE_LOCK)

    def rows(self) -> list[tuple[str, str]]:
        return [(pid, variant) for pid, variant in self._run("SELECT id, variant FROM predictions ORDER BY rowid")]


@pytest.fixture(params=["sqlite", "postgresql"])
def held_log(request: pytest.FixtureRequest, setup: tuple[Path, Path, Path]) -> Iterator[HeldLog]:
    if request.param == "sqlite":
        log = HeldLog(setup[2])
        yield log
        log.db.close()
        return
    with throwaway_url("mlops_stream") as url:
        log = HeldPgLog(url)
        yield log
        log.db.close()


def produce(r: Any, stream: str, n: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """n messages: good rows (text fields or one JSON field) and, every 9th, a bad one. Returns the good rows
    by message id (as plain values) and the field each bad message should be dead-lettered for."""
    good: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}
    for i in range(n):
        row = {"age": 20.0 + i % 50, "income": 30.0 + (i * 7) % 40, "city": "abc"[i % 3]}
        if i % 9 == 4:
            kind = (i // 9) % 3
            fields, field = [({"age": "old", "income": "1", "city": "a"}, "age"),
                             ({"json": "{not json"}, "json"),
                             ({"age": "1", "income": "2"}, "city")][kind]
            bad[r.xadd(stream, fields).decode()] = field
        elif i % 2:
            good[r.xadd(stream, {"json": json.dumps(row)}).decode()] = row
        else:
            good[r.xadd(stream, {k: str(v) for k, v in row.items()}).decode()] = row
    return good, bad


def start(recipe: Path, bundle: Path, log: str | Path, stream: str, consumer: str,
          *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlops.cli", "stream", str(recipe), "--model", str(bundle), "--source", REDIS_URL,
         "--stream", stream, "--group", "g", "--consumer", consumer, "--log", str(log), "--batch", str(BATCH),
         "--block-ms", "200", "--json", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def last_command(r: Any, consumer: str) -> str | None:
    """The last command the consumer's named Redis connection ran."""
    for client in r.client_list():
        if client.get("name") == f"mlops-stream:g:{consumer}":
            return client.get("cmd")
    return None


def pending(r: Any, stream: str, consumer: str | None = None) -> int:
    if consumer is None:
        return int(r.xpending(stream, "g")["pending"])
    return len(r.xpending_range(stream, "g", "-", "+", 10_000, consumername=consumer))


def records(r: Any, stream: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in r.xrange(stream)]


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_consumers_killed_mid_batch_lose_and_double_nothing(r: Any, stream: str, setup: tuple[Path, Path, Path],
                                                            held_log: HeldLog) -> None:
    bundle, recipe, _ = setup
    log = held_log.target
    good, bad = produce(r, stream, 200)
    out, dead = f"{stream}:predictions", f"{stream}:dead"
    procs: list[subprocess.Popen[str]] = []
    try:
        # 1. c1 writes its first batch to the output streams, then waits on the log (the test holds its lock):
        #    killed there, the batch is written but neither logged nor acknowledged
        held_log.hold()
        procs.append(c1 := start(recipe, bundle, log, stream, "c1"))
        until(lambda: r.xlen(out) + r.xlen(dead) > 0, "c1's first batch in the output streams",
              proc=c1, interval=0.02)
        kill(c1)
        held_log.release()
        first_batch = r.xlen(out) + r.xlen(dead)
        assert first_batch == BATCH and pending(r, stream, "c1") == BATCH
        assert held_log.rows() == []

        # 2. c2 claims c1's batch (XAUTOCLAIM), finds it already in the streams, logs it, and is killed before it
        #    can acknowledge it (Redis pauses writes once the log is committed)
        held_log.hold()
        procs.append(c2 := start(recipe, bundle, log, stream, "c2", "--claim-idle-ms", "0"))
        until(lambda: pending(r, stream, "c2") == BATCH, "c2 to claim c1's batch", proc=c2, interval=0.02)
        until(lambda: last_command(r, "c2") == "evalsha", "c2 to run its write script",
              proc=c2, interval=0.02)
        r.client_pause(15_000, all=False)  # WRITE: the XACK waits, reads go on
        held_log.release()
        until(lambda: len(held_log.rows()) > 0, "c2 to log the batch", proc=c2, interval=0.02)
        kill(c2)
        r.client_unpause()
        assert r.xlen(out) + r.xlen(dead) == BATCH  # nothing written twice by the claim
        assert pending(r, stream, "c2") == BATCH
        logged_early = len(held_log.rows())

        # 3. c2 restarts under its name: its own pending batch first (all already written), then the rest
        procs.append(c3 := start(recipe, bundle, log, stream, "c2", "--idle-exit-s", "1.5"))
        output, _ = c3.communicate(timeout=180)
        assert c3.returncode == 0, output
        summary = json.loads(output.strip().splitlines()[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    # exactly one record per message: predictions for good rows, dead letters naming the field for bad ones
    outputs = records(r, out)
    dead_letters = records(r, dead)
    assert sorted(rec["source_id"] for rec in outputs) == sorted(good)
    assert {rec["source_id"]: rec["field"] for rec in dead_letters} == bad
    assert len(outputs) == len(good) and len(dead_letters) == len(bad)
    # exactly one log row per prediction, with the id derived from the message id
    rows = held_log.rows()
    assert sorted(pid for pid, _ in rows) == sorted(f"{stream}:{mid}" for mid in good)
    assert {variant for _, variant in rows} == {"stream"}
    assert pending(r, stream) == 0
    assert summary["recovered"] == BATCH and summary["handled"] == 200 - first_batch + BATCH
    assert summary["duplicates"] == BATCH + logged_early  # the batch again in the streams and in the log
    # and the predictions are the model's, as the server computes them
    predictor = Predictor(bundle)
    ids = sorted(good)
    expected = predictor.predict(predictor.feeds_from_rows([good[i] for i in ids])).outputs["label"]
    by_source = {rec["source_id"]: rec for rec in outputs}
    assert [by_source[i]["label"] for i in ids] == list(expected)
    assert all(rec["id"] == f"{stream}:{rec['source_id']}" for rec in outputs)


def test_sigterm_finishes_the_batch_in_flight(r: Any, stream: str, setup: tuple[Path, Path, Path]) -> None:
    bundle, recipe, log = setup
    good, bad = produce(r, stream, 300)
    proc = start(recipe, bundle, log, stream, "t1", "--batch", "4")
    try:
        until(lambda: r.xlen(f"{stream}:predictions") > 0, "the first predictions", proc=proc, interval=0.02)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 0, output
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["stopped"] == "signal"
    assert 0 < summary["handled"] < 300  # stopped early ...
    assert pending(r, stream) == 0  # ... with nothing left unacknowledged
    assert r.xlen(f"{stream}:predictions") + r.xlen(f"{stream}:dead") == summary["handled"]
    assert len(read_predictions(log)) == summary["predicted"]


def test_the_shared_log_takes_each_prediction_once_from_racing_consumers_and_survives_a_restart() -> None:
    """Four writers (consumers' logs on one PostgreSQL database) write the same 120 stream rows at once, each in
    its own order and batches: every (id, variant) lands once, and the skipped rows add up. Then the database
    drops a writer's connection (as a restart does): its next batch reconnects and lands."""
    with throwaway_url("mlops_stream_race") as url:
        rows = prediction_rows([f"s:{k}-0" for k in range(120)], "toy", "3", "stream",
                               [{"a": k} for k in range(120)], [{"label": "yes"}] * 120, 1.0)
        logs = [PgIdempotentLog(url) for _ in range(4)]
        start_together = threading.Barrier(len(logs))

        def write_all(log: PgIdempotentLog, seed: int) -> int:
            mine = random.Random(seed).sample(rows, len(rows))
            start_together.wait()
            return sum(log.write(mine[k:k + 7]) for k in range(0, len(mine), 7))

        with ThreadPoolExecutor(len(logs)) as pool:
            skipped = list(pool.map(write_all, logs, range(len(logs))))
        served = prediction_rows(["s:0-0"], "toy", "3", "champion", [{"a": 0}], [{"label": "yes"}], 1.0)
        assert logs[0].write(served) == 0  # another variant of the same id is another row

        admin = connect(url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = 'mlops prediction log' AND pid <> pg_backend_pid()")
            later = prediction_rows(["s:500-0"], "toy", "3", "stream", [{"a": 500}], [{"label": "no"}], 1.0)
            assert logs[1].write(later + rows[:3]) == 3  # reconnected: the new row lands, the old are found
            cur.execute("SELECT id, variant FROM predictions")
            found = cur.fetchall()
        admin.close()
        for log in logs:
            log.close()

    assert sum(skipped) == 3 * len(rows)
    assert sorted(found) == sorted([(r[0], "stream") for r in rows + later] + [("s:0-0", "champion")])
