"""Two `mlops serve` replicas writing one prediction log on PostgreSQL, as on shared infrastructure:

- under load from several threads, replica B is killed with SIGKILL: every request that got a 200 (from either
  replica) has its id in the store, read through `open_reader`, and replica A keeps answering;
- B is started again; drifted traffic (mean_radius moved by three standard deviations) goes to A only while
  normal traffic goes to B; `mlops monitor --log postgresql://...` in a third process judges windows that hold
  both replicas' rows and fires the drift alert;
- feedback posted to A for a prediction B served is accepted (A looks the id up in the shared log) and joined
  to it by every reader: the monitor's windows and the A/B readout's and error analysis' join (`read_joined`).

Needs PostgreSQL (tests/postgres.py: skipped without it, failed under CI=true)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops.core.predlog import LogFilter
from mlops.core.predlog_store import open_reader
from mlops.improve.feedback import read_joined
from mlops.package.bundle import read_bundle
from tests.conftest import ROOT, cli_env, last_json, run_cli
from tests.monitor_fixtures import build_breast_cancer_bundle, quickstart_split
from tests.net import free_port, stop_process, wait_ready
from tests.postgres import throwaway_url

pytestmark = pytest.mark.integration

WINDOW = 200  # rows per monitored window; the drifted phase sends two windows to each replica
SHIFT_SD = 3.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_breast_cancer_bundle(tmp_path_factory.mktemp("replicas") / "bundle")


@pytest.fixture
def log_url() -> Iterator[str]:
    with throwaway_url("mlops_replicas") as url:
        yield url


class Replica:
    """`mlops serve BUNDLE --log URL` in its own process on a free port."""

    def __init__(self, bundle: Path, log_url: str, home: Path, out: Path) -> None:
        self.port = free_port()
        self.out = out
        env = os.environ | {"MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        with open(out, "w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port",
                                          str(self.port), "--log", log_url], cwd=ROOT, env=env, stdout=sink,
                                         stderr=subprocess.STDOUT, text=True)

    def ready(self) -> Replica:
        wait_ready(self.port, self.proc, timeout=90, tail=lambda: self.out.read_text()[-3000:])
        return self

    def post(self, conn: http.client.HTTPConnection, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        return response.status, (json.loads(text) if text else {})

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def features(shift: float = 0.0) -> list[dict[str, float]]:
    """The quickstart's training rows as requests (mean_radius moved by `shift` of its standard deviation)."""
    train = quickstart_split()["train"].drop(columns="target")
    sd = float(train["mean_radius"].std())
    out = []
    for row in train.to_dict("records"):
        item = {k: float(v) for k, v in row.items()}
        item["mean_radius"] += shift * sd
        out.append(item)
    return out


def load(replica: Replica, prefix: str, rows: list[dict[str, float]], acked: list[str], lock: threading.Lock,
         stop: threading.Event, limit: int) -> None:
    """Predict one row per request, each with its own id, until `stop`, `limit` requests, or the server is gone;
    the ids that got a 200 go to `acked`."""
    conn = replica.connect()
    for n in range(limit):
        if stop.is_set():
            return
        request_id = f"{prefix}-{n}"
        try:
            status, _ = replica.post(conn, "/v1/models/quickstart:predict",
                                     {"id": request_id, "instances": [rows[n % len(rows)]]})
        except (OSError, http.client.HTTPException):
            return  # the server is gone
        if status == 200:
            with lock:
                acked.append(request_id)


def test_two_replicas_one_postgres_log(bundle: Path, log_url: str, tmp_path: Path) -> None:
    normal, drifted = features(), features(SHIFT_SD)
    home = tmp_path / ".mlops"
    replicas: list[Replica] = []
    try:
        a = Replica(bundle, log_url, home, tmp_path / "a.out")
        b = Replica(bundle, log_url, home, tmp_path / "b.out")
        replicas += [a, b]
        a.ready(), b.ready()

        # 1. load on both; B killed mid-load
        acked_a: list[str] = []
        acked_b: list[str] = []
        lock, stop = threading.Lock(), threading.Event()
        threads = [threading.Thread(target=load, args=(r, f"{name}{k}", normal, acked, lock, stop, 20_000))
                   for k in range(3) for r, name, acked in ((a, "a", acked_a), (b, "b", acked_b))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 40
        while len(acked_b) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(b.proc.pid, signal.SIGKILL)  # no shutdown hook, no drained queue
        b.proc.wait(timeout=10)
        with lock:
            a_at_kill = len(acked_a)
        while len(acked_a) < a_at_kill + 150 and time.monotonic() < deadline + 20:
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert len(acked_b) >= 150, (tmp_path / "b.out").read_text()[-2000:]
        assert len(acked_a) >= a_at_kill + 150, "replica A stopped answering when B died"
        with open_reader(log_url) as reader:
            missing = set(acked_a + acked_b) - reader.known_ids(acked_a + acked_b)
        assert not missing, f"{len(missing)} acknowledged predictions are not in the shared log: {sorted(missing)[:5]}"

        # 2. B again; drifted rows to A only, normal rows to B, in step (one each per round)
        b = Replica(bundle, log_url, home, tmp_path / "b2.out").ready()
        replicas.append(b)
        since = time.time()
        time.sleep(0.01)
        sent: dict[str, list[str]] = {"a": [], "b": []}

        def paired(k: int, barrier: threading.Barrier, who: str, replica: Replica, rows: list[dict]) -> None:
            conn = replica.connect()
            for n in range(WINDOW):  # two pairs of threads: 2 x WINDOW rows to each replica
                barrier.wait(timeout=30)
                request_id = f"{who}2-{k}-{n}"
                status, answer = replica.post(conn, "/v1/models/quickstart:predict",
                                              {"id": request_id, "instances": [rows[(n * 2 + k) % len(rows)]]})
                assert status == 200, answer
                sent[who].append(request_id)

        pairs = []
        for k in range(2):
            barrier = threading.Barrier(2)
            pairs += [threading.Thread(target=paired, args=(k, barrier, "a", a, drifted)),
                      threading.Thread(target=paired, args=(k, barrier, "b", b, normal))]
        for t in pairs:
            t.start()
        for t in pairs:
            t.join(timeout=120)
        assert len(sent["a"]) == len(sent["b"]) == 2 * WINDOW

        # 3. feedback posted to A for a prediction that B served
        label = read_bundle(bundle).labels[0]
        served_by_b = sent["b"][5]
        conn = a.connect()
        assert a.post(conn, "/v1/feedback", {"id": served_by_b, "label": label}) == (200, {"recorded": 1})
        status, _ = a.post(conn, "/v1/feedback", {"id": "never-served", "label": label})
        assert status == 404  # A looked the id up: it knows B's predictions, not made-up ones

        # 4. a monitor in a third process, on the shared log
        result = last_json(run_cli(
            ["monitor", "recipes/quickstart.yaml", "--model", str(bundle), "--log", log_url, "--since", str(since),
             "--json", f"monitor.window.size={WINDOW}", f"monitor.window.min_samples={WINDOW}",
             "monitor.drift.features={mean_radius: {key: true}}", "monitor.report.evidently=false",
             "monitor.alerts.consecutive=1"], cli_env(home, tmp_path / "prefect", None), timeout=180))
    finally:
        for r in replicas:
            stop_process(r.proc)

    windows = result["windows"]
    assert len(windows) == 4 and all(w["rows"] == WINDOW and w["judged"] for w in windows)
    # every window the monitor judged holds both replicas' rows (the log's order: commit order across replicas)
    with open_reader(log_url) as reader:
        ids = [r[1] for r in reader.chunk(LogFilter("quickstart", since=since), 0, 10 * WINDOW)]
    for k in range(4):
        inside = ids[k * WINDOW:(k + 1) * WINDOW]
        assert {i[0] for i in inside} == {"a", "b"}, f"window {k} holds one replica's rows only"
    assert all("mean_radius" in w["drifted_features"] for w in windows)
    fired = [a for a in result["alerts"] if a["rule"] == "drift" and a["state"] == "fired"]
    assert fired, result["alerts"]
    assert sum(w["labelled"] for w in windows) == 1  # the monitor joined B's prediction to A's feedback

    joined = {j.id: j for j in read_joined(log_url, "quickstart", since=since)}
    assert joined[served_by_b].truth == label and joined[served_by_b].source == "label"
    assert sum(j.truth is not None for j in joined.values()) == 1
