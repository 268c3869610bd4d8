"""Every deploy template rendered from fixed inputs and compared byte for byte with tests/golden/deploy/.

A template change shows up as a diff of the rendered files under review. After an intended change, rewrite
the golden files with:  MLOPS_UPDATE_GOLDEN=1 pytest tests/unit/test_deploy_golden.py  (and read the diff).
Every golden InferenceService also passes the strict CRD check, so a golden file can never enshrine a manifest
KServe would refuse.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from mlops.core.refs import ModelVersion
from mlops.deploy.alerts import alert_rules
from mlops.deploy.container import dockerfile, requirements_txt
from mlops.deploy.kserve import collector_manifest, inference_service
from mlops.deploy.orchestration import flow_deployments, prefect_yaml
from mlops.deploy.render import render
from mlops.deploy.triton import config_pbtxt
from mlops.deploy.validate import BUNDLED_CRD, validate_manifest
from mlops.package.bundle import read_bundle
from mlops.recipe.deploy import DeployConfig
from mlops.recipe.monitor import MonitorConfig
from tests.conftest import ROOT
from tests.serve_fixtures import build_bundle

GOLDEN = ROOT / "tests" / "golden" / "deploy"
CRD = BUNDLED_CRD


@pytest.fixture(autouse=True, scope="module")
def _mlops_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The strict CRD schema is cached under MLOPS_HOME: keep it out of the working tree."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(tmp_path_factory.mktemp("mlops-home")))
        yield
UPDATE = os.environ.get("MLOPS_UPDATE_GOLDEN") == "1"

V3, V4 = ModelVersion("quickstart", "3"), ModelVersion("quickstart", "4")
KNATIVE = DeployConfig()
STANDARD = DeployConfig(mode="Standard", autoscaling={"min_replicas": 2, "max_replicas": 6, "metric": "cpu",
                                                      "target": 70})
TRITON_GPU = DeployConfig(runtime="triton", storage_uri="s3://models/mlops", resources={
    "cpu": "2", "memory": "4Gi", "cpu_limit": "4", "memory_limit": "8Gi", "gpus": 1})
TRITON_STANDARD = DeployConfig(runtime="triton", mode="Standard", storage_uri="gs://bucket/models",
                               autoscaling={"metric": "memory", "target": 80})

LOGGER = DeployConfig.model_validate({"namespace": "models", "kserve": {"logger": {"enabled": True}}})
MANIFESTS: dict[str, Callable[[], str]] = {
    "isvc-knative-mlops.yaml": lambda: inference_service(KNATIVE, V3),
    "isvc-knative-mlops-canary10.yaml": lambda: inference_service(KNATIVE, V3, V4, 10),
    "isvc-standard-mlops-canary50.yaml": lambda: inference_service(STANDARD, V3, V4, 50),
    "isvc-knative-triton-gpu.yaml": lambda: inference_service(TRITON_GPU, ModelVersion("wine_multiclass", "7")),
    "isvc-standard-triton-canary1.yaml": lambda: inference_service(TRITON_STANDARD, V3, V4, 1),
    "isvc-knative-mlops-logger.yaml": lambda: inference_service(LOGGER, V3),
}


def _prefect() -> str:
    cfg = DeployConfig.model_validate({"prefect": {"work_pool": "gpu-pool", "work_queue": "nightly", "flows": {
        "train": {"cron": "0 3 * * 0", "timezone": "Europe/Paris"},
        "evaluate": {"enabled": False},
        "monitor": {"interval_s": 900, "parameters": {"model": "quickstart@challenger"}},
        "retrain": {}}}}).prefect
    deployments = flow_deployments(cfg, "quickstart", "quickstart", "recipes/quickstart.yaml", ["trainer.max_epochs=3"],
                                   retrain_events=["mlops.alert.drift", "mlops.alert.accuracy_drop"])
    return prefect_yaml(deployments, "quickstart", "/srv/project", prefect_version="3.9.1", mlops_version="0.1.0")


def _triton(tmp: Path) -> str:
    return config_pbtxt(read_bundle(build_bundle(tmp / "bundle", name="toy")), "2")


OTHERS: dict[str, Callable[[Path], str]] = {
    "Dockerfile": lambda _: dockerfile(KNATIVE, V3, mlops_version="0.1.0"),
    "requirements.txt": lambda _: requirements_txt([("numpy", "2.1.0"), ("onnxruntime", "1.20.0")]),
    "dockerignore": lambda _: render("dockerignore.j2"),
    "prefect.yaml": lambda _: _prefect(),
    "alerts.rules.yml": lambda _: alert_rules(KNATIVE.alerts, MonitorConfig(), "quickstart"),
    "alerts-p95-4xx-no-drift.rules.yml": lambda _: alert_rules(
        DeployConfig.model_validate({"alerts": {"drift": False, "window": "1m", "for": "2m",
                                                "severity": "ticket"}}).alerts,
        MonitorConfig.model_validate({"latency": {"percentile": 95, "sla_ms": 40},
                                      "error_rate": {"baseline": 0.001, "max_increase": 0.001, "count_4xx": True}}),
        "churn"),
    "triton-config.pbtxt": _triton,
    "collector.yaml": lambda _: collector_manifest(LOGGER, V3, "postgresql://mlops@db.models.svc/predictions"),
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"no golden file {path}: run with MLOPS_UPDATE_GOLDEN=1 to create it, then review it"
    expected = path.read_text()
    assert text == expected, (f"{name} differs from its golden file {path}; if the change is intended, rewrite it "
                              "with MLOPS_UPDATE_GOLDEN=1 and review the diff")


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_inference_service_matches_golden_and_the_crd(name: str) -> None:
    text = MANIFESTS[name]()

    check_golden(name, text)
    validate_manifest(text, CRD)  # raises, naming the field, if KServe would refuse it


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_template_matches_golden(name: str, tmp_path: Path) -> None:
    check_golden(name, OTHERS[name](tmp_path))


def test_every_template_has_a_golden_file() -> None:
    """A new template without a golden test would go unreviewed."""
    templates = {p.name for p in (ROOT / "mlops" / "deploy" / "templates").glob("*.j2")}
    covered = {"inferenceservice.yaml.j2", "Dockerfile.j2", "requirements.txt.j2", "dockerignore.j2",
               "prefect.yaml.j2", "alerts.rules.yml.j2", "triton_config.pbtxt.j2", "collector.yaml.j2"}

    assert templates == covered
    assert {p.name for p in GOLDEN.iterdir()} == set(MANIFESTS) | set(OTHERS)


def test_golden_check_catches_a_difference(tmp_path: Path) -> None:
    """Guard against a vacuous comparison: a rendered file that differs by one character fails."""
    if UPDATE:
        pytest.skip("rewriting golden files")
    with pytest.raises(AssertionError, match="differs from its golden file"):
        check_golden("isvc-knative-mlops.yaml", inference_service(KNATIVE, V3).replace("minReplicas: 1",
                                                                                      "minReplicas: 2"))


def test_canary_forms_per_mode() -> None:
    """Knative: the predictor is the canary's, with canaryTrafficPercent. Standard: spec.canary[] beside the
    stable predictor, not autoscaled."""
    knative = yaml.safe_load(MANIFESTS["isvc-knative-mlops-canary10.yaml"]())
    standard = yaml.safe_load(MANIFESTS["isvc-standard-mlops-canary50.yaml"]())

    assert knative["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert knative["spec"]["predictor"]["containers"][0]["image"].endswith(":quickstart-v4")
    assert "canary" not in knative["spec"]
    assert "canaryTrafficPercent" not in standard["spec"]["predictor"]
    assert standard["spec"]["predictor"]["containers"][0]["image"].endswith(":quickstart-v3")
    (canary,) = standard["spec"]["canary"]
    assert canary["trafficPercent"] == 50
    assert canary["predictor"]["containers"][0]["image"].endswith(":quickstart-v4")
    assert canary["predictor"]["minReplicas"] == 2 and "maxReplicas" not in canary["predictor"]
