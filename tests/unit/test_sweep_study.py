"""Study bookkeeping: which RUNNING trials are orphans, and what a resumed study re-runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mlops.sweep import study as study_mod
from mlops.sweep.study import (
    DIED,
    ERROR,
    OWNER,
    RETRY_OF,
    as_overrides,
    counts,
    finished,
    owner,
    recover_orphans,
    step_aside,
    surplus,
)


def dead_owner() -> str:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return owner().rsplit(":", 1)[0] + ":" + proc.stdout.strip()  # this host, a pid that has exited


def test_recover_orphans_requeues_only_dead_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    dead, ownerless, live, elsewhere = (study.ask() for _ in range(4))
    for t in (dead, ownerless, live, elsewhere):
        t.suggest_float("lr", 1e-4, 1e-1, log=True)
    dead.set_user_attr(OWNER, dead_owner())
    live.set_user_attr(OWNER, owner())
    elsewhere.set_user_attr(OWNER, "another-host:1")
    monkeypatch.setattr(study_mod, "ORPHAN_GRACE_S", 0)  # the ownerless trial counts as old

    requeued = recover_orphans(study)

    assert sorted(requeued) == sorted([dead.number, ownerless.number])
    states = {t.number: t.state for t in study.get_trials()}
    assert states[live.number] == states[elsewhere.number] == TrialState.RUNNING
    assert states[dead.number] == states[ownerless.number] == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[RETRY_OF] for t in waiting) == sorted(requeued)
    assert {t.user_attrs[RETRY_OF]: t.system_attrs["fixed_params"]["lr"] for t in waiting} == {
        dead.number: dead.params["lr"], ownerless.number: ownerless.params["lr"]}
    # a dead process's trial does not use up the budget; a trial that raised does
    assert counts(study)["failed"] == 0 and finished(study) == 0
    failing = study.ask()
    failing.set_user_attr(ERROR, "RuntimeError: boom")
    study.tell(failing, state=TrialState.FAIL)
    assert counts(study)["failed"] == 1 and study.get_trials()[dead.number].user_attrs[ERROR] == DIED


def test_of_two_processes_asking_for_the_last_trial_at_once_the_later_steps_aside() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    budget = 3
    first = study.ask()
    study.tell(first, 1.0)
    died = study.ask()  # a dead process's trial, queued again: the copy takes its place in the budget
    died.set_user_attr(ERROR, DIED)
    study.tell(died, state=TrialState.FAIL)
    study.enqueue_trial({}, user_attrs={RETRY_OF: died.number})
    # both saw one complete and one waiting trial, room for one more, and asked at the same moment
    retry, coordinator, worker = study.ask(), study.ask(), study.ask()
    assert retry.user_attrs[RETRY_OF] == died.number
    assert [surplus(study, t, budget) for t in (retry, coordinator, worker)] == [False, False, True]
    step_aside(study, worker)
    after = counts(study)
    assert after == {"complete": 1, "pruned": 0, "failed": 0, "running": 2, "waiting": 0}
    assert finished(study) + after["running"] == budget
    assert study.get_trials()[worker.number].state == TrialState.FAIL
    assert not surplus(study, coordinator, budget) and surplus(study, coordinator, 2)


def test_a_young_ownerless_trial_is_left_alone() -> None:
    study = optuna.create_study()
    study.ask()
    assert recover_orphans(study) == []


def test_parameters_become_hydra_overrides() -> None:
    assert as_overrides({"model.lr": 0.01, "model.hidden": "[128,64]", "model.optimizer": "adamw",
                         "trainer.max_epochs": 7}) == [
        "model.lr=0.01", "model.hidden=[128,64]", 'model.optimizer="adamw"', "trainer.max_epochs=7"]


def test_study_report_on_the_parent_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from mlops.sweep.report import log_study

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("model.lr", 1e-4, 1e-1, log=True) * 10
                   - t.suggest_int("trainer.max_epochs", 2, 9) / 100, n_trials=6)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id

    log_study(client, run_id, study)

    run = client.get_run(run_id)
    assert run.data.metrics["best/value"] == study.best_value
    assert run.data.metrics["trials/complete"] == 6
    assert run.data.tags["mlops.best_trial"] == str(study.best_trial.number)
    assert run.data.tags["mlops.best.model.lr"] == str(study.best_params["model.lr"])
    plots = {a.path for a in client.list_artifacts(run_id, "study")}
    assert plots == {"study/optimization_history.png", "study/param_importances.png"}
