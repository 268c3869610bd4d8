"""The local Prefect server a command starts when PREFECT_API_URL names none: started once, found running by the
next command, reported by `mlops server status`, stopped by `mlops server stop`, replaced when its record is
stale; and a `mlops run` through it is a real flow run on it. A real `prefect server start`, nothing faked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops.core.ports import port_free
from mlops.engine.prefect_server import ServerState, healthy, pid_alive
from tests.conftest import ROOT, cli_env, last_json, run_cli
from tests.net import prefect_api

ENSURE = ("import os; from mlops.engine.prefect_server import ensure_server; "
          "print(ensure_server()); print(os.environ.get('PREFECT_API_URL'))")


@pytest.fixture(scope="module")
def local_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A user's environment: no PREFECT_API_URL, its own Prefect home (one database migration for the module).
    Whatever server the tests leave is stopped."""
    tmp = tmp_path_factory.mktemp("local-prefect")
    env = cli_env(tmp / ".mlops", tmp / "prefect", None)
    env["MLOPS_PREFECT_SERVER"] = "local"  # a local server started on first use, kept across commands
    yield env
    run_cli(["server", "stop", "--timeout", "10"], env, timeout=120)
    state = _state(env)
    if state is not None and pid_alive(state.pid):  # the CLI could not: do not leave it running
        os.killpg(state.pid, signal.SIGKILL)


def _state_file(env: dict[str, str]) -> Path:
    return Path(env["PREFECT_HOME"]) / "mlops-server.json"


def _state(env: dict[str, str]) -> ServerState | None:
    path = _state_file(env)
    return ServerState.parse(path.read_text()) if path.exists() else None


def _ensure(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-c", ENSURE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_started_once_reused_reported_and_stopped(local_env: dict[str, str]) -> None:
    first = _ensure(local_env)
    url, exported = first.stdout.split()[-2:]  # after what it said
    assert exported == url  # this process (and its children) now use it
    assert "started a local Prefect server" in first.stdout + first.stderr
    state = _state(local_env)
    assert state is not None and state.url == url and pid_alive(state.pid)
    assert prefect_api(url, "/health") is True

    second = _ensure(local_env)
    assert second.stdout.split()[-2:] == [url, url]
    assert "started a local Prefect server" not in second.stdout + second.stderr
    assert _state(local_env) == state  # the same server, not a new one

    status = last_json(run_cli(["server", "status", "--json"], local_env))
    assert status["running"] is True and status["pid"] == state.pid and status["url"] == url
    assert status["log"] == state.log and Path(state.log).is_file()

    stopped = last_json(run_cli(["server", "stop", "--json"], local_env))
    assert stopped == {"stopped": True, "pid": state.pid, "url": url, "warm_workers_stopped": 0}
    assert not pid_alive(state.pid)
    assert port_free(state.port)
    assert not _state_file(local_env).exists()
    assert last_json(run_cli(["server", "status", "--json"], local_env))["running"] is False


def test_a_stale_record_is_replaced(local_env: dict[str, str]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    home = Path(local_env["PREFECT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stale = ServerState(pid=gone.pid, port=9, url="http://127.0.0.1:9/api", prefect_home=str(home),
                        log=str(home / "mlops-server.log"), started_at=0, mlops_version="0", prefect_version="0")
    _state_file(local_env).write_text(stale.to_json())
    url = _ensure(local_env).stdout.split()[-1]
    state = _state(local_env)
    assert state is not None and state.pid != gone.pid and state.url == url and pid_alive(state.pid)
    assert prefect_api(url, "/health") is True


def test_a_run_is_a_flow_run_on_the_local_server(local_env: dict[str, str]) -> None:
    before = _state(local_env)  # the previous test's server, when it ran first; else this run starts one
    summary = last_json(run_cli(["run", "--json", "recipes/quickstart.yaml", "trainer.max_epochs=1"], local_env))
    state = _state(local_env)
    assert state is not None and pid_alive(state.pid)
    if before is not None:
        assert state.pid == before.pid  # found running, reused
    runs = prefect_api(state.url, "/flow_runs/filter", {"flow_runs": {"name": {"like_": "quickstart"}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    tasks = prefect_api(state.url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    assert {t["name"].rsplit("-", 1)[0] for t in tasks} >= set(summary["cache"])
    assert json.loads(json.dumps(summary))["run_id"]


def test_a_server_nobody_can_find_stops_itself(local_env: dict[str, str]) -> None:
    """Its state file gone (its Prefect home was a deleted temporary directory): it would run on for good."""
    _ensure(local_env)
    state = _state(local_env)
    assert state is not None and pid_alive(state.pid)
    _state_file(local_env).unlink()
    # the supervisor looks every 5 s, then gives the server 30 s to stop before killing it; on a loaded CI machine
    # 60 s once did not cover that (21 s quiet), so the bound is generous: the test is that it stops at all
    deadline = time.monotonic() + 150
    while pid_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pid_alive(state.pid)
    assert not healthy(state.url)
