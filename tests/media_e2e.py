"""What the image and text end-to-end tests share: a served model, its requests, and what `mlops stream`
wrote."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, cli_env
from tests.net import free_port, stop_process, wait_ready
from tests.shipped import ensure_example_data


def module_env(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path, prefect_api: str,
               name: str) -> dict[str, str]:
    """A test module's own MLflow store and cache (its tests share one trained model), with the example data."""
    ensure_example_data()
    return cli_env(tmp_path_factory.mktemp(name) / ".mlops", prefect_home, prefect_api)


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode("ascii")}


def post(port: int, path: str, body: Any, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def serving(model: str, env: dict[str, str], log: Path, *extra: str) -> Iterator[int]:
    """`mlops serve MODEL` as a user starts it; yields its port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "serve", model, "--port", str(port), "--log",
                             str(log), "--reload-interval", "0", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(port, proc, timeout=120)
        yield port
    finally:
        stop_process(proc)


def stream_outputs(client: Any, stream: str) -> dict[str, dict[str, str]]:
    """The predictions `mlops stream` wrote, by the id of the message they answer."""
    out = {}
    for _, fields in client.xrange(f"{stream}:predictions"):
        row = {k.decode(): v.decode() for k, v in fields.items()}
        out[row.get("source_id") or row.get("id", "")] = row
    return out
