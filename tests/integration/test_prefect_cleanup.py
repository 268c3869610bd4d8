"""Nothing left running: Prefect's temporary server dies with the `mlops run` that started it, even when that
process is killed with SIGKILL (no atexit handler runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlops.engine.prefect_server import pid_alive
from tests.conftest import ROOT, cli_env


def _children(pid: int) -> list[int]:
    """Every live process whose parent is `pid`."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _temporary_server(parent: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert parent.poll() is None, f"mlops run exited {parent.returncode} before Prefect's server started"
        for child in _children(parent.pid):
            if "prefect.server.api.server:create_app" in _cmdline(child):
                return child
        time.sleep(0.2)
    raise AssertionError(f"no temporary Prefect server under mlops run in {timeout} s")


def test_the_temporary_server_dies_with_a_killed_run(tmp_path: Path) -> None:
    env = cli_env(tmp_path / ".mlops", tmp_path / "prefect", None)  # no PREFECT_API_URL: the temporary server
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "mlops.cli", "run", "recipes/quickstart.yaml",
                                "trainer.max_epochs=1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    server = None
    try:
        server = _temporary_server(run, timeout=300)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 30  # generous for a loaded box: it takes well under a second when idle
        while pid_alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pid_alive(server), f"Prefect's temporary server (pid {server}) outlived its killed parent"
    finally:
        if run.poll() is None:
            run.kill()
        if server is not None and pid_alive(server):
            os.kill(server, signal.SIGKILL)
