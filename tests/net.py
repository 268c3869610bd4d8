"""Servers the tests start as processes: a free port to put one on, waiting until it is ready, stopping it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A port on 127.0.0.1 that was free when probed (not held: start the server on it at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
