"""Warm runs (mlops/cli/warm.py, `MLOPS_WARM_RUNS=1`): `mlops run` forked from a worker kept between commands
gives what a run in its own process gives (a real Prefect flow run, the same cached results, exit codes and
errors), reuses one worker per environment, and leaves no run behind when its command is killed."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops.cli import warm
from mlops.engine.prefect_server import pid_alive
from tests.conftest import ROOT, last_json, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("warm-runs")]

QUICK = ["recipes/quickstart.yaml", "trainer.max_epochs=2"]


@pytest.fixture
def warm_env(isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    # a short directory of its own: a socket's path is limited to 107 bytes (pytest's are long), and the workers
    # it holds are stopped at the end without touching any other test's
    workers = tempfile.mkdtemp(prefix="mw-", dir="/tmp")
    monkeypatch.setenv(warm.DIR_ENV, workers)
    yield isolated_env | {warm.SWITCH: "1", warm.DIR_ENV: workers, warm.IDLE_ENV: "300"}
    warm.stop_workers()
    shutil.rmtree(workers, ignore_errors=True)


def _forks(env: dict[str, str]) -> list[tuple[int, str]]:
    """(run pid, command) of every run the workers of `env` forked, from their logs."""
    found = []
    for log in sorted(Path(env[warm.DIR_ENV]).glob("*.log")):
        found += [(int(m[1]), m[2]) for m in re.finditer(r"run pid (\d+): mlops (.*)", log.read_text())]
    return found


def _workers(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env[warm.DIR_ENV]).glob("*.sock"))


def test_runs_fork_from_one_worker_and_answer_as_runs_of_their_own(warm_env: dict[str, str]) -> None:
    first = run_cli(["run", "--json", *QUICK], warm_env)
    trained = last_json(first)
    assert "started a warm worker" in first.stderr
    assert trained["cache"]["train"] == "ran"
    # in its own process (the gate runs again: there is a champion now), then warm again: fully cached
    own = last_json(run_cli(["run", "--json", *QUICK], {k: v for k, v in warm_env.items() if k != warm.SWITCH}))
    assert len(_forks(warm_env)) == 1  # not through the worker
    again = run_cli(["run", "--json", *QUICK], warm_env | {"_": "/usr/bin/env", "SHLVL": "3"})  # another shell
    cached = last_json(again)
    assert "started a warm worker" not in again.stderr, again.stderr
    assert len(_workers(warm_env)) == 1
    forks = _forks(warm_env)
    assert [cmd for _, cmd in forks] == [f"run --json {' '.join(QUICK)}"] * 2
    assert forks[0][0] != forks[1][0]  # a process per run
    # a real Prefect flow run, its steps reused from the cache as a run in its own process would
    assert "Flow run" in again.stderr and "Finished in state Completed" in again.stderr
    assert {k for k, v in cached["cache"].items() if v == "ran"} == {"register"}
    assert cached["metrics"] == own["metrics"] == trained["metrics"]
    assert len({cached["run_id"], own["run_id"], trained["run_id"]}) == 3

    # a user's mistake: the same one line and exit code as in its own process, no traceback
    typo = run_cli(["run", "recipes/quickstart.yaml", "trainer.max_epoch=3"], warm_env)
    assert typo.returncode == 2, typo.stderr
    assert "did you mean 'trainer.max_epochs'" in typo.stderr and "Traceback" not in typo.stderr
    assert len(_forks(warm_env)) == 3

    # a changed variable: another worker (libraries read some when imported)
    other = run_cli(["run", "recipes/quickstart.yaml", "trainer.max_epoch=3"], warm_env | {"MLOPS_X": "1"})
    assert other.returncode == 2 and "started a warm worker" in other.stderr
    assert len(_workers(warm_env)) == 2
    assert warm.stop_workers() == 2
    deadline = time.monotonic() + 30
    while _workers(warm_env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _workers(warm_env)  # each removed its socket on the way out


def _started_run(env: dict[str, str], args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _forks(env) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert _forks(env), proc.communicate()
    return proc, _forks(env)[-1][0]


def test_a_killed_command_takes_its_run_with_it_and_ctrl_c_reaches_the_run(warm_env: dict[str, str]) -> None:
    long = ["recipes/quickstart.yaml", "trainer.max_epochs=500", "trainer.early_stopping=null"]
    proc, run_pid = _started_run(warm_env, long)
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 30
    while pid_alive(run_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(run_pid)

    runs = Path(warm_env["MLOPS_HOME"]) / "runs" / "quickstart"
    before = set(runs.glob("*")) if runs.is_dir() else set()
    proc, run_pid = _started_run(warm_env, long)
    # Ctrl-C once the run is under way, in training (Lightning turns it into exit(1), which the train step gives
    # back as the interrupt it was): not in MLflow's first opening of a fresh store, where a KeyboardInterrupt
    # landing inside a weakref callback run by the garbage collector (SQLAlchemy's mappers') is printed as
    # "Exception ignored" and lost, as in any Python program
    deadline = time.monotonic() + 120
    while not set(runs.glob("*")) - before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert not pid_alive(run_pid)
    assert len(_workers(warm_env)) == 1  # the worker goes on


def test_no_worker_to_be_had_runs_the_command_in_its_own_process(warm_env: dict[str, str], tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    proc = run_cli(["run", "recipes/quickstart.yaml", "trainer.max_epoch=3"], warm_env | {warm.DIR_ENV: str(blocked)})
    assert proc.returncode == 2
    assert "warm runs unavailable" in proc.stderr and "did you mean 'trainer.max_epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_worker_key_ignores_a_shells_bookkeeping_and_the_workspace_only() -> None:
    env = {"PATH": "/bin", "HOME": "/root", "_": "/usr/bin/python", "SHLVL": "1", "MLOPS_HOME": "/a"}
    key = warm.worker_key(env, "/work")
    assert warm.worker_key(env | {"_": "/usr/bin/timeout", "SHLVL": "2", "OLDPWD": "/", "MLOPS_HOME": "/b"},
                           "/work") == key
    assert warm.worker_key(env | {"MLFLOW_TRACKING_URI": "sqlite:///x.db"}, "/work") != key
    assert warm.worker_key(env, "/elsewhere") != key
