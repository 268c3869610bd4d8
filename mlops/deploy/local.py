"""A local stand-in for the cluster during a rollout: `mlops serve STABLE --ab CANARY:PERCENT` on one port,
restarted at each step's percentage (and with one model alone for a rollback or the new champion).

It is what KServe's traffic split does to requests, on one machine: the canary answers PERCENT % of request
keys and its requests carry variant `challenger` in `/metrics` and in the prediction log. The server is given
the versions' bundle directories (downloaded once), not registry references: a restart then takes a couple of
seconds instead of an MLflow import, at the price of an empty `version` column in the prediction log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mlops.errors import MlopsError

READY_TIMEOUT_S = 120


class LocalServe:
    def __init__(self, port: int, output: Path, bundle_of: Callable[[Any], Path], log: Path | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = port
        self.bundle_of = bundle_of
        self.host = host
        self.output = output
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def __call__(self, stable: Any, canary: Any, percent: int, manifest: Path) -> None:
        self.close()
        cmd = [sys.executable, "-m", "mlops.cli", "serve", str(self.bundle_of(stable)), "--host", self.host,
               "--port", str(self.port)]
        if canary is not None:
            cmd += ["--ab", f"{self.bundle_of(canary)}:{percent}"]
        if self.log is not None:
            cmd += ["--log", str(self.log)]
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.output, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=os.environ | {"PYTHONUNBUFFERED": "1"})
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise MlopsError(f"local `mlops serve` exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.close()
        raise MlopsError(f"local `mlops serve` on port {self.port} not ready within {READY_TIMEOUT_S} s:\n"
                         f"{self._tail()}")

    def _tail(self) -> str:
        try:
            return self.output.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no output)"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # graceful: the log is drained and closed
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
