"""Validation of rendered InferenceServices: the CRD's OpenAPI schema made strict (as `kubectl apply
--validate=strict`) and KServe's rules the schema cannot express. Each broken manifest fails naming the field."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops.core.errors import MlopsError
from mlops.core.refs import ModelVersion
from mlops.deploy.generate import deploy_recipe
from mlops.deploy.kserve import inference_service
from mlops.deploy.kubectl import kubectl_apply
from mlops.deploy.validate import BUNDLED_CRD, ManifestError, validate_manifest
from mlops.recipe import load_recipe
from mlops.recipe.deploy import DeployConfig
from tests.conftest import ROOT
from tests.media_fixtures import NAME, TOKENIZER, build_media_bundle

CRD = BUNDLED_CRD


@pytest.fixture(autouse=True, scope="module")
def _mlops_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The strict CRD schema is cached under MLOPS_HOME: keep it out of the working tree."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_HOME", str(tmp_path_factory.mktemp("mlops-home")))
        yield
V3, V4 = ModelVersion("quickstart", "3"), ModelVersion("quickstart", "4")


def manifest(cfg: DeployConfig | None = None, canary: int | None = None) -> dict[str, Any]:
    return yaml.safe_load(inference_service(cfg or DeployConfig(), V3, V4 if canary is not None else None, canary))


def standard() -> DeployConfig:
    return DeployConfig(mode="Standard", autoscaling={"metric": "cpu", "target": 70})


def triton(**extra: Any) -> DeployConfig:
    return DeployConfig(runtime="triton", storage_uri="s3://b/m", **extra)


def problems_of(m: dict[str, Any], crd: Path | None = CRD) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as info:
        validate_manifest(m, crd)
    return info.value.problems


@pytest.mark.parametrize(("cfg", "canary"), [
    (DeployConfig(), None), (DeployConfig(), 10), (standard(), None), (standard(), 50), (triton(), None),
    (triton(), 1), (triton(mode="Standard", autoscaling={"metric": "cpu"}), 10),
    (triton(resources={"gpus": 2}), 100)])
def test_rendered_manifests_pass(cfg: DeployConfig, canary: int | None) -> None:
    validate_manifest(manifest(cfg, canary), CRD)


def test_typo_is_an_unknown_field_at_its_path() -> None:
    m = manifest()
    m["spec"]["predictor"]["containers"][0]["imagePullPolcy"] = "Always"

    ((path, message),) = problems_of(m)

    assert path == "spec.predictor.containers[0].imagePullPolcy"
    assert message.startswith("unknown field (valid: args, command, env") and "imagePullPolicy" in message


def test_typo_at_the_top_of_spec() -> None:
    m = manifest()
    m["spec"]["predicter"] = m["spec"]["predictor"]

    assert [p for p, _ in problems_of(m)] == ["spec.predicter"]


def test_wrong_type_names_the_field() -> None:
    m = manifest()
    m["spec"]["predictor"]["minReplicas"] = "one"

    assert problems_of(m) == [("spec.predictor.minReplicas", "'one' is not of type 'integer'")]


def test_int_or_string_accepts_both_and_rejects_others() -> None:
    """`x-kubernetes-int-or-string` (resource quantities) is emulated as anyOf integer/string."""
    m = manifest()
    m["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    validate_manifest(m, CRD)

    m["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] = [2]
    assert problems_of(m)[0][0] == "spec.predictor.containers[0].resources.limits.cpu"


def test_metadata_is_checked_too() -> None:
    m = manifest()
    m["metadata"]["name"] = "Quick_Start"
    m["metadata"]["labelz"] = {}

    paths = [p for p, _ in problems_of(m)]

    assert paths == ["metadata.labelz", "metadata.name"]


# --- KServe's rules that the schema does not express ----------------------------------------------------------

def test_exactly_one_predictor_implementation() -> None:
    none = manifest()
    del none["spec"]["predictor"]["containers"]
    two = manifest(triton())
    two["spec"]["predictor"]["containers"] = [{"name": "kserve-container", "image": "x"}]

    assert problems_of(none) == [("spec.predictor", "needs exactly one predictor implementation (model, containers, "
                                                    "or one framework), found 0: none")]
    assert problems_of(two)[0] == ("spec.predictor", "needs exactly one predictor implementation (model, containers,"
                                                     " or one framework), found 2: model, containers")


def test_onnx_on_triton_needs_protocol_v2() -> None:
    m = manifest(triton())
    m["spec"]["predictor"]["model"]["protocolVersion"] = "v1"

    assert problems_of(m) == [("spec.predictor.model.protocolVersion",
                               "ONNX on the Triton runtime needs protocolVersion v2, got 'v1'")]


def test_knative_canary_percent_within_100() -> None:
    m = manifest(canary=10)
    m["spec"]["predictor"]["canaryTrafficPercent"] = 101

    assert problems_of(m) == [("spec.predictor.canaryTrafficPercent", "must be a percentage 0-100, got 101")]


def test_standard_canaries_add_up_to_at_most_100() -> None:
    m = manifest(standard(), canary=60)
    m["spec"]["canary"].append(copy.deepcopy(m["spec"]["canary"][0]))

    assert problems_of(m) == [("spec.canary", "canary traffic adds up to 120 %, over 100 %")]


def test_standard_canary_percent_over_100_is_the_schema_s() -> None:
    m = manifest(standard(), canary=60)
    m["spec"]["canary"][0]["trafficPercent"] = 150

    assert ("spec.canary[0].trafficPercent", "150 is greater than the maximum of 100") in problems_of(m)


def test_no_autoscaling_on_standard_canaries() -> None:
    m = manifest(standard(), canary=10)
    m["spec"]["canary"][0]["predictor"] |= {"maxReplicas": 4, "scaleMetric": "cpu"}

    assert problems_of(m) == [
        ("spec.canary[0].predictor.scaleMetric", "Standard-mode canaries are not autoscaled: give minReplicas only"),
        ("spec.canary[0].predictor.maxReplicas", "Standard-mode canaries are not autoscaled: give minReplicas only")]


def test_each_mode_has_its_own_canary_form() -> None:
    knative_with_list = manifest(canary=10)
    knative_with_list["spec"]["canary"] = [{"trafficPercent": 5, "predictor": copy.deepcopy(
        knative_with_list["spec"]["predictor"])}]
    del knative_with_list["spec"]["canary"][0]["predictor"]["canaryTrafficPercent"]
    standard_with_percent = manifest(standard())
    standard_with_percent["spec"]["predictor"]["canaryTrafficPercent"] = 10

    assert ("spec.canary", "is for Standard mode; Knative mode takes spec.predictor.canaryTrafficPercent") in \
        problems_of(knative_with_list)
    assert problems_of(standard_with_percent) == [
        ("spec.predictor.canaryTrafficPercent", "works in Knative mode only; Standard mode takes canaries in "
                                                "spec.canary[]")]


def test_rules_apply_without_a_crd() -> None:
    m = manifest(triton())
    m["spec"]["predictor"]["model"]["protocolVersion"] = "v1"
    m["spec"]["predictor"]["typo"] = 1  # only the CRD knows this one

    assert problems_of(m, crd=None) == [("spec.predictor.model.protocolVersion",
                                         "ONNX on the Triton runtime needs protocolVersion v2, got 'v1'")]


def test_unknown_deployment_mode() -> None:
    m = manifest()
    m["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Serverles"

    assert problems_of(m) == [("metadata.annotations.serving.kserve.io/deploymentMode",
                               "unknown deployment mode 'Serverles' (Knative or Standard)")]


def test_a_file_that_is_not_the_crd(tmp_path: Path) -> None:
    wrong = tmp_path / "crd.yaml"
    wrong.write_text("kind: ConfigMap\n")

    with pytest.raises(MlopsError, match="is not the InferenceService CRD"):
        validate_manifest(manifest(), wrong)
    with pytest.raises(MlopsError, match="cannot read the KServe CRD"):
        validate_manifest(manifest(), tmp_path / "missing.yaml")


# --- kubectl apply fails clearly without kubectl or a cluster -----------------------------------------------

def test_apply_without_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no kubectl on it
    path = tmp_path / "isvc.yaml"
    path.write_text(inference_service(DeployConfig(), V3))

    with pytest.raises(MlopsError, match="--apply needs kubectl on PATH"):
        kubectl_apply(path, "default")


def test_apply_without_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed here: the no-cluster path cannot be exercised")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "empty-kubeconfig"))  # no cluster, whatever the machine has
    path = tmp_path / "isvc.yaml"
    path.write_text(inference_service(DeployConfig(), V3))

    with pytest.raises(MlopsError, match="kubectl has no cluster configured"):
        kubectl_apply(path, "default")
    assert subprocess.run(["kubectl", "config", "current-context"], capture_output=True).returncode != 0


# --- an image + text model --------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["triton", "triton_gpu", "default"])
def test_an_image_and_text_model_deploys_on_each_runtime(option: str, tmp_path: Path) -> None:
    """`mlops deploy` of an image + text model: our server as today; Triton over the network's raw inputs
    (uint8 pixels, int64 token ids), the config saying what a client must do, the tokenizer beside it; GPUs
    requested when the recipe asks."""
    bundle = build_media_bundle(tmp_path / "bundle")
    loaded = load_recipe(str(ROOT / "recipes" / "quickstart.yaml"),
                         [f"registry.model_name={NAME}", f"deploy={option}"])
    result = deploy_recipe(loaded, str(bundle), out=tmp_path / "out", targets=["kserve"])

    service = yaml.safe_load(Path(result["files"]["inferenceservice"]).read_text())
    validate_manifest(service, CRD)
    predictor = service["spec"]["predictor"]
    if option == "default":  # our server in our image: no Triton repository, nothing to preprocess
        assert "containers" in predictor and "triton_repository" not in result["files"]
        return
    resources = predictor["model"]["resources"]
    gpus = {"triton": None, "triton_gpu": loaded.recipe.deploy.resources.gpus}[option]
    assert resources["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert resources["requests"].get("nvidia.com/gpu") == resources["limits"].get("nvidia.com/gpu")
    repo = Path(result["files"]["triton_repository"]) / NAME
    assert (repo / "1" / "model.onnx").is_file() and (repo / TOKENIZER).is_file()
    config = (repo / "config.pbtxt").read_text()
    body = [line for line in config.splitlines() if not line.startswith("#")]
    assert _entries(body, "input") == [("image", "TYPE_UINT8", "[ -1, 8, 8, 1 ]"),
                                       ("review", "TYPE_INT64", "[ -1, 16 ]"), ("age", "TYPE_FP32", "[ -1, 1 ]")]
    assert _entries(body, "output") == [("label", "TYPE_STRING", "[ -1 ]"),
                                        ("probabilities", "TYPE_FP32", "[ -1, 2 ]")]
    comments = "\n".join(line for line in config.splitlines() if line.startswith("#"))
    assert "a client preprocesses" in comments and "resize it to 8x8" in comments
    assert f"the bundle's tokenizer ({TOKENIZER}, copied beside this file)" in comments


def _entries(lines: list[str], block: str) -> list[tuple[str, str, str]]:
    """(name, data_type, dims) of each entry of a config.pbtxt's `input [...]` or `output [...]` block."""
    start = lines.index(f"{block} [")
    end = start + lines[start:].index("]")
    names = [line.split(": ", 1)[1].strip('"') for line in lines[start:end] if line.strip().startswith("name:")]
    types = [line.split(": ", 1)[1] for line in lines[start:end] if line.strip().startswith("data_type:")]
    dims = [line.split(": ", 1)[1] for line in lines[start:end] if line.strip().startswith("dims:")]
    return list(zip(names, types, dims, strict=True))
