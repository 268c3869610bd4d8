"""The deploy phase's commands as a user runs them (`python -m mlops.cli ...` in a fresh process, a real MLflow
registry under a temporary MLOPS_HOME): what they write, what they print, and how they exit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import cli_env, run_cli
from tests.deploy_fixtures import CRD, mlops_home, register_version
from tests.net import free_port

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("deploy-cli")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path, prefect_api: str) -> Iterator[dict[str, str]]:
    """The CLI processes' environment, with toy v1 (champion) and v2 (challenger) registered in its store; shared
    by the module (a store costs seconds to create). Tests that move champion restore it."""
    home = tmp_path_factory.mktemp("deploy-cli") / ".mlops"
    env = cli_env(home, prefect_home, prefect_api)
    with mlops_home(home):
        assert [register_version(home.parent, "toy", seed) for seed in (1, 2)] == ["1", "2"]
    yield env


def test_deploy_renders_every_target_for_the_champion(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(["deploy", "recipes/quickstart.yaml", "registry.model_name=toy", "--output", str(out),
                    "--crd", str(CRD), "--json"], env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)  # --json: the result alone on stdout, the readable report on stderr
    assert result["model"] == "toy/1"
    assert set(result["files"]) == {"inferenceservice", "image_context", "prefect", "alerts", "grafana"}
    assert result["checks"]["inferenceservice"].startswith(f"valid against {CRD}")
    assert "inferenceservice   " in proc.stderr and "next: build the image:   docker build -t " in proc.stderr
    manifest = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert manifest["spec"]["predictor"]["containers"][0]["image"] == "ghcr.io/example/mlops-serve:toy-v1"
    assert (out / "image" / "Dockerfile").is_file() and (out / "image" / "bundle" / "model.onnx").is_file()
    assert json.loads((out / "deploy.json").read_text())["model"] == "toy/1"


def test_deploy_triton_then_apply_without_a_cluster(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(["deploy", "recipes/quickstart.yaml", "registry.model_name=toy", "deploy=triton",
                    "--model", "toy@challenger", "--output", str(out), "--apply"],
                   env | {"KUBECONFIG": str(tmp_path / "no-kubeconfig")})

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: --apply")  # no kubectl, or kubectl without a cluster: said plainly
    assert "Traceback" not in proc.stderr
    manifest = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    model = manifest["spec"]["predictor"]["model"]
    assert (model["runtime"], model["protocolVersion"], model["storageUri"]) == (
        "kserve-tritonserver", "v2", "s3://models/mlops/toy/v2")
    assert (out / "triton" / "toy" / "1" / "model.onnx").is_file()
    assert 'name: "toy"' in (out / "triton" / "toy" / "config.pbtxt").read_text()
    assert not (out / "image").exists()  # the triton option renders no image of ours


def test_promote_and_rollback_print_what_they_did(env: dict[str, str], tmp_path: Path) -> None:
    env = env | {"MLOPS_ACTOR": "ci-bot"}
    promoted = run_cli(["promote", "toy/2", "--reason", "better auroc",
                        "--recipe", "recipes/quickstart.yaml", "--output", str(tmp_path / "promoted")], env)
    rolled = run_cli(["rollback", "toy", "--reason", "p99 regression", "--json"], env)

    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.startswith("promoted toy: champion version 1 -> 2 (promote #1 by ci-bot at ")
    assert promoted.stdout.splitlines()[0].endswith(": better auroc)")
    assert f"manifest {tmp_path / 'promoted' / 'inferenceservice.yaml'}" in promoted.stdout
    manifest = yaml.safe_load((tmp_path / "promoted" / "inferenceservice.yaml").read_text())
    assert manifest["spec"]["predictor"]["containers"][0]["image"].endswith(":toy-v2")
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stderr.startswith("rolled back toy: champion version 2 -> 1 (rollback #2 by ci-bot")
    assert "no manifest rendered: the recipe that registered it is not at hand (pass --recipe)" in rolled.stderr
    assert json.loads(rolled.stdout)["champion"] == "1"
    typo = run_cli(["rollback", "tyo"], env)  # was MLflow's traceback
    assert typo.returncode == 2 and typo.stderr.startswith("error: no registered model 'tyo'"), typo.stderr


def test_rollout_without_traffic_holds_with_its_exit_code(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    proc = run_cli(["rollout", "recipes/quickstart.yaml", "registry.model_name=toy", "deploy.rollout.window_s=0.5",
                    "deploy.rollout.max_windows=1", "--model", "toy@challenger", "--local-port", str(port),
                    "--output", str(tmp_path / "rollout"), "--json"], env)

    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "rollout: step 1/4: canary toy/2 at 1 %" in proc.stderr
    assert "rollout of toy/2 next to toy/1: HOLD at 1 %: 0 canary requests in 1 windows" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["decision"] == "hold" and result["steps"][0]["percent"] == 1
