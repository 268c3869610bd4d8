"""Alias following in the server: a moved alias swaps in at once; a version that cannot be loaded is refused
and the running one keeps answering. The registry is what is faked here (a resolver function)."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from mlops.core.predlog import PredictionLog, read_predictions
from mlops.package.predictor import Predictor
from mlops.serve.app import Server
from mlops.serve.reload import AliasWatcher
from tests.serve_fixtures import build_bundle

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


def test_swap_on_load_and_refusal_of_a_broken_version(tmp_path: Path) -> None:
    v1 = build_bundle(tmp_path / "v1", weights_seed=1)
    v2 = build_bundle(tmp_path / "v2", weights_seed=2)
    broken = build_bundle(tmp_path / "v3", weights_seed=3)
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes() + b"tampered")
    registry = {"toy@champion": (v1, "1")}
    log_path = tmp_path / "log.sqlite"
    server = Server(Predictor(v1), PredictionLog(log_path), version="1")
    server.watcher = AliasWatcher(server, {"champion": ("toy@champion", "1")}, interval=0,
                                  resolve=lambda ref: registry[ref])
    with TestClient(server.app()) as client:
        def answer(request_id: str) -> dict:
            response = client.post("/v1/models/toy:predict", json={"id": request_id, "instances": [ROW]})
            assert response.status_code == 200, response.text
            return response.json()

        first = answer("a")
        registry["toy@champion"] = (v2, "2")
        loaded = client.post("/v2/repository/models/toy/load")
        assert loaded.status_code == 200
        assert loaded.json()["changes"] == [{"variant": "champion", "ref": "toy@champion", "from": "1", "to": "2"}]
        second = answer("b")
        assert second["predictions"] == Predictor(v2).predict(Predictor(v2).feeds_from_rows([ROW])).instances()
        assert first["predictions"] != second["predictions"]  # the two versions answer differently

        registry["toy@champion"] = (broken, "3")
        refused = client.post("/v2/repository/models/toy/load")
        assert refused.status_code == 409 and "altered" in refused.json()["changes"][0]["error"]
        answer("c")
        metrics = client.get("/metrics").text
    assert 'mlops_model_info{model="toy",variant="champion",version="2"} 1.0' in metrics
    assert 'version="1"' not in metrics.split("mlops_model_info")[-1].split("\n# ")[0]
    assert {r["id"]: r["version"] for r in read_predictions(log_path)} == {"a": "1", "b": "2", "c": "2"}


def test_pinned_references_are_not_watched(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "b")
    server = Server(Predictor(bundle), None)
    watcher = AliasWatcher(server, {"champion": (str(bundle), None), "shadow": ("toy/3", "3")}, interval=1)
    assert watcher.watched == {}


def test_traffic_moves_live_between_the_arms(tmp_path: Path) -> None:
    from mlops.core.refs import CHALLENGER
    from mlops.serve.routing import Arm

    champion, challenger = build_bundle(tmp_path / "c", weights_seed=1), build_bundle(tmp_path / "n", weights_seed=2)
    server = Server(Predictor(champion), PredictionLog(tmp_path / "log.sqlite"), version="1",
                    challenger=Arm(Predictor(challenger), "2", CHALLENGER), ab_percent=0)
    with TestClient(server.app()) as client:
        def variants() -> set[str]:
            return {client.post("/v1/models/toy:predict", json={"id": f"k{i}", "instances": [ROW]}
                                ).headers["X-Model-Variant"] for i in range(40)}

        assert variants() == {"champion"}
        moved = client.post("/mlops/v1/models/toy/traffic", json={"percent": 100})
        assert moved.status_code == 200
        assert moved.json() == {"name": "toy", "champion": {"version": "1"}, "challenger": {"version": "2"},
                                "percent": 100.0}
        assert variants() == {"challenger"}
        assert client.post("/mlops/v1/models/toy/traffic", json={"percent": 50}).status_code == 200
        assert variants() == {"champion", "challenger"}
        bad = client.post("/mlops/v1/models/toy/traffic", json={"percent": 101})
        assert bad.status_code == 400 and bad.json()["field"] == "percent"


def test_traffic_without_a_challenger_is_a_409(tmp_path: Path) -> None:
    server = Server(Predictor(build_bundle(tmp_path / "c")), None)
    with TestClient(server.app()) as client:
        refused = client.post("/mlops/v1/models/toy/traffic", json={"percent": 10})
        assert refused.status_code == 409 and "--ab" in refused.json()["error"]
        assert client.post("/mlops/v1/models/toy/traffic", json={"percent": 0}).status_code == 200
