"""Progressive rollout against real servers: `rollout()` moves traffic with a local `mlops serve STABLE --ab
CANARY:PERCENT` restarted at each step (KServe's traffic split, on one machine), reads the server's /metrics and
prediction log, and decides. Traffic comes from client threads sending one- and two-row requests with random
keys. Nothing in the decision path is faked:

- a healthy canary walks 1 % -> 10 % -> 50 % -> 100 % and becomes champion (recorded in the registry history);
- a canary exported with its batch dimension frozen at 1 answers every two-row request with a 500 (ONNX Runtime
  refuses the shape): its error rate breaks the bound at the first step, traffic goes back to the stable model
  and the champion does not move.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy_fixtures import CRD, mlops_home, register_version
from tests.net import free_port, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("deploy-rollout")]

ROW = {"age": 41.0, "income": 50.0, "city": "a"}
RECIPE = str(ROOT / "recipes" / "quickstart.yaml")
# small windows and samples keep the test short; the logic is the same at 300 s and 100 requests
FAST = ["registry.model_name=toy", "deploy.rollout.window_s=1", "deploy.rollout.max_windows=60",
        "deploy.rollout.checks.min_requests=10", "deploy.rollout.checks.max_error_rate=0.05",
        "deploy.rollout.checks.max_p99_ms=2000"]


class Traffic:
    """Client threads posting V1 predictions with a fresh key each (so the A/B split applies per request);
    `two_rows` of them carry two rows. Connection errors while the server restarts between steps are retried."""

    def __init__(self, port: int, two_rows: float, threads: int = 2) -> None:
        self.port, self.two_rows = port, two_rows
        self.stop = threading.Event()
        self.status: dict[int, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                rows = 2 if rng.random() < self.two_rows else 1
                conn.request("POST", "/v1/models/toy:predict", json.dumps({"instances": [ROW] * rows}),
                             {"content-type": "application/json", "X-Request-Key": uuid.uuid4().hex})
                resp = conn.getresponse()
                resp.read()
                with self.lock:
                    self.status[resp.status] = self.status.get(resp.status, 0) + 1
            except OSError:
                conn = None
                self.stop.wait(0.05)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """toy v1 (champion), v2 (healthy, other weights), v3 (frozen batch dimension) in a fresh store, shared by
    this module's tests (a store costs seconds to create); each rolls out next to v1 explicitly."""
    tmp_path = tmp_path_factory.mktemp("rollout-registry")
    with mlops_home(tmp_path / ".mlops"):
        yield {"stable": register_version(tmp_path, "toy", 1), "healthy": register_version(tmp_path, "toy", 2),
               "broken": register_version(tmp_path, "toy", 3, frozen_batch=True)}


def champion() -> str:
    from mlops.core.registry import registry_client

    return str(registry_client().get_registered_model("toy").aliases["champion"])


def test_healthy_canary_walks_every_step_and_becomes_champion(registry: dict[str, str], tmp_path: Path) -> None:
    from mlops.deploy.rollout import RolloutOptions, rollout
    from mlops.recipe import load_recipe

    port = free_port()
    log = tmp_path / "predictions.sqlite"
    lines: list[str] = []
    before = champion()
    with Traffic(port, two_rows=0.3) as traffic:
        result = rollout(load_recipe(RECIPE, FAST), f"toy/{registry['healthy']}", RolloutOptions(
            stable=f"toy/{registry['stable']}", local_port=port, log=log, out=tmp_path / "rollout", crd=CRD),
            report=lines.append)

    assert result.decision == "advance", "\n".join(lines)
    assert [s.percent for s in result.steps] == [1, 10, 50, 100]
    assert all(s.decision == "advance" for s in result.steps)
    for step in result.steps:
        assert step.reading.requests >= 10 and step.reading.errors == 0
        assert {c.name: c.ok for c in step.checks} == {"error_rate": True, "p99_ms": True}
        assert step.reading.sources[0].startswith("metrics http://127.0.0.1")
    assert traffic.status.get(500, 0) == 0 and traffic.status[200] > 0
    # the canary's share of the stable+canary traffic grows with the step
    shares = [s.reading.requests for s in result.steps]
    assert shares[0] < shares[-1]
    assert result.promoted and champion() == registry["healthy"]
    assert (result.promotion["previous"], result.promotion["version"]) == (before, registry["healthy"])
    assert result.promotion["reason"].startswith("rollout passed every step")
    manifests = [yaml.safe_load(Path(p).read_text()) for p in result.manifests]
    assert [m["spec"]["predictor"].get("canaryTrafficPercent") for m in manifests] == [1, 10, 50, 100, None]
    assert manifests[-1]["spec"]["predictor"]["containers"][0]["image"].endswith(f"toy-v{registry['healthy']}")
    # the prediction log saw both arms, tagged by variant
    import sqlite3

    with sqlite3.connect(log) as db:
        variants = dict(db.execute("SELECT variant, COUNT(*) FROM predictions GROUP BY variant").fetchall())
    assert variants["champion"] > 0 and variants["challenger"] > 0


def test_injected_error_rate_rolls_back(registry: dict[str, str], tmp_path: Path) -> None:
    from mlops.core.registry import registry_client
    from mlops.deploy.rollout import RolloutOptions, rollout
    from mlops.recipe import load_recipe

    port = free_port()
    lines: list[str] = []
    before = champion()
    with Traffic(port, two_rows=0.3):
        result = rollout(load_recipe(RECIPE, FAST), f"toy/{registry['broken']}", RolloutOptions(
            stable=f"toy/{registry['stable']}", local_port=port, out=tmp_path / "rollout", crd=CRD),
            report=lines.append)

    assert result.decision == "rollback", "\n".join(lines)
    assert len(result.steps) == 1 and result.steps[0].percent == 1
    step = result.steps[0]
    assert step.decision == "rollback" and step.reading.errors > 0
    failed = [c for c in step.checks if c.ok is False]
    assert [c.name for c in failed] == ["error_rate"] and failed[0].value > 0.05
    assert "error_rate" in result.reason and "at 1 %" in result.reason
    assert not result.promoted and champion() == before
    back = yaml.safe_load(Path(result.manifests[-1]).read_text())
    assert Path(result.manifests[-1]).name == "rollback.yaml"
    assert "canaryTrafficPercent" not in back["spec"]["predictor"]
    assert back["spec"]["predictor"]["containers"][0]["image"].endswith(f"toy-v{registry['stable']}")
    tag = json.loads(registry_client().get_model_version("toy", registry["broken"]).tags["mlops.rollout"])
    assert tag["decision"] == "rollback" and tag["steps"] == [{"percent": 1, "decision": "rollback"}]


def test_too_little_traffic_holds(registry: dict[str, str], tmp_path: Path) -> None:
    """No client sends anything: the first step cannot be judged and the rollout holds there."""
    from mlops.deploy.rollout import RolloutOptions, rollout
    from mlops.recipe import load_recipe

    before = champion()
    result = rollout(load_recipe(RECIPE, [*FAST, "deploy.rollout.max_windows=2"]), f"toy/{registry['broken']}",
                     RolloutOptions(stable=f"toy/{registry['stable']}", local_port=free_port(),
                                    out=tmp_path / "rollout"))

    assert result.decision == "hold"
    assert [(s.percent, s.decision, s.windows) for s in result.steps] == [(1, "hold", 2)]
    assert "--resume-at 1" in result.reason
    assert champion() == before


def test_canary_on_the_live_server_without_a_restart(registry: dict[str, str], tmp_path: Path) -> None:
    """`--live-url`: the production server (`mlops serve toy@champion --ab toy@challenger:0`) is the canary: each
    step sets its traffic split, and after the last one it serves the new champion, all in one process."""
    import subprocess
    import sys

    from mlops.core.registry import registry_client
    from mlops.deploy.rollout import RolloutOptions, rollout
    from mlops.recipe import load_recipe

    client = registry_client()
    client.set_registered_model_alias("toy", "champion", registry["stable"])
    client.set_registered_model_alias("toy", "challenger", registry["healthy"])
    port = free_port()
    out = tmp_path / "live.out"
    with open(out, "wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", "toy@champion", "--ab",
                                   "toy@challenger:0", "--port", str(port), "--reload-interval", "0", "--log",
                                   str(tmp_path / "live.sqlite")], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                  env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        wait_ready(port, server, 120, lambda: out.read_text()[-3000:], request_timeout=2)
        lines: list[str] = []
        with Traffic(port, two_rows=0.0) as traffic:
            result = rollout(load_recipe(RECIPE, FAST), "toy@challenger",
                             RolloutOptions(live_url=f"http://127.0.0.1:{port}", out=tmp_path / "rollout"),
                             report=lines.append)
            assert result.decision == "advance", "\n".join(lines)
            assert [s.percent for s in result.steps] == [1, 10, 50, 100]
            assert result.promoted and champion() == registry["healthy"]
            served = None
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/v2/models/toy")
            served = json.loads(conn.getresponse().read())["versions"]
        assert served == [registry["healthy"]]  # the same process now serves the new champion
        assert traffic.status.get(200, 0) > 0 and set(traffic.status) == {200}
        assert server.poll() is None  # never restarted
    finally:
        server.terminate()
        server.wait(timeout=30)
