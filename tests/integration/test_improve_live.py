"""The improvement loop against a live `mlops serve` on loopback and a real MLflow registry (sqlite): the shadow
check counts exactly what the server counted, feedback posted over HTTP reaches the refreshed training data,
and a retrain walks shadow -> canary steps -> champion (or rolls back) while traffic flows, deciding each
stage on the server's own prediction log. Training is replaced by registering a prebuilt bundle (torch-free);
the engine's training is in tests/e2e/test_improve_retrain.py."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.improve.audit import AuditLog
from mlops.improve.registry import MlflowRegistry
from mlops.improve.retrain import RetrainOptions, Trained, retrain_recipe
from mlops.improve.rollout import LogRollout, RolloutTarget
from mlops.recipe.improve import ShadowStageConfig
from tests.conftest import ROOT
from tests.improve_fixtures import champion_verdict, toy_recipe
from tests.net import free_port, stop_process, wait_ready
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration
START_TIMEOUT = 120


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"} | (headers or {}))
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read()), dict(resp.headers)


def truth(row: dict[str, Any]) -> str:
    """The rule tests.serve_fixtures.training_frame labels by."""
    return "yes" if row["age"] + (row["city"] == "a") * 10 > 42 else "no"


class LiveServer:
    """`mlops serve` on one port, restarted with other models as a rollout moves traffic."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = home / "serve.out"
        self.starts: list[list[str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> None:
        self.stop()
        cmd = [sys.executable, "-m", "mlops.cli", "serve", *args, "--port", str(self.port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
        env |= {"MLOPS_HOME": str(self.home / ".mlops"), "PYTHONUNBUFFERED": "1"}
        with self.output.open("ab") as sink:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        wait_ready(self.port, self.proc, START_TIMEOUT, self.tail)
        self.starts.append(list(args))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=20)  # terminate first, graceful: the log is drained
        self.proc = None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return r.read().decode()

    def tail(self) -> str:
        """What the server printed, its last lines."""
        return self.output.read_text(errors="replace")[-3000:] if self.output.exists() else "(no output)"


class Traffic:
    """Requests with random keys at a steady pace, each answered one followed by its ground truth."""

    def __init__(self, server: LiveServer, seed: int = 0) -> None:
        self.server, self.rng = server, random.Random(seed)
        self.answered: list[tuple[str, dict[str, Any], str]] = []  # id, row, variant
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def send(self, n: int) -> None:
        """n requests, each answered: the server is not restarting, so a failure is the test's to report."""
        for _ in range(n):
            self._one(restarting=False)

    def _one(self, restarting: bool = True) -> None:
        rid = f"q{len(self.answered)}-{self.rng.randrange(10**9)}"
        row = {"age": self.rng.uniform(20, 70), "income": self.rng.uniform(20, 80), "city": self.rng.choice("abc")}
        try:
            _, _, headers = post(f"{self.server.url}/v1/models/toy:predict", {"id": rid, "instances": [row]},
                                 {"X-Request-Key": rid})
            post(f"{self.server.url}/v1/feedback", {"id": rid, "label": truth(row)})
        except (OSError, urllib.error.URLError) as exc:
            if not restarting:  # a request skipped here once left a shadow check one row short, unexplained
                raise AssertionError(f"request {rid} failed: {exc!r}\n{self.server.tail()}") from exc
            time.sleep(0.05)  # the server is restarting for the next stage
            return
        variant = {k.lower(): v for k, v in headers.items()}.get("x-model-variant", "")
        self.answered.append((rid, row, variant))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._one()
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    return tmp_path


@pytest.fixture
def registry(home: Path) -> MlflowRegistry:
    """toy/1 (champion) and toy/2 (challenger) in a real MLflow store, as `mlops run` would leave them."""
    from mlops.core.registry import tracking_uri

    reg = MlflowRegistry(tracking_uri())
    for seed in (1, 2):
        register(reg, build_bundle(home / f"bundle{seed}" / "bundle", "toy", weights_seed=seed), f"sha256:seed{seed}")
    assert reg.aliases("toy") == {CHAMPION: "1", CHALLENGER: "2"}
    return reg


def register(reg: MlflowRegistry, bundle: Path, fingerprint: str) -> tuple[str, str]:
    from mlops.core.registry import experiment_id
    from mlops.package.registry import register_bundle

    run_id = reg.client.create_run(experiment_id(reg.client, "toy", reg.uri)).info.run_id
    reg.client.log_artifacts(run_id, str(bundle), "bundle")
    done = register_bundle(reg.client, reg.uri, run_id, "toy", bundle, {"data_fingerprint": fingerprint,
                                                                         "gates": "passed"})
    reg.client.set_terminated(run_id)
    return str(done["model_version"]), run_id


@pytest.fixture
def server(home: Path) -> Iterator[LiveServer]:
    live = LiveServer(home, free_port())
    yield live
    live.stop()


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_the_shadow_check_reads_what_the_live_server_logged(registry: MlflowRegistry, server: LiveServer,
                                                            home: Path) -> None:
    server.start("toy@champion", "--shadow", "toy/2")
    traffic = Traffic(server, seed=1)
    traffic.send(80)
    shadow_rows = metric(server.metrics(), "mlops_shadow_rows_total")
    deadline = time.monotonic() + 30
    while shadow_rows < 80 and time.monotonic() < deadline:  # the shadow answers after the response
        time.sleep(0.2)
        shadow_rows = metric(server.metrics(), "mlops_shadow_rows_total")
    counted = metric(server.metrics(), "mlops_shadow_disagreements_total")
    target = RolloutTarget("toy", "2", "1", home / ".mlops" / "predictions" / "toy.sqlite", max_accuracy_drop=1.0,
                           poll_s=0.2)
    def watch() -> LogRollout:  # each stage "starts" at time 0, before the traffic: every row counts
        calls = iter([0.0])
        return LogRollout(clock=lambda: next(calls, time.time()))

    result = watch().shadow(target, ShadowStageConfig(min_rows=80, max_disagreement=1.0, timeout_s=10))
    assert result.passed, f"{result.summary} (the server's shadow counter: {shadow_rows:.0f})\n{server.tail()}"
    assert result.evidence["paired_rows"] == 80 == shadow_rows
    assert result.evidence["disagreements"] == counted > 0  # the two seeds' models do disagree
    accuracy = result.evidence["accuracy"]
    assert accuracy["n"] == 80 and accuracy["test"] == "mcnemar"
    strict = watch().shadow(target, ShadowStageConfig(min_rows=80, max_disagreement=0.0, timeout_s=10))
    assert not strict.passed and "disagreed with the served model" in strict.summary
    starved = watch().shadow(target, ShadowStageConfig(min_rows=500, timeout_s=0.5))
    assert not starved.passed and starved.summary.startswith("timed out after 0.5 s: only 80 shadow rows")


def test_a_retrain_walks_shadow_and_canary_against_the_live_server(registry: MlflowRegistry, server: LiveServer,
                                                                   home: Path) -> None:
    recipe = toy_recipe(home / "project")
    server.start("toy@champion")
    traffic = Traffic(server, seed=2)
    traffic.send(40)  # production traffic with ground truth: the refresh's labelled rows

    def train(loaded: Any, overrides: list[str], fingerprint: str, reg: Any) -> Trained:
        version, run_id = register(reg, build_bundle(home / "bundle3" / "bundle", "toy", weights_seed=3), fingerprint)
        return Trained(True, run_id, version, [champion_verdict(0.01, 0.04)], [])

    def move(target: RolloutTarget, stage: str, percent: int) -> None:  # what KServe's traffic split would do
        if stage == "shadow":
            server.start("toy@champion", "--shadow", f"toy/{target.version}")
        elif stage == "canary":
            server.start("toy@champion", "--ab", f"toy/{target.version}:{percent}")
        else:
            server.start("toy@champion")

    overrides = ["improve.promotion.policy=auto", "improve.rollout.shadow.min_rows=30",
                 "improve.rollout.shadow.max_disagreement=1", "improve.rollout.max_accuracy_drop=1",
                 "improve.rollout.poll_s=0.2", "deploy.rollout.steps=[50,100]", "deploy.rollout.checks.min_requests=20"]
    audit = AuditLog()
    with Traffic(server, seed=3) as during:
        result = retrain_recipe(str(recipe), overrides, "accuracy dropped on the dashboard",
                                RetrainOptions(by="user:dana"), trainer=train, rollout=LogRollout(set_traffic=move),
                                registry=registry, audit=audit)
    assert result.outcome == "promoted", result.message
    assert registry.aliases("toy")[CHAMPION] == "3" and result.champion == "3"
    assert [(s.stage, s.percent, s.passed) for s in result.stages] == [
        ("shadow", None, True), ("canary", 50, True), ("canary", 100, True)]
    assert server.starts[1:] == [["toy@champion", "--shadow", "toy/3"], ["toy@champion", "--ab", "toy/3:50"],
                                 ["toy@champion", "--ab", "toy/3:100"], ["toy@champion"]]
    # the feedback posted over HTTP is the refreshed data's production rows, with the labels posted
    import pandas as pd

    assert result.refresh is not None and result.refresh.lineage and result.refresh.path
    lineage = json.loads(Path(result.refresh.lineage).read_text())
    ids = lineage["production"]["ids"]
    posted = {rid: row for rid, row, _ in traffic.answered + during.answered}
    assert {rid for rid, _, _ in traffic.answered} <= set(ids) <= set(posted)
    rows = pd.read_parquet(result.refresh.path).iloc[200:]
    assert list(rows["y"]) == [truth(posted[rid]) for rid in ids]
    assert list(rows["age"]) == pytest.approx([posted[rid]["age"] for rid in ids], rel=1e-6)  # logged as float32
    # recorded in MLflow: the version's decision and stages, the champion history, the lineage artifact
    version = registry.client.get_model_version("toy", "3")
    assert version.tags["mlops.improve.decision"] == "promoted"
    assert version.tags["mlops.improve.decided_by"] == "policy:auto"
    assert version.tags["mlops.improve.stage.canary_50"].startswith("passed: ")
    assert version.tags["mlops.improve.requested_by"] == "user:dana"
    from mlops.package.registry import champion_history

    last = champion_history(registry.client, "toy")[-1]
    assert (last["version"], last["previous"], last["by"]) == ("3", "1", "policy:auto")
    assert {a.path for a in registry.client.list_artifacts(result.run_id, "improve")} == {
        f"improve/{Path(result.refresh.lineage).name}"}
    assert [r["event"] for r in audit.records()][-3:] == ["stage", "stage", "promoted"]


def test_a_canary_that_never_gets_traffic_rolls_back(registry: MlflowRegistry, server: LiveServer,
                                                     home: Path) -> None:
    recipe = toy_recipe(home / "project")
    server.start("toy@champion")
    Traffic(server, seed=4).send(20)

    def train(loaded: Any, overrides: list[str], fingerprint: str, reg: Any) -> Trained:
        version, run_id = register(reg, build_bundle(home / "bundle3" / "bundle", "toy", weights_seed=3), fingerprint)
        return Trained(True, run_id, version, [champion_verdict(0.01, 0.04)], [])

    overrides = ["improve.promotion.policy=auto", "improve.rollout.shadow.enabled=false",
                 "improve.rollout.poll_s=0.2", "deploy.rollout.steps=[50,100]", "deploy.rollout.window_s=1",
                 "deploy.rollout.max_windows=1"]
    result = retrain_recipe(str(recipe), overrides, "drift", trainer=train, rollout=LogRollout(), registry=registry,
                            audit=AuditLog())  # nobody routes traffic to the canary
    assert result.outcome == "rolled_back" and "only 0 challenger answers at 50 %" in result.message
    assert registry.aliases("toy") == {CHAMPION: "1", CHALLENGER: "2"}  # the challenger alias went back to 2


def test_the_deploy_phase_walks_the_canary_steps_when_it_is_installed(registry: MlflowRegistry, server: LiveServer,
                                                                      home: Path) -> None:
    """The default strategy hands the canary steps to `mlops.deploy.rollout` (its local `mlops serve --ab` on
    the port, judged on the server's /metrics), and moves champion itself once every step passed."""
    from mlops.improve.rollout import DeployRollout, default_rollout

    recipe = toy_recipe(home / "project")
    server.start("toy@champion")
    Traffic(server, seed=5).send(20)
    server.stop()  # the deploy phase starts its own server on this port

    def train(loaded: Any, overrides: list[str], fingerprint: str, reg: Any) -> Trained:
        version, run_id = register(reg, build_bundle(home / "bundle3" / "bundle", "toy", weights_seed=3), fingerprint)
        return Trained(True, run_id, version, [champion_verdict(0.01, 0.04)], [])

    overrides = ["improve.promotion.policy=auto", "improve.rollout.shadow.enabled=false",
                 "deploy.rollout.steps=[50,100]", "deploy.rollout.window_s=2", "deploy.rollout.max_windows=15",
                 "deploy.rollout.checks.min_requests=20", "deploy.rollout.checks.max_p99_ms=null"]
    from mlops.engine.validate import load_validated

    assert isinstance(default_rollout(load_validated(recipe, overrides), local_port=server.port), DeployRollout)
    with Traffic(server, seed=6) as during:
        result = retrain_recipe(str(recipe), overrides, "drift", RetrainOptions(rollout_options={"local_port": server.port}),
                                trainer=train, registry=registry, audit=AuditLog())
    assert result.outcome == "promoted", result.message
    assert [(s.stage, s.percent, s.passed) for s in result.stages] == [("canary", 50, True), ("canary", 100, True)]
    assert registry.aliases("toy")[CHAMPION] == "3"
    assert {variant for _, _, variant in during.answered} == {"champion", "challenger"}
