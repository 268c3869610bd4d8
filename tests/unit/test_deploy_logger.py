"""`deploy.kserve.logger`: KServe's payload logger in the InferenceService (valid against the shipped CRD) and
the collector `mlops deploy` renders beside it; off by default; several collectors refused where they split."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mlops.core.errors import MlopsError
from mlops.core.refs import ModelVersion
from mlops.deploy.generate import deploy_recipe
from mlops.deploy.kserve import collector_manifest, inference_service
from mlops.deploy.validate import BUNDLED_CRD, validate_manifest
from mlops.recipe import load_recipe
from mlops.recipe.deploy import DeployConfig
from tests.conftest import ROOT
from tests.media_fixtures import NAME, build_media_bundle

V3, V4 = ModelVersion("quickstart", "3"), ModelVersion("quickstart", "4")
PG = "postgresql://mlops@db.models.svc/predictions"


@pytest.fixture(autouse=True, scope="module")
def _mlops_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The strict CRD schema is cached under MLOPS_HOME: keep it out of the working tree."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(tmp_path_factory.mktemp("mlops-home")))
        yield


def config(**logger: Any) -> DeployConfig:
    return DeployConfig.model_validate({"namespace": "models", "kserve": {"logger": logger}})


def test_off_by_default() -> None:
    text = inference_service(DeployConfig(), V3)
    assert "logger" not in yaml.safe_load(text)["spec"]["predictor"]


@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_logger_points_at_the_rendered_collector_and_is_valid(mode: str) -> None:
    cfg = DeployConfig.model_validate({"namespace": "models", "mode": mode,
                                       "autoscaling": {"metric": "cpu"} if mode == "Standard" else {},
                                       "kserve": {"logger": {"enabled": True, "mode": "request"}}})
    text = inference_service(cfg, V3, V4, 10)
    validate_manifest(text, BUNDLED_CRD)  # raises on a field the CRD does not know
    spec = yaml.safe_load(text)["spec"]
    logger = spec["predictor"]["logger"]
    assert logger == {"mode": "request", "url": "http://quickstart-collector.models.svc.cluster.local/"}
    if mode == "Standard":  # the canary predictor logs too
        assert spec["canary"][0]["predictor"]["logger"] == logger


def test_an_explicit_url_is_used() -> None:
    text = inference_service(config(enabled=True, url="http://sink.example/"), V3)
    validate_manifest(text, BUNDLED_CRD)
    assert yaml.safe_load(text)["spec"]["predictor"]["logger"]["url"] == "http://sink.example/"


def test_collector_runs_mlops_collect_in_the_serving_image() -> None:
    cfg = config(enabled=True, log=PG)
    deployment, service = yaml.safe_load_all(collector_manifest(cfg, V3, PG))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mlops.cli", "collect", "--http", "0.0.0.0:8080", "--log", PG]
    assert container["image"] == f"{cfg.image.repository}:{V3.tag}"
    assert service["metadata"]["name"] == "quickstart-collector"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == 8080


@pytest.mark.parametrize(("logger", "why"), [
    ({"replicas": 2, "mode": "request", "log": "/data/log.sqlite"}, "PostgreSQL"),
    ({"replicas": 2, "log": PG}, "pair"),
])
def test_several_collectors_refused_where_they_split(logger: dict[str, Any], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        config(enabled=True, **logger)


def test_several_collectors_on_postgres_without_pairing() -> None:
    assert config(enabled=True, replicas=3, mode="response", log=PG).kserve.logger.replicas == 3


def test_mlops_deploy_writes_the_collector_or_says_what_is_missing(tmp_path: Path) -> None:
    bundle = build_media_bundle(tmp_path / "bundle")
    overrides = [f"registry.model_name={NAME}", "deploy.kserve.logger.enabled=true"]
    recipe = str(ROOT / "recipes" / "quickstart.yaml")
    with pytest.raises(MlopsError, match="deploy.kserve.logger.log"):
        deploy_recipe(load_recipe(recipe, overrides), str(bundle), out=tmp_path / "a", targets=["kserve"])
    result = deploy_recipe(load_recipe(recipe, [*overrides, f"deploy.kserve.logger.log={PG}"]), str(bundle),
                           out=tmp_path / "b", targets=["kserve"])
    isvc = yaml.safe_load(Path(result["files"]["inferenceservice"]).read_text())
    deployment, service = yaml.safe_load_all(Path(result["files"]["collector"]).read_text())
    url = isvc["spec"]["predictor"]["logger"]["url"]
    assert url.startswith(f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["command"][-1] == PG
