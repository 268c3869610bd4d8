"""KServe V2 conformance of what is not inference itself: the versioned routes, `GET /v2`'s extensions, and
the traffic route's move out of the repository namespace (its old path deprecated, still working)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mlops.core.predlog import PredictionLog
from mlops.core.refs import CHALLENGER
from mlops.package.predictor import Predictor
from mlops.serve.app import Server, versioned_infer_route
from mlops.serve.routing import Arm
from tests.serve_fixtures import build_bundle

ROW = {"age": 41.0, "income": 50.0, "city": "a"}
V2_BODY = {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [41.0]},
                      {"name": "income", "shape": [1], "datatype": "FP64", "data": [50.0]},
                      {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("versions")
    return build_bundle(root / "c", weights_seed=1), build_bundle(root / "n", weights_seed=2)


@pytest.fixture
def client(bundles: tuple[Path, Path], tmp_path: Path) -> Any:
    champion, challenger = bundles
    server = Server(Predictor(champion), PredictionLog(tmp_path / "log.sqlite"), version="3",
                    challenger=Arm(Predictor(challenger), "4", CHALLENGER), ab_percent=0)
    with TestClient(server.app()) as c:
        yield c


def test_server_metadata_lists_the_repository_extension_it_serves(client: TestClient) -> None:
    extensions = client.get("/v2").json()["extensions"]
    assert extensions == ["model_repository", "binary_tensor_data"]
    assert client.post("/v2/repository/models/toy/load").status_code == 200  # what the extension promises


def test_versioned_metadata_and_ready(client: TestClient) -> None:
    assert client.get("/v2/models/toy").json()["versions"] == ["3", "4"]
    meta = client.get("/v2/models/toy/versions/4")
    assert meta.status_code == 200 and meta.json()["versions"] == ["4"] and meta.json()["inputs"]
    assert client.get("/v2/models/toy/versions/3/ready").json() == {"name": "toy", "ready": True}
    for path in ("/v2/models/toy/versions/9", "/v2/models/toy/versions/9/ready"):
        missing = client.get(path)
        assert missing.status_code == 404 and missing.json()["field"] == "version"
        assert "'9'" in missing.json()["error"] and "3, 4" in missing.json()["error"]
    assert client.get("/v2/models/other/versions/3").json()["field"] == "model"


@pytest.mark.parametrize(("version", "variant"), [("3", "champion"), ("4", "challenger")])
def test_versioned_infer_is_answered_by_that_version_whatever_the_split(
        client: TestClient, version: str, variant: str) -> None:
    for i in range(5):  # the split is 0 %: without the version every key goes to the champion
        answer = client.post(f"/v2/models/toy/versions/{version}/infer", json=V2_BODY | {"id": f"k{i}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == version and answer.headers["X-Model-Variant"] == variant


def test_versioned_infer_of_a_version_not_served_is_a_404_naming_it(client: TestClient) -> None:
    answer = client.post("/v2/models/toy/versions/2/infer", json=V2_BODY)
    assert answer.status_code == 404 and answer.json()["field"] == "version" and "'2'" in answer.json()["error"]


def test_a_server_without_a_version_serves_no_versioned_route(bundles: tuple[Path, Path]) -> None:
    with TestClient(Server(Predictor(bundles[0]), None).app()) as c:
        answer = c.post("/v2/models/toy/versions/1/infer", json=V2_BODY)
        assert answer.status_code == 404 and "without a version" in answer.json()["error"]
        assert c.get("/v2/models/toy").json()["versions"] == []


@pytest.mark.parametrize("path", ["/v2/models/toy/versions/3/infer", "/v2/models/a/versions/b/infer",
                                  "/v2/models/a/versions//infer", "/v2/models//versions/3/infer",
                                  "/v2/models/a/b/versions/3/infer", "/v2/models/a/versions/3/4/infer",
                                  "/v2/models/toy/infer", "/v2/models/a/versions/3/infer/"])
def test_the_versioned_fast_path_takes_exactly_what_starlette_routes_there(bundles: tuple[Path, Path],
                                                                          path: str) -> None:
    from starlette.routing import Match

    server = Server(Predictor(bundles[0]), None)
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    routed = None
    for route in server.app().routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            if route.endpoint == server.versioned_infer:
                routed = (child["path_params"]["name"], child["path_params"]["version"])
            break
    assert versioned_infer_route(path) == routed


def test_traffic_moved_and_the_old_path_still_works_marked_deprecated(client: TestClient) -> None:
    new = client.post("/mlops/v1/models/toy/traffic", json={"percent": 30})
    assert new.status_code == 200 and new.json()["percent"] == 30.0 and "Deprecation" not in new.headers

    old = client.post("/v2/repository/models/toy/traffic", json={"percent": 60})
    assert old.status_code == 200 and old.json() == {"name": "toy", "champion": {"version": "3"},
                                                    "challenger": {"version": "4"}, "percent": 60.0}
    assert old.headers["Deprecation"].startswith("@")
    assert old.headers["Link"] == '</mlops/v1/models/toy/traffic>; rel="successor-version"'
    refused = client.post("/v2/repository/models/toy/traffic", json={"percent": 101})
    assert refused.status_code == 400 and "Deprecation" in refused.headers


def test_the_openapi_document_lists_the_new_routes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready",
                 "/v2/models/{name}/versions/{version}/infer", "/mlops/v1/models/{name}/traffic"):
        assert path in paths
    assert paths["/v2/repository/models/{name}/traffic"]["post"]["deprecated"] is True
    version = next(p for p in paths["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]
                   if p["name"] == "version")
    assert version["example"] == "3"


def test_the_deprecated_traffic_path_answers_any_model_name_without_a_5xx(client: TestClient) -> None:
    """Found by schemathesis: the successor link of a name outside latin-1 must still be a valid header."""
    answer = client.post("/v2/repository/models/%F2%9F%9F%AE-x/traffic", json={"percent": 1})
    assert answer.status_code == 404 and answer.json()["field"] == "model"
    assert answer.headers["Link"] == '</mlops/v1/models/%F2%9F%9F%AE-x/traffic>; rel="successor-version"'
