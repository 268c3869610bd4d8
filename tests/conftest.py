"""Shared fixtures. Every test gets its own MLOPS_HOME; CLI tests run `mlops` as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import start_prefect_server, stop_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home per test process: its database is migrated once (~15 s), not per test."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="session")
def prefect_api(prefect_home: Path) -> Iterator[str]:
    """One real `prefect server` per test process, shared by every CLI subprocess of its tests (they run one at
    a time): without it each `mlops run` starts Prefect's temporary server, ~9 s of every run. The temporary
    server keeps its own tests (test_ddp.py, test_mlflow_server.py), and `make demo` uses it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "MLOPS_"))}
    proc, url = start_prefect_server(prefect_home / "server", env, prefect_home / "server.log")
    yield url
    stop_process(proc, timeout=30, group=True)


def cli_env(mlops_home: Path, prefect_home: Path, prefect_api: str | None) -> dict[str, str]:
    """Environment for a CLI subprocess: its own MLflow store and cache; the worker's Prefect server, or with
    `prefect_api=None` Prefect's temporary server (what a user gets by default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "MLOPS_"))}
    env |= {
        "MLOPS_HOME": str(mlops_home),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240",  # its default 20 s is too tight on a busy box
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
        # `mlops server stop` stops this user's warm run workers: a test's must never reach the developer's
        "MLOPS_WARM_DIR": str(mlops_home.parent / "warm-workers"),
    }
    if prefect_api is not None:
        env["PREFECT_API_URL"] = prefect_api
    return env


@pytest.fixture
def isolated_env(tmp_path: Path, prefect_home: Path, prefect_api: str) -> dict[str, str]:
    return cli_env(tmp_path / ".mlops", prefect_home, prefect_api)


def run_cli(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
