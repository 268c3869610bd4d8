"""`kill -9` in the middle of training, then the same command again: training resumes from its last checkpoint,
finishes the configured epochs, and the one MLflow run it kept holds one point per epoch at real, increasing
times, streamed while the model trained. The registered model is the completed training's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e

EPOCHS = 6
# batch size 4 makes an epoch of the quickstart's rows last about half a second on 2 loaded cores: long enough to
# be killed inside, short enough that the whole test stays near a minute (two CLI start-ups, Prefect included)
COMMAND = ["run", "--json", "recipes/quickstart.yaml", f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping=null",
           "model.batch_size=4"]


def _wait_for_two_streamed_epochs(proc: subprocess.Popen[str], log: Path, client: MlflowClient,
                                  cache: Path) -> str:
    """The run id, once two epochs reached MLflow and a checkpoint exists (the run is still training)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-4000:]}"
        found = re.search(r"mlops: run ([0-9a-f]{32}) of recipe", log.read_text())
        if found and list(cache.glob("train/.work-*/checkpoints/last.ckpt")):
            run_id = found.group(1)
            if len(client.get_metric_history(run_id, "val/loss")) >= 2:
                return run_id
        time.sleep(0.2)
    raise AssertionError(f"no epoch streamed in time:\n{log.read_text()[-4000:]}")


def test_killed_run_resumes_its_training_and_its_mlflow_run(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    env = isolated_env
    home = Path(env["MLOPS_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{home}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", *COMMAND], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            run_id = _wait_for_two_streamed_epochs(proc, log, client, home / "cache")
            streamed = len(client.get_metric_history(run_id, "val/loss"))
            # mid-epoch: the metrics of finished epochs are in MLflow while the run trains, not after it
            assert client.get_run(run_id).info.status == "RUNNING"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert not list((home / "cache" / "train").glob("[!.]*/result.json")), "a half-trained model was published"
    assert streamed < EPOCHS

    again = run_cli(COMMAND, env, timeout=300)
    assert again.returncode == 0, f"stdout:\n{again.stdout[-3000:]}\nstderr:\n{again.stderr[-5000:]}"
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    said = again.stdout + again.stderr
    assert f"mlops: resuming run {run_id}" in said, said[-3000:]
    assert re.search(r"mlops: resuming training from checkpoint .*: [1-9] of 6 epochs done", said), said[-3000:]

    assert summary["run_id"] == run_id  # one MLflow run, continued
    assert summary["metrics"]["train/epochs"] == EPOCHS
    exp = client.get_experiment_by_name("quickstart")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run_id, "val/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(EPOCHS)), [(m.step, m.timestamp) for m in history]
    times = [m.timestamp for m in history]
    assert times == sorted(times) and len(set(times)) == EPOCHS  # real times, in epoch order
    assert times[0] >= run.info.start_time and times[-1] <= run.info.end_time  # during the run, not invented

    # the registered version is this run's, trained to the end: the train step's cached result says so
    version = client.get_model_version(summary["model_name"], summary["model_version"])
    assert version.run_id == run_id
    results = list((home / "cache" / "train").glob("[!.]*/result.json"))
    assert len(results) == 1
    trained = json.loads(results[0].read_text())
    assert trained["epochs_run"] == EPOCHS and 1 <= trained["resumed_from_epoch"] < EPOCHS
    assert trained["streamed_to"] == run_id
    assert not list((home / "cache" / "train").glob(".work-*/")), "the working directory was not published"
