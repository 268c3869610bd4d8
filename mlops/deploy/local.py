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

from mlops.core.errors import MlopsError
from mlops.core.retry import transient_http, with_retries

READY_TIMEOUT_S = 120


class LocalServe:
    def __init__(self, port: int, output: Path, bundle_of: Callable[[Any], Path], log: str | Path | None = None,
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


class LiveServe:
    """The live server as the canary: `mlops serve NAME@champion --ab NAME@challenger:0` already running at
    `url`; each step sets the challenger's share of request keys on it (`POST .../traffic`), with no restart.
    Its arms follow their aliases, so before moving traffic it makes the server re-resolve them and checks it
    serves the versions the rollout is about: a wrong server is an error, never a silent canary."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url.rstrip("/")
        self.name = name

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import json

        # the traffic split left the repository namespace (mlops serve's own route since 0.2)
        route = (f"/mlops/v1/models/{self.name}/traffic" if path == "traffic"
                 else f"/v2/repository/models/{self.name}/{path}")
        request = urllib.request.Request(f"{self.url}{route}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"content-type": "application/json", **_auth()})

        def post() -> dict[str, Any]:
            with urllib.request.urlopen(request, timeout=120) as resp:
                return dict(json.loads(resp.read()))

        try:  # both routes are idempotent (re-resolve the aliases, set a share): a repeat does no harm
            return with_retries(post, f"POST {path} to the live server at {self.url}", transient=_unanswered)
        except urllib.error.HTTPError as exc:
            raise MlopsError(f"the live server at {self.url} refused {path}: {exc.code} "
                             f"{exc.read().decode(errors='replace')[:500]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise MlopsError(f"no live server answers at {self.url} ({exc})") from None

    def reload(self) -> list[dict[str, Any]]:
        """Make the server re-resolve its aliases now; the changes it made."""
        return list(self._post("load", {})["changes"])

    def __call__(self, stable: Any, canary: Any, percent: int, manifest: Path) -> None:
        if canary is None:  # rollback, or the new champion alone: the challenger answers nothing
            self.reload()  # a promotion moved `champion`: serve it now, not at the next periodic check
            self._post("traffic", {"percent": 0})
            return
        state = self._post("load", {})["traffic"]
        serving = (state["champion"]["version"], (state["challenger"] or {}).get("version"))
        if serving != (stable.version, canary.version):
            raise MlopsError(f"the live server at {self.url} serves champion {serving[0]} and challenger {serving[1]}, "
                             f"not {stable.version} and {canary.version}: start it as `mlops serve "
                             f"{self.name}@champion --ab {self.name}@challenger:0` (its arms follow the aliases)")
        self._post("traffic", {"percent": percent})

    def close(self) -> None:
        """The live server is not ours to stop."""


def _unanswered(exc: BaseException) -> bool:
    """Transient, but not a timeout: a control call that ran 120 s is not helped by a second one."""
    return transient_http(exc) and not isinstance(getattr(exc, "reason", exc), TimeoutError)


def _auth() -> dict[str, str]:
    token = os.environ.get("MLOPS_SERVE_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}
