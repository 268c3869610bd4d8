"""A run's data set input when another run of the same data logs it at the same moment: MLflow looks the data set
up and then inserts it, so the later insert breaks the store's unique key (seen in CI: two `mlops run` started
together). The run logs it again, and is linked to the other run's row. The store is a real SQLite MLflow store; the
client only raises, once, the error MLflow raises in that race, because the race itself cannot be timed in a test."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mlops.engine.runlog import _log_dataset

RACE = ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest\n"
        "[SQL: INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, ...) VALUES (?, ?, ?, ?, ...)]")


class RacedOnce:
    """A real client whose first `log_inputs` fails as the losing side of the race does."""

    def __init__(self, client: Any, error: str) -> None:
        self.client, self.error, self.calls = client, error, 0

    def log_inputs(self, run_id: str, datasets: list[Any]) -> None:
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self.error, error_code="BAD_REQUEST")
        self.client.log_inputs(run_id, datasets=datasets)


def two_runs(tmp_path: Path) -> tuple[Any, str, str, str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, exp, client.create_run(exp).info.run_id, client.create_run(exp).info.run_id


def log(client: Any, run_id: str) -> None:
    fingerprint = "sha256:" + "ab" * 32
    _log_dataset(client, run_id, "breast_cancer", "sklearn:breast_cancer", fingerprint, fingerprint, None,
                 {"num_rows": 569}, "train")


def test_the_run_that_loses_the_insert_race_is_linked_to_the_winners_data_set(tmp_path: Path) -> None:
    client, _, first, second = two_runs(tmp_path)
    log(client, first)  # the run that inserted first
    raced = RacedOnce(client, RACE)

    log(raced, second)

    assert raced.calls == 2
    inputs = [client.get_run(run).inputs.dataset_inputs for run in (first, second)]
    assert [[i.dataset.name for i in run] for run in inputs] == [["breast_cancer"], ["breast_cancer"]]
    assert inputs[0][0].dataset.digest == inputs[1][0].dataset.digest
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # one data set row, two runs using it
        assert db.execute("SELECT count(*) FROM datasets").fetchone() == (1,)


@pytest.mark.parametrize("error", [
    "duplicate key value violates unique constraint \"datasets_pk\"",  # PostgreSQL
    "(psycopg2.errors.UniqueViolation) duplicate key",
    "(pymysql.err.IntegrityError) (1062, \"Duplicate entry '1-x-y' for key 'PRIMARY'\")",
])
def test_every_stores_duplicate_key_words_are_the_race(tmp_path: Path, error: str) -> None:
    client, _, first, second = two_runs(tmp_path)
    log(client, first)
    raced = RacedOnce(client, error)
    log(raced, second)
    assert raced.calls == 2 and client.get_run(second).inputs.dataset_inputs


def test_any_other_store_error_is_not_retried(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    client, _, first, _ = two_runs(tmp_path)
    raced = RacedOnce(client, "Dataset input must have a dataset associated with it.")
    with pytest.raises(MlflowException, match="must have a dataset"):
        log(raced, first)
    assert raced.calls == 1 and not client.get_run(first).inputs.dataset_inputs
