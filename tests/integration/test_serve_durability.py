"""Kill the server with SIGKILL under load: every request that got a 200 is in the prediction log."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mlops.core.predlog import read_predictions
from tests.conftest import ROOT
from tests.net import free_port, wait_ready
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


def test_every_acknowledged_prediction_survives_sigkill(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "bundle")
    log_path = tmp_path / "predictions.sqlite"
    port = free_port()
    env = os.environ | {"MLOPS_HOME": str(tmp_path / ".mlops")}
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port", str(port),
                             "--log", str(log_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(port, proc)
        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(worker: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            n = 0
            while not stop.is_set() and n < 5000:  # bounded: stops by itself
                request_id = f"w{worker}-{n}"
                n += 1
                try:
                    conn.request("POST", "/v1/models/toy:predict",
                                 body=json.dumps({"id": request_id, "instances": [ROW]}),
                                 headers={"content-type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                except OSError:
                    return  # the server is gone
                if response.status == 200:
                    with lock:
                        acknowledged.append(request_id)

        threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(acknowledged) < 300 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load, no shutdown hooks
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acknowledged) >= 300
    logged = {r["id"] for r in read_predictions(log_path)}
    missing = [i for i in acknowledged if i not in logged]
    assert not missing, f"{len(missing)} acknowledged predictions are not in the log, e.g. {missing[:5]}"
