"""A worker on "another host" dies with kill -9: its RUNNING trial stops beating, Optuna's stale-trial check
fails it, and it is queued again with the same parameters for a live worker to take over.

The dead worker is a real process on a real PostgreSQL study; only its owner id names another host, so this
host's pid check (which would find it dead at once) stays out of it and the heartbeat alone must tell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from mlops.sweep import study as study_mod
from mlops.sweep.study import DIED, ERROR, OWNER, RETRY_OF, counts, rdb_storage, recover_orphans
from tests.conftest import ROOT
from tests.postgres import throwaway_url

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_url("mlops_heartbeat", "postgresql+psycopg2") as url:
        yield url


WORKER = textwrap.dedent("""
    import sys, time
    import optuna
    from mlops.sweep import study as sm

    sm.HEARTBEAT_S, sm.STALE_S = 1, 2
    sm.owner = lambda: "another-host:4242"  # a worker elsewhere: this host cannot check its pid
    study = optuna.load_study(study_name="hb", storage=sm.rdb_storage(sys.argv[1]))
    sm.start_heartbeat(study)
    trial = study.ask()
    trial.suggest_float("model.lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr(sm.OWNER, sm.owner())
    print(trial.number, flush=True)
    time.sleep(600)  # "training", until killed
""")


def test_a_dead_remote_workers_trial_is_failed_and_retried(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study_mod, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_mod, "STALE_S", 2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="hb", storage=rdb_storage(pg_url))
    worker = subprocess.Popen([sys.executable, "-c", WORKER, pg_url], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        assert worker.stdout is not None
        number = int(worker.stdout.readline())
        # alive and beating: well past the grace period, the trial is left alone
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert recover_orphans(study) == []
            time.sleep(0.5)
        trial = study.get_trials()[number]
        assert trial.state == TrialState.RUNNING and trial.user_attrs[OWNER] == "another-host:4242"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        killed_at = time.monotonic()
        requeued: list[int] = []
        while not requeued:
            assert time.monotonic() - killed_at < 15, "the dead worker's trial was never failed"
            requeued = recover_orphans(study)
            time.sleep(0.3)
        # failed within the grace period plus one beat (and the database clock's whole seconds)
        assert requeued == [number] and time.monotonic() - killed_at < 2 + 1 + 2
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    dead = study.get_trials()[number]
    assert dead.state == TrialState.FAIL and dead.user_attrs[ERROR].startswith(DIED)
    assert counts(study)["failed"] == 0 and counts(study)["waiting"] == 1  # a death does not use up the budget
    # a live worker's next ask takes the dead trial over, with its parameters
    retry = study.ask()
    assert retry.user_attrs[RETRY_OF] == number
    assert retry.suggest_float("model.lr", 1e-4, 1e-1, log=True) == dead.params["model.lr"]
    study.tell(retry, 0.5)
    assert counts(study)["complete"] == 1 and recover_orphans(study) == []
