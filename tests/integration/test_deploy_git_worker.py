"""A Prefect deployment that runs on any worker: `mlops deploy --prefect` in a git project renders a prefect.yaml
whose pull step clones the project's remote at the deployed commit; a process worker started in another directory,
after the original checkout has moved on and gone, runs the train deployment to completion from the clone, and the
MLflow run records the commit it ran: the one pushed, not the checkout's later one.

The remote is a local bare repository; the Prefect server is the session's real `prefect server` (tests/conftest.py).
Needs git: skipped without it, except in CI (`CI=true`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.net import prefect_api as api

pytestmark = pytest.mark.integration

NAME = f"gitw_{uuid.uuid4().hex[:8]}"  # the project, recipe and model: nothing else on the shared server has it
POOL = f"gitw-{uuid.uuid4().hex[:8]}"
# a quick training run, and only the train deployment (once a year: no scheduled run is due during the test)
OVERRIDES = ["trainer.max_epochs=1", "gates=none", "evaluate.performance.enabled=false",
             "evaluate.robustness.enabled=false", f"deploy.prefect.work_pool={POOL}",
             "deploy.prefect.flows.train.cron=0 0 1 1 *", "deploy.prefect.flows.evaluate.enabled=false",
             "deploy.prefect.flows.monitor.enabled=false", "deploy.prefect.flows.retrain.enabled=false"]


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=mlops test", "-c", "user.email=test@example.invalid",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout.strip()


def mlops(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlops.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def git_available() -> None:
    if shutil.which("git") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("git is not installed (CI=true: the git deployment test must run)")
        pytest.skip("git is not installed")


def test_a_worker_elsewhere_runs_the_pushed_commit_from_a_clone(
        git_available: None, isolated_env: dict[str, str], tmp_path: Path) -> None:
    env = isolated_env | {"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
    url = env["PREFECT_API_URL"]
    project, remote = tmp_path / NAME, tmp_path / "remote.git"
    made = mlops(["init", str(project)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a new project")
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "-q", "origin", "main")
    pushed = git(remote, "rev-parse", "HEAD")

    deployed = mlops(["deploy", f"recipes/{NAME}.yaml", *OVERRIDES, "--target", "prefect", "--prefect",
                      "--output", str(tmp_path / "out"), "--json"], project, env)

    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    result = json.loads(deployed.stdout.strip().splitlines()[-1])
    assert result["warnings"] == [], result["warnings"]  # committed and pushed: nothing for the deployment to miss
    assert result["registered"] == [f"mlops-train/{NAME}"]
    (train,) = api(url, "/deployments/filter", {"deployments": {"name": {"any_": [NAME]}}})
    assert train["pull_steps"] == [{"prefect.deployments.steps.git_clone": {
        "id": "clone-project", "repository": str(remote), "commit_sha": pushed}}]
    assert train["parameters"]["recipe"] == f"recipes/{NAME}.yaml"

    # the checkout moves on (a commit never pushed) and then leaves this machine: only the clone can run the flow
    recipe = project / "recipes" / f"{NAME}.yaml"
    recipe.write_text(recipe.read_text() + "# a local edit\n")
    git(project, "commit", "-q", "-am", "not pushed")
    assert git(project, "rev-parse", "HEAD") != pushed
    shutil.move(project, tmp_path / "gone")

    run = api(url, f"/deployments/{train['id']}/create_flow_run", {})
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    worker_env = env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                        "PREFECT_HOME": str(tmp_path / "worker-home")}
    worker = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--run-once"],
                            cwd=elsewhere, env=worker_env, capture_output=True, text=True, timeout=600)
    state = api(url, f"/flow_runs/{run['id']}")["state"]

    assert state["type"] == "COMPLETED", f"{state}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    from mlops.core.registry import registry_client

    client = registry_client(f"sqlite:///{Path(env['MLOPS_HOME']) / 'mlflow.db'}")
    version = client.get_model_version(NAME, "1")  # registered by the flow run: nothing else trains this model
    tags = client.get_run(version.run_id).data.tags
    assert tags.get("mlflow.source.git.commit") == pushed, tags
    assert tags.get("mlflow.source.git.repoURL") == str(remote), tags
    assert tags.get("mlops.git_dirty") == "False"
    assert not (tmp_path / NAME).exists()  # nothing recreated the original checkout
