"""The prediction log on the real local redis-server: servers append to a stream, `mlops collect` lands it in
SQLite or PostgreSQL, and a collector killed mid-backlog loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mlops.collect.stream import collect_stream
from mlops.core.predlog import prediction_rows
from mlops.core.predlog_redis import entry
from mlops.core.predlog_store import open_log, open_reader, record_feedback
from tests.net import REDIS_URL, redis_client, start_server, stop_process
from tests.postgres import throwaway_url
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


@pytest.fixture
def stream() -> Iterator[tuple[Any, str, str]]:
    """A Redis client, a fresh stream's name and the log URL naming it; the stream is deleted after."""
    client = redis_client()
    name = f"mlops:test:{uuid.uuid4().hex[:12]}"
    try:
        yield client, name, f"{REDIS_URL}?stream={name}"
    finally:
        client.delete(name, f"{name}:dead")


def _predictions(ids: list[str], variant: str = "champion") -> list[tuple[Any, ...]]:
    return prediction_rows(ids, "toy", "1", variant, [{"a": k} for k, _ in enumerate(ids)],
                           [{"label": "x"}] * len(ids), 1.5)


def test_concurrent_submits_all_land_in_the_stream_before_their_futures_resolve(stream: tuple[Any, str, str]
                                                                                ) -> None:
    client, name, url = stream
    log = open_log(url)
    try:
        def one(k: int) -> None:
            for j in range(25):
                log.submit("predictions", _predictions([f"t{k}-{j}"])).result(timeout=30)
                assert client.xlen(name) >= 1  # acknowledged: already in the stream

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(8)))
    finally:
        log.close()
    entries = client.xrange(name)
    ids = [json.loads(fields[b"row"])[0] for _, fields in entries]
    assert sorted(ids) == sorted(f"t{k}-{j}" for k in range(8) for j in range(25))
    assert {fields[b"table"] for _, fields in entries} == {b"predictions"}


def test_a_failed_pipeline_fails_the_group_and_the_next_one_reconnects(stream: tuple[Any, str, str]) -> None:
    client, name, url = stream
    client.set(name, "not a stream")  # XADD to a string key fails: WRONGTYPE
    log = open_log(url)
    try:
        with pytest.raises(Exception, match="WRONGTYPE"):
            log.submit("predictions", _predictions(["lost"])).result(timeout=30)
        client.delete(name)
        log.submit("predictions", _predictions(["kept"])).result(timeout=30)
    finally:
        log.close()
    assert [json.loads(f[b"row"])[0] for _, f in client.xrange(name)] == ["kept"]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "log.sqlite")
        return
    with throwaway_url("mlops_collect") as url:
        yield url


def test_collect_lands_predictions_shadow_and_feedback_once(stream: tuple[Any, str, str], store: str) -> None:
    client, name, url = stream
    log = open_log(url)
    try:
        log.submit("predictions", _predictions(["a", "b", "c"])).result(timeout=30)
        log.submit("predictions", _predictions(["a"], variant="shadow")).result(timeout=30)  # shares a's id
    finally:
        log.close()
    result = record_feedback(url, [("a", time.time(), "yes", None, None), ("zzz", time.time(), "no", None, None)])
    assert result["checked"] is False and result["matched"] == 2  # a stream cannot be searched for ids
    client.xadd(name, {"table": "users", "row": "[]"})  # not a row of the log
    # rows the store would refuse (a null id, an id that is a list, a text for a time): each alone to the dead
    # letters, never a batch that fails at every redelivery
    for bad in ('[null, 0, "m", null, "champion", "{}", "{}", 0]', '[["x"], 0, "m", null, "champion", "{}", "{}", 0]',
                '["x", "noon", "m", null, "champion", "{}", "{}", 0]'):
        client.xadd(name, {"table": "predictions", "row": bad})

    # kept in the stream (trim=False): the replay below needs the landed entries
    first = collect_stream(url, store, once=True, trim=False)
    assert (first.landed, first.skipped, first.dead, first.pending, first.trimmed) == (6, 0, 4, 0, 0)
    assert client.xlen(name) == 10
    again = collect_stream(url, store, once=True, trim=False)
    assert (again.landed, again.batches) == (0, 0)
    with open_reader(store) as reader:
        assert sorted(r["id"] for r in reader.predictions(("champion",))) == ["a", "b", "c"]
        assert [r["id"] for r in reader.predictions(("shadow",))] == ["a"]
        assert reader.latest_feedback(["a"])["a"]["label"] == "yes"
    assert client.xlen(f"{name}:dead") == 4

    # a batch delivered again (a collector killed after its commit, before its XACK) lands nothing twice
    client.xgroup_setid(name, "mlops-collect", id="0")
    replay = collect_stream(url, store, once=True)
    assert (replay.landed, replay.skipped) == (0, 6)
    with open_reader(store) as reader:
        assert len(reader.predictions(("champion", "shadow"))) == 4
    assert (replay.trimmed, client.xlen(name)) == (10, 0)  # all landed and acknowledged: the stream is emptied


def test_landed_entries_leave_the_stream_and_what_any_group_still_needs_stays(stream: tuple[Any, str, str],
                                                                              store: str) -> None:
    client, name, url = stream
    first_ids = [client.xadd(name, entry("predictions", row)) for row in _predictions([f"a{k}" for k in range(5)])]
    # another group (a second consumer of the stream) was given the first two and acknowledged neither, a third
    # group has read nothing yet
    client.xgroup_create(name, "other", id="0")
    client.xreadgroup("other", "them", {name: ">"}, count=2)
    done = collect_stream(url, store, once=True)
    assert (done.landed, done.pending, done.trimmed) == (5, 0, 0)  # "other" still needs its first pending entry
    client.xack(name, "other", first_ids[0])
    assert collect_stream(url, store, once=True).trimmed == 1  # up to "other"'s oldest pending one
    assert client.xrange(name)[0][0] == first_ids[1]

    client.xgroup_create(name, "unread", id="$")  # a group that starts with what comes next
    client.xack(name, "other", first_ids[1])
    client.xreadgroup("other", "them", {name: ">"})
    client.xack(name, "other", *first_ids[2:])
    later = [client.xadd(name, entry("predictions", row)) for row in _predictions(["b0", "b1"])]
    done = collect_stream(url, store, once=True)
    # every group is past the first five; "unread" has not read the last two: they stay for it
    assert (done.landed, done.trimmed) == (2, 4)
    assert [entry_id for entry_id, _ in client.xrange(name)] == later
    with open_reader(store) as reader:
        assert len(reader.predictions(("champion",))) == 7


def _count_per_id(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT id, COUNT(*) FROM predictions GROUP BY id").fetchall())
    finally:
        db.close()


def test_a_collector_killed_mid_backlog_then_rerun_lands_every_row_exactly_once(stream: tuple[Any, str, str],
                                                                                tmp_path: Path) -> None:
    client, name, url = stream
    n = 20_000
    rows = _predictions([f"k{i}" for i in range(n)])
    for start in range(0, n, 2000):
        pipe = client.pipeline(transaction=False)
        for row in rows[start:start + 2000]:
            pipe.xadd(name, entry("predictions", row))
        pipe.execute()
    store = tmp_path / "log.sqlite"
    cmd = [sys.executable, "-m", "mlops.cli", "collect", url, "--log", str(store), "--batch", "200"]
    proc = subprocess.Popen([*cmd, "--once"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once it has landed part of the backlog, not all
        time.sleep(0.05)
        if store.is_file():
            try:
                landed = sum(_count_per_id(store).values())
            except sqlite3.OperationalError:
                continue
            if landed >= 2000:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = sum(_count_per_id(store).values())
    assert 0 < partial < n, "the collector was not killed mid-backlog"

    done = subprocess.run([*cmd, "--once", "--claim-idle", "0", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["landed"] + partial == n and result["pending"] == 0
    assert client.xlen(name) == 0  # every entry landed and acknowledged: trimmed away
    counts = _count_per_id(store)
    assert len(counts) == n and set(counts.values()) == {1}


def test_the_server_logs_to_the_stream_and_collect_lands_its_row(stream: tuple[Any, str, str],
                                                                  tmp_path: Path) -> None:
    """A real `mlops serve BUNDLE --log redis://...`: its 200 comes once the row is in the stream, and
    `mlops collect --once` lands that row."""
    client, name, url = stream
    bundle = build_bundle(tmp_path / "bundle")
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_SERVE_TOKEN"} | {"MLOPS_HOME": str(tmp_path / ".mlops"),
                                                                             "PYTHONUNBUFFERED": "1"}
    server = start_server("mlops", lambda port: [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port",
                                                 str(port), "--log", url],
                          lambda port: tmp_path / f"server-{port}.out", env)
    try:
        request = urllib.request.Request(f"{server.base}/v1/models/toy:predict", method="POST",
                                         data=json.dumps({"id": "p1", "instances": [ROW]}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        assert client.xlen(name) == 1  # already in the stream when the 200 arrived
    finally:
        stop_process(server.proc)
    store = tmp_path / "log.sqlite"
    done = subprocess.run([sys.executable, "-m", "mlops.cli", "collect", url, "--log", str(store), "--once",
                           "--keep", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["landed"], json.loads(done.stdout)["trimmed"]) == (1, 0)
    assert client.xlen(name) == 1  # --keep: the landed entry stays in the stream
    with open_reader(store) as reader:
        [row] = reader.predictions(("champion",))
    assert (row["id"], row["model"]) == ("p1", "toy")
