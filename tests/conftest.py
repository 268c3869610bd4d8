"""Shared fixtures. Every test gets its own MLOPS_HOME; CLI tests run `mlops` as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home per test process: its temporary server's database is migrated once (~15 s), not
    per test. Tests in one xdist worker run one at a time, so its server never has two users."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def isolated_env(tmp_path: Path, prefect_home: Path) -> dict[str, str]:
    """Environment for a CLI subprocess: its own MLflow store and cache; the worker's Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "MLOPS_"))}
    env |= {
        "MLOPS_HOME": str(tmp_path / ".mlops"),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
