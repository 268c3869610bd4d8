"""Servers the tests start as processes: a free port to put one on, waiting until it is ready, stopping it; and
the local Redis the stream tests use."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops.core.ports import free_port  # the tests' way to a port too (re-exported)


def is_ready(port: int, timeout: float = 1) -> bool:
    """Whether a server on 127.0.0.1:PORT answers GET /v2/health/ready with a 200 within `timeout` s."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen[Any], timeout: float = 60, tail: Callable[[], str] | None = None,
               *, request_timeout: float = 1, interval: float = 0.2) -> None:
    """Poll GET /v2/health/ready on 127.0.0.1:PORT every `interval` s until it answers 200; fail if `proc` exits
    first or `timeout` s pass. `tail` says what the server printed (by default its stdout pipe, once it exited)."""

    def said() -> str:
        if tail is not None:
            return tail()
        if proc.poll() is not None and proc.stdout is not None:
            return str(proc.stdout.read())
        return "(no output)"

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{said()}"
        if is_ready(port, request_timeout):
            return
        assert time.monotonic() < deadline, f"server not ready in {timeout} s:\n{said()}"
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10, kill_timeout: float = 10,
                 group: bool = False) -> None:
    """Terminate `proc` (with group=True its whole process group: start it with start_new_session=True), wait
    `timeout` s for it, then kill it and wait `kill_timeout` s more. Nothing if it has already exited."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=kill_timeout)


@dataclass
class LiveServer:
    """`mlops serve` running as a subprocess on a free port, its output in a file."""

    runtime: str  # mlops | kserve
    port: int
    proc: subprocess.Popen[bytes]
    output: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]


def start_server(runtime: str, command: Callable[[int], list[str]], output: Callable[[int], Path],
                 env: dict[str, str], start_timeout: float = 120, tries: int = 3) -> LiveServer:
    """`command(port)` started on a free port, its output in the file `output(port)`, once ready. The port is free
    when probed but not held: another xdist worker may take it first, so a server that cannot bind is started
    again on another port."""
    from tests.conftest import ROOT

    for _ in range(tries):
        port = free_port()
        with open(output(port), "wb") as out:  # a file, not a pipe: nobody has to drain it while a test runs
            proc = subprocess.Popen(command(port), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = LiveServer(runtime, port, proc, output(port))
        deadline = time.monotonic() + start_timeout
        while proc.poll() is None and time.monotonic() < deadline and not is_ready(port, 2):
            time.sleep(0.2)
        time.sleep(0.3)  # a server that lost the port exits at once: make sure the answer came from ours
        if proc.poll() is None and is_ready(port, 2):
            return server
        stop_process(proc, timeout=15, kill_timeout=15)
        if "address already in use" not in server.tail().lower():
            raise AssertionError(f"{runtime} server did not become ready on port {port}:\n{server.tail()}")
    raise AssertionError(f"{runtime} server: no free port in {tries} tries")


def serve_bundle(bundle: Path, tmp: Path, runtime: str = "mlops", args: tuple[str, ...] = (),
                 start_timeout: float = 120) -> Iterator[LiveServer]:
    """`mlops serve BUNDLE` (or `--runtime kserve`) with `args`, without the caller's MLOPS_SERVE_TOKEN, its
    workspace and log under `tmp`; yielded once ready, stopped however the caller ends."""
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_SERVE_TOKEN"} | {"MLOPS_HOME": str(tmp / ".mlops"),
                                                                             "PYTHONUNBUFFERED": "1"}
    extra = ["--runtime", "kserve"] if runtime == "kserve" else ["--log", str(tmp / "predictions.sqlite")]
    server = start_server(runtime, lambda port: [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port",
                                                 str(port), *args, *extra],
                          lambda port: tmp / f"server-{port}.out", env, start_timeout)
    try:
        yield server
    finally:
        stop_process(server.proc)


def start_prefect_server(home: Path, env: dict[str, str], log: Path, timeout: float = 180,
                         database_url: str | None = None) -> tuple[subprocess.Popen[Any], str]:
    """A real `prefect server start` on a free port (sqlite under `home`, or `database_url`), healthy; its API URL.
    Stop it with `stop_process(proc, group=True)`."""
    port = free_port()
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if json.loads(resp.read()) is True:
                    return proc, url
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            stop_process(proc, group=True)
            raise AssertionError(f"prefect server not healthy in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_client() -> Any:
    """A client of the local redis-server: the test is skipped on a machine without one, and fails in CI."""
    import pytest

    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"redis-server is not reachable at {REDIS_URL} (CI must provide it): {exc}")
        pytest.skip(f"redis-server is not reachable at {REDIS_URL}: {exc}")
    return client


def drop_stream(client: Any, name: str) -> None:
    """Delete a test's stream, its outputs and dead letters, and the consumer's dedupe markers."""
    client.delete(name, f"{name}:predictions", f"{name}:dead")
    for key in client.scan_iter(match=f"mlops:written:{name}*", count=1000):
        client.delete(key)


def prefect_api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One call of a Prefect server's REST API (`url` ends in /api): POST with a JSON body, else GET."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"content-type": "application/json"},
                                     method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())
