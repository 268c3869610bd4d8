"""The serving app over a real bundle and ONNX Runtime: protocols, validation, auth, log, metrics."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from mlops.cli import main
from mlops.core.errors import MlopsError
from mlops.core.ports import free_port
from mlops.core.predlog import PredictionLog, read_predictions
from mlops.package.predictor import Predictor, RequestError
from mlops.serve.app import Server
from tests.conftest import ROOT
from tests.serve_fixtures import build_bundle

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


def make_client(bundle: Path, tmp_path: Path, **kwargs: Any) -> tuple[TestClient, Path]:
    log_path = tmp_path / "log.sqlite"
    server = Server(Predictor(bundle, max_batch=kwargs.pop("max_batch", 16)), PredictionLog(log_path), version="3",
                    **kwargs)
    return TestClient(server.app()), log_path


@pytest.fixture
def client(bundle: Path, tmp_path: Path) -> TestClient:
    c, _ = make_client(bundle, tmp_path, max_body=4096)
    with c:
        yield c


def v2(inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"inputs": inputs} | extra


def col(name: str, data: list[Any], datatype: str = "FP64", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}


GOOD_V2 = [col("age", [41.0, None]), col("income", [50, 60], "INT64"), col("city", ["a", None], "BYTES")]

BAD = [
    # (id, path, body or raw bytes, status, field substring)
    ("v1-invalid-json", "/v1/models/toy:predict", b"{not json", 400, "body"),
    ("v1-nan-literal", "/v1/models/toy:predict", b'{"instances":[{"age":NaN,"income":1,"city":"a"}]}', 400, "body"),
    ("v1-no-instances", "/v1/models/toy:predict", {"rows": []}, 400, "instances"),
    ("v1-body-not-object", "/v1/models/toy:predict", [1, 2], 400, "instances"),
    ("v1-empty-instances", "/v1/models/toy:predict", {"instances": []}, 400, "instances"),
    ("v1-missing-column", "/v1/models/toy:predict", {"instances": [{"age": 1, "income": 2}]}, 400, "instances[0].city"),
    ("v1-unknown-column", "/v1/models/toy:predict", {"instances": [ROW | {"zip": 1}]}, 400, "instances[0].zip"),
    ("v1-string-for-number", "/v1/models/toy:predict", {"instances": [ROW | {"age": "old"}]}, 400, "age"),
    ("v1-bool-for-number", "/v1/models/toy:predict", {"instances": [ROW | {"income": True}]}, 400, "income"),
    ("v1-list-for-category", "/v1/models/toy:predict", {"instances": [ROW | {"city": ["a"]}]}, 400, "city"),
    ("v1-huge-number", "/v1/models/toy:predict", {"instances": [ROW | {"age": 1e300}]}, 400, "age"),
    ("v1-wrong-list-length", "/v1/models/toy:predict", {"instances": [[1.0, 2.0]]}, 400, "instances[0]"),
    ("v1-instance-not-object", "/v1/models/toy:predict", {"instances": ["x"]}, 400, "instances[0]"),
    ("v1-id-not-string", "/v1/models/toy:predict", {"instances": [ROW], "id": 5}, 400, "id"),
    ("v1-batch-over-limit", "/v1/models/toy:predict", {"instances": [ROW] * 17}, 413, "instances"),
    ("v1-unknown-model", "/v1/models/other:predict", {"instances": [ROW]}, 404, "model"),
    ("v1-unknown-verb", "/v1/models/toy:explain", {"instances": [ROW]}, 404, "path"),
    ("v2-no-inputs", "/v2/models/toy/infer", {"outputs": []}, 400, "inputs"),
    ("v2-input-not-object", "/v2/models/toy/infer", v2(["age"]), 400, "inputs[0]"),
    ("v2-missing-datatype", "/v2/models/toy/infer", v2([{"name": "age", "shape": [1], "data": [1]}]), 400,
     "inputs[0].datatype"),
    ("v2-unknown-input", "/v2/models/toy/infer", v2(GOOD_V2 + [col("zip", [1, 2])]), 400, "inputs[3].name"),
    ("v2-missing-input", "/v2/models/toy/infer", v2(GOOD_V2[:2]), 400, "inputs.city"),
    ("v2-duplicate-input", "/v2/models/toy/infer", v2(GOOD_V2 + [GOOD_V2[0]]), 400, "inputs[3].name"),
    ("v2-shape-mismatch", "/v2/models/toy/infer", v2([col("age", [1.0, 2.0], shape=[3])] + GOOD_V2[1:]), 400,
     "inputs[0].shape"),
    ("v2-rows-disagree", "/v2/models/toy/infer", v2([col("age", [1.0])] + GOOD_V2[1:]), 400, "inputs[1].shape"),
    ("v2-bad-datatype", "/v2/models/toy/infer", v2([col("age", [1.0, 2.0], "FLOAT")] + GOOD_V2[1:]), 400,
     "inputs[0].datatype"),
    ("v2-bytes-for-number", "/v2/models/toy/infer", v2([col("age", ["1", "2"], "BYTES")] + GOOD_V2[1:]), 400,
     "inputs[0].data"),
    ("v2-lossy-int-cast", "/v2/models/toy/infer", v2([col("income", [2**40, 1], "INT64")] + GOOD_V2[:1] + GOOD_V2[2:]),
     400, "inputs[0].data"),
    ("v2-negative-shape", "/v2/models/toy/infer", v2([col("age", [1.0], shape=[-1])] + GOOD_V2[1:]), 400,
     "inputs[0].shape"),
    ("v2-data-not-list", "/v2/models/toy/infer", v2([{"name": "age", "shape": [1], "datatype": "FP32", "data": 1}]),
     400, "inputs[0].data"),
    ("v2-single-tensor-wrong-width", "/v2/models/toy/infer", v2([col("x", [[1.0, 2.0]], shape=[1, 2])]), 400,
     "inputs[0].shape"),
    ("v2-unknown-model", "/v2/models/other/infer", v2(GOOD_V2), 404, "model"),
    ("feedback-no-id", "/v1/feedback", {"label": "yes"}, 400, "body.id"),
    ("feedback-no-label", "/v1/feedback", {"id": "x"}, 400, "body.label"),
    ("feedback-bad-value", "/v1/feedback", [{"id": "x", "value": "high"}], 400, "[0].value"),
    # a lone surrogate (JSON escapes it, json.dumps below writes "\ud800") is no text the log or an answer can hold
    ("v1-surrogate-id", "/v1/models/toy:predict", {"instances": [ROW], "id": "\ud800"}, 400, "id"),
    ("v1-surrogate-column", "/v1/models/toy:predict", {"instances": [ROW | {"\udfff": 1}]}, 400, "instances[0]"),
    ("v1-surrogate-category", "/v1/models/toy:predict", {"instances": [ROW | {"city": "a\ud800"}]}, 400,
     "instances[0].city"),
    ("v2-surrogate-id", "/v2/models/toy/infer", v2(GOOD_V2, id="\udc00"), 400, "id"),
    ("v2-surrogate-name", "/v2/models/toy/infer", v2(GOOD_V2 + [col("\ud800", [1, 2])]), 400, "inputs[3].name"),
    ("v2-surrogate-bytes", "/v2/models/toy/infer", v2(GOOD_V2[:2] + [col("city", ["a", "\ud800"], "BYTES")]), 400,
     "inputs[2].data[1]"),
    ("feedback-surrogate-id", "/v1/feedback", {"id": "\ud800", "label": "yes"}, 400, "id"),
    ("v2-parameters-not-object", "/v2/models/toy/infer", v2(GOOD_V2, parameters="x"), 400, "parameters"),
    # past a float's range: it was a 500 (OverflowError) in the check meant to refuse it
    ("feedback-huge-value", "/v1/feedback", b'{"id": "x", "value": ' + b"9" * 400 + b"}", 400, "body.value"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_is_a_4xx_naming_the_field(client: TestClient, path: str, body: Any, status: int, field: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    assert field in payload["field"], payload
    assert payload["error"].startswith(payload["field"])


def test_body_over_the_size_limit_is_413(client: TestClient) -> None:
    response = client.post("/v1/models/toy:predict", content=b" " * 5000, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_v1_predict_with_objects_lists_and_nulls(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/v1/models/toy:predict",
                           json={"id": "req-1", "instances": [ROW, [None, 50.0, None], ROW | {"city": "unseen"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ids"] == ["req-1-0", "req-1-1", "req-1-2"]
    for p in body["predictions"]:
        assert p["label"] in ("no", "yes") and abs(sum(p["probabilities"]) - 1) < 1e-5


def test_v2_infer_per_column_and_single_tensor_agree(client: TestClient) -> None:
    per_column = client.post("/v2/models/toy/infer", json=v2(GOOD_V2, id="abc"))
    assert per_column.status_code == 200, per_column.text
    body = per_column.json()
    assert body["id"] == "abc" and body["model_name"] == "toy" and body["model_version"] == "3"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [2]
    assert outputs["probabilities"]["shape"] == [2, 2]
    single = client.post("/v2/models/toy/infer", json=v2([col("x", [[41.0, 50, "a"], [None, 60, None]], "BYTES",
                                                              shape=[2, 3])]))
    assert single.status_code == 200, single.text
    assert {o["name"]: o["data"] for o in single.json()["outputs"]} == {o: outputs[o]["data"] for o in outputs}


def test_metadata_health_and_metrics(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/models/toy/ready").json() == {"name": "toy", "ready": True}
    assert client.get("/v1/models/toy").json() == {"name": "toy", "ready": True}
    assert client.get("/v1/models/other").status_code == 404
    meta = client.get("/v2/models/toy").json()
    assert [i["name"] for i in meta["inputs"]] == ["age", "income", "city"]
    assert meta["inputs"][2]["datatype"] == "BYTES"
    assert client.get("/v2/models/nope").status_code == 404
    client.post("/v1/models/toy:predict", json={"instances": [ROW]})
    client.post("/v1/models/toy:predict", json={"instances": []})
    text = client.get("/metrics").text
    assert 'mlops_requests_total{model="toy",route="v1_predict",status="200",variant="champion"} 1.0' in text
    assert 'mlops_requests_total{model="toy",route="v1_predict",status="400",variant="champion"} 1.0' in text
    assert 'mlops_request_latency_seconds_bucket{le="0.0001"' in text


def test_predictions_and_feedback_are_logged(bundle: Path, tmp_path: Path) -> None:
    c, log_path = make_client(bundle, tmp_path)
    with c:
        c.post("/v1/models/toy:predict", json={"id": "p1", "instances": [ROW]})
        assert c.post("/v1/feedback", json={"id": "p1", "label": "yes"}).json() == {"recorded": 1}
    rows = read_predictions(log_path)
    assert [(r["id"], r["model"], r["version"], r["variant"]) for r in rows] == [("p1", "toy", "3", "champion")]
    assert json.loads(rows[0]["inputs"]) == ROW
    assert json.loads(rows[0]["outputs"])["label"] in ("no", "yes")
    feedback = sqlite3.connect(log_path).execute("SELECT id, label FROM feedback").fetchall()
    assert feedback == [("p1", "yes")]


def test_bearer_token(bundle: Path, tmp_path: Path) -> None:
    c, _ = make_client(bundle, tmp_path, token="s3cret")
    with c:
        assert c.post("/v1/models/toy:predict", json={"instances": [ROW]}).status_code == 401
        wrong = c.post("/v1/models/toy:predict", json={"instances": [ROW]}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["field"] == "authorization"
        ok = c.post("/v1/models/toy:predict", json={"instances": [ROW]}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_serving_process_imports_no_training_stack(bundle: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from mlops.serve.run import ServeOptions, build_server\n"
        f"server = build_server(ServeOptions(model={str(bundle)!r}, log={str(tmp_path / 'log.sqlite')!r}))\n"
        "server.app()\n"
        "print(sorted(m for m in ('torch', 'lightning', 'prefect', 'evidently', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_kserve_runtime_refuses_what_only_our_app_does(tmp_path: Path) -> None:
    """`--runtime kserve` serves inference only: a flag it would silently ignore is an error instead."""
    bundle = build_bundle(tmp_path / "bundle")
    proc = subprocess.run([sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--runtime", "kserve",
                           "--shadow", str(bundle)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--shadow needs the default runtime (--runtime mlops)" in proc.stderr, proc.stderr



@pytest.mark.parametrize(("runtime", "flag"), [("mlops", "--port"), ("mlops", "--grpc-port"), ("kserve", "--port")])
def test_a_port_another_process_listens_on_is_one_error_line_before_the_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], runtime: str, flag: str) -> None:
    """Before, uvicorn logged its OSError and exited 3 once the model had loaded (gRPC's port alone was checked).
    The model here does not exist: the port's error comes first, so nothing was fetched."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = ["--port", str(port)] if flag == "--port" else ["--port", str(free_port()), "--grpc-port", str(port)]
        code = main(["serve", str(tmp_path / "no-bundle"), "--runtime", runtime, *ports])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "another process listens on" in err, err
    assert f"e.g. {flag} " in err and "no-bundle" not in err, err


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_the_port_suggested_beside_host_is_a_number(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    flag: str) -> None:
    """With --host 0.0.0.0 the suggestion read `--port 0.0.0.0:N`, which the parser refuses: --port takes a number
    (only collect's --http takes HOST:PORT)."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = ["--port", str(port)] if flag == "--port" else ["--port", str(free_port()), "--grpc-port", str(port)]
        code = main(["serve", str(tmp_path / "no-bundle"), "--host", "0.0.0.0", *ports])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 0.0.0.0:{port}" in err, err
    suggested = err.rpartition(f"e.g. {flag} ")[2].split()[0]
    assert suggested.isdecimal(), err


def test_a_taken_grpc_port_under_kserve_is_refused_as_the_flag_it_does_not_take(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stock runtime takes no --grpc-port: said first, not "choose another port" for a flag it then refuses."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", str(tmp_path / "no-bundle"), "--runtime", "kserve", "--port", str(free_port()),
                     "--grpc-port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and "--grpc-port needs the default runtime (--runtime mlops)" in err, err
    assert "cannot listen" not in err, err


@pytest.mark.parametrize("sync", ["NORMAL", "FULL"], ids=["commit-on-loop", "commit-on-log-thread"])
def test_a_prediction_that_cannot_be_logged_is_never_a_200(bundle: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    monkeypatch.setenv("MLOPS_LOG_SYNC", sync)
    client, log_path = make_client(bundle, tmp_path)
    with client:
        assert client.post("/v1/models/toy:predict", json={"instances": [ROW]}).status_code == 200
        db = sqlite3.connect(log_path)
        db.execute("ALTER TABLE predictions RENAME TO moved")  # every later insert fails
        db.commit()
        failed = client.post("/v1/models/toy:predict", json={"instances": [ROW]})
        assert failed.status_code == 503 and failed.json()["field"] == "log"
        db.execute("ALTER TABLE moved RENAME TO predictions")
        db.commit()
        db.close()
        assert client.post("/v1/models/toy:predict", json={"id": "back", "instances": [ROW]}).status_code == 200
    assert [r["id"] for r in read_predictions(log_path)][-1] == "back" and len(read_predictions(log_path)) == 2


@pytest.mark.parametrize(("values", "index", "message"), [
    ([1.0, float("nan"), 2.0], 1, "non-finite"),
    ([1.0, 2.0, 1e39], 2, "overflows FP32"),
    ([1, 2, 3, 2**25], 3, "without loss"),
    ([1.5, 2, 2**25], 2, "without loss"),
    ([1.0, True], 1, "got bool"),
    ([1.0, "2"], 1, "got str"),
])
def test_a_bad_value_is_named_by_row_whichever_path_checks_the_column(bundle: Path, values: list[Any], index: int,
                                                                     message: str) -> None:
    from mlops.package.predictor import RequestError

    with pytest.raises(RequestError) as caught:
        Predictor(bundle).column("age", values, "instances[].age")
    assert caught.value.field == f"instances[].age[{index}]" and message in caught.value.message


def test_numeric_and_string_columns_are_the_arrays_the_graph_takes(bundle: Path) -> None:
    p = Predictor(bundle)
    floats = [0.1, -3.0, 1e30, 2.5]
    assert p.column("age", floats, "x").dtype == np.float32
    np.testing.assert_array_equal(p.column("age", floats, "x"), np.float32(floats).reshape(-1, 1))
    np.testing.assert_array_equal(p.column("age", [1, 2**24, 3.5], "x"), np.float32([1, 2**24, 3.5]).reshape(-1, 1))
    with_missing = p.column("age", [1.0, None], "x")
    assert with_missing[0, 0] == 1.0 and np.isnan(with_missing[1, 0])
    assert p.column("city", ["a", "b"], "x").tolist() == [["a"], ["b"]]
    assert p.column("city", ["a", None], "x").tolist() == [["a"], [""]]
    with pytest.raises(RequestError, match=r"x\[1\]: expected a string category for 'city', got the number 3"):
        p.column("city", ["a", 3], "x")  # a string column in training: a number is a mistake, not a category


def test_thumbs_and_outcome_feedback_are_recorded_and_a_bad_thumb_is_a_400(client: TestClient, tmp_path: Path) -> None:
    assert client.post("/v1/models/toy:predict", json={"id": "p", "instances": [ROW, ROW]}).json()["ids"] == ["p-0", "p-1"]
    assert client.post("/v1/feedback", json=[{"id": "p-0", "thumbs": "up"}, {"id": "p-1", "converted": True}]
                       ).status_code == 200
    bad = client.post("/v1/feedback", json={"id": "p3", "thumbs": "sideways"})
    assert bad.status_code == 400 and bad.json()["field"] == "body.thumbs"
    empty = client.post("/v1/feedback", json={"id": "p4"})
    assert empty.status_code == 400 and empty.json()["field"] == "body.label"


@pytest.mark.parametrize("bad", [float("nan"), 2**25, True, "2", 1e39])
def test_long_and_short_columns_are_checked_alike(bundle: Path, bad: Any) -> None:
    # a few rows are checked in Python, more with numpy (predictor.SMALL_COLUMN): same errors, same arrays
    from mlops.package.predictor import SMALL_COLUMN, RequestError

    p = Predictor(bundle)
    errors = []
    for n in (3, SMALL_COLUMN + 5):
        good = [float(i) - 0.5 for i in range(n)]
        np.testing.assert_array_equal(p.column("age", good, "x"), np.float32(good).reshape(-1, 1))
        with pytest.raises(RequestError) as caught:
            p.column("age", [*good[:-1], bad], "x")
        errors.append((caught.value.field, caught.value.message))
    assert errors[0][1] == errors[1][1] and errors[0][0] == "x[2]" and errors[1][0] == f"x[{SMALL_COLUMN + 4}]"


@pytest.mark.parametrize("path", ["/v2/models/toy/infer", "/v2/models/a:b/infer", "/v2/models/a/b/infer",
                                  "/v2/models//infer", "/v2/models/toy/infer/", "/v1/models/toy:predict",
                                  "/v1/models/toy", "/v1/models/a/b:predict", "/v1/models/", "/v2/models/toy",
                                  "/v1/feedback", "/v2/repository/models/toy/load"])
def test_the_inference_fast_path_takes_exactly_what_starlette_routes_to_the_inference_handlers(
        bundle: Path, tmp_path: Path, path: str) -> None:
    from starlette.routing import Match

    from mlops.serve.app import V1_PREDICT, V2_INFER, inference_route

    server = Server(Predictor(bundle), None)
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    routed = None
    for route in server.app().routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            routed = {server.infer: V2_INFER, server.v1_predict: V1_PREDICT}.get(route.endpoint)
            if routed is not None:
                name = child["path_params"].get("name", child["path_params"].get("name_verb"))
            break
    assert inference_route(path) == ((routed, name) if routed else None)


def test_other_methods_on_the_inference_routes_go_through_starlette(client: TestClient) -> None:
    assert client.get("/v2/models/toy/infer").status_code == 405
    assert client.put("/v1/models/toy:predict", json={"instances": [ROW]}).status_code == 405
    assert client.post("/v2/models/toy/infer", json=v2([col("age", [1.0]), col("income", [2.0]),
                                                         col("city", ["a"], "BYTES")])).status_code == 200


def test_a_client_that_leaves_mid_body_gets_no_answer_and_nothing_is_logged(bundle: Path, tmp_path: Path) -> None:
    import asyncio

    server = Server(Predictor(bundle), PredictionLog(tmp_path / "log.sqlite"))
    app, sent = server.app(), []
    messages = [{"type": "http.request", "body": b'{"instances": [', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/models/toy:predict", "headers": [], "root_path": ""}
    asyncio.run(app(scope, receive, send))
    server.log.close()
    assert sent == [] and read_predictions(tmp_path / "log.sqlite") == []
    metrics = server.metrics.render()[0].decode()
    assert 'mlops_requests_total{model="toy",route="v1_predict",status="499",variant="champion"} 1.0' in metrics
    assert "mlops_requests_in_flight 0.0" in metrics


def test_mounted_under_a_prefix_the_inference_routes_answer_through_starlette(bundle: Path, tmp_path: Path) -> None:
    # the fast path matches the bare paths only; under a Mount the same handlers answer through Starlette's routing
    from starlette.applications import Starlette
    from starlette.routing import Mount

    body = {"id": "m1", "instances": [ROW]}
    direct, _ = make_client(bundle, tmp_path / "direct")
    server = Server(Predictor(bundle), PredictionLog(tmp_path / "mounted.sqlite"), version="3")
    with direct, TestClient(Starlette(routes=[Mount("/serving", app=server.app())])) as mounted:
        expected = direct.post("/v1/models/toy:predict", json=body)
        got = mounted.post("/serving/v1/models/toy:predict", json=body)
        v2_got = mounted.post("/serving/v2/models/toy/infer", json=v2([col("age", [1.0]), col("income", [2.0]),
                                                                        col("city", ["a"], "BYTES")]))
        metrics = mounted.get("/serving/metrics").text
    assert (got.status_code, got.content, got.headers["x-model-variant"]) == (200, expected.content, "champion")
    assert v2_got.status_code == 200 and v2_got.json()["model_name"] == "toy"
    assert 'route="v1_predict",status="200"' in metrics and 'route="v2_infer",status="200"' in metrics


# --- the edges: feedback, token, routes and methods, content types, bodies that never finish -------------------

def test_feedback_takes_json_for_ids_this_server_predicted_with_labels_of_the_task(client: TestClient) -> None:
    client.post("/v1/models/toy:predict", json={"id": "p1", "instances": [ROW]})
    as_text = client.post("/v1/feedback", content=json.dumps({"id": "p1", "label": "yes"}),
                          headers={"content-type": "text/plain"})  # what a cross-site form can send
    assert as_text.status_code == 415 and as_text.json()["field"] == "content-type"
    untyped = client.post("/v1/feedback", content=json.dumps({"id": "p1", "label": "yes"}))
    assert untyped.status_code == 415 and untyped.json()["field"] == "content-type"
    unknown = client.post("/v1/feedback", json=[{"id": "p1", "label": "yes"}, {"id": "never", "label": "no"}])
    assert unknown.status_code == 404 and unknown.json()["field"] == "[1].id" and "'never'" in unknown.json()["error"]
    for bad, field in (({"id": "p1", "label": {"class": "yes"}}, "body.label"),
                       ({"id": "p1", "label": ["yes"]}, "body.label"), ({"id": "p1", "label": True}, "body.label"),
                       ({"id": "p1", "value": 2.5}, "body.value"),  # a classifier's truth is a label
                       ({"id": "x" * 3000, "label": "yes"}, "body.id")):  # within the 4 KB body limit
        response = client.post("/v1/feedback", json=bad)
        assert response.status_code == 400 and response.json()["field"] == field, (bad, response.text)
    assert sqlite3.connect(client.app.server.log.path).execute("SELECT COUNT(*) FROM feedback").fetchone() == (0,)
    ok = client.post("/v1/feedback", json={"id": "p1", "label": "yes"}, headers={"content-type": "application/json; "
                                                                                                   "charset=utf-8"})
    assert ok.json() == {"recorded": 1}
    assert client.post("/v1/feedback", json={"id": "p1", "label": 1}).status_code == 200  # integer classes


def test_feedback_without_a_prediction_log_knows_no_id(bundle: Path) -> None:
    with TestClient(Server(Predictor(bundle), None).app()) as c:
        c.post("/v1/models/toy:predict", json={"id": "p1", "instances": [ROW]})
        assert c.post("/v1/feedback", json={"id": "p1", "label": "yes"}).status_code == 404


def test_a_request_id_too_long_to_name_in_feedback_is_refused(client: TestClient) -> None:
    response = client.post("/v1/models/toy:predict", json={"id": "r" * 241, "instances": [ROW]})
    assert response.status_code == 400 and response.json()["field"] == "id"
    assert client.post("/v1/models/toy:predict", json={"id": "r" * 240, "instances": [ROW]}).status_code == 200


def test_with_a_token_only_health_answers_without_it(bundle: Path, tmp_path: Path) -> None:
    c, _ = make_client(bundle, tmp_path, token="s3cret")
    auth = {"authorization": "Bearer s3cret"}
    with c:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200
        for path in ("/metrics", "/openapi.json", "/v2", "/v2/models/toy", "/v2/models/toy/ready", "/v1/models/toy"):
            refused = c.get(path)
            assert refused.status_code == 401 and refused.json()["field"] == "authorization", path
            assert c.get(path, headers=auth).status_code == 200, path
        for path in ("/v1/feedback", "/v2/repository/models/toy/traffic", "/v2/repository/models/toy/load"):
            assert c.post(path, json={}).status_code == 401, path


@pytest.mark.parametrize(("method", "path", "status", "field"), [
    ("GET", "/nowhere", 404, "path"), ("POST", "/v3/models/toy/infer", 404, "path"),
    ("GET", "/v2/models/toy/infer", 405, "method"), ("DELETE", "/v1/feedback", 405, "method"),
    ("PUT", "/metrics", 405, "method"), ("GET", "/v1/models/toy:predict", 405, "method"),  # was "no model toy:predict"
    ("GET", "/v1/models/other:predict", 405, "method"), ("GET", "/v1/models/other", 404, "model"),
])
def test_unknown_routes_and_methods_answer_json_naming_what_is_wrong(client: TestClient, method: str, path: str,
                                                                     status: int, field: str) -> None:
    response = client.request(method, path)
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert response.json()["field"] == field and response.json()["error"].startswith(f"{field}: ")
    if status == 405:
        assert response.headers["allow"]


@pytest.mark.parametrize("path", ["/v1/models/toy:predict", "/v2/models/toy/infer"])
@pytest.mark.parametrize(("content_type", "status"), [
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    (None, 200), ("application/json", 200), ("application/json; charset=utf-8", 200), ("application/vnd.x+json", 200),
])
def test_inference_takes_json_or_no_content_type(client: TestClient, path: str, content_type: str | None,
                                                 status: int) -> None:
    body = {"instances": [ROW]} if path.startswith("/v1") else v2(GOOD_V2)
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=json.dumps(body), headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        assert response.json()["field"] == "content-type"


@pytest.mark.parametrize("path", ["/v1/models/toy:predict", "/v1/feedback", "/v2/repository/models/toy/traffic"])
def test_a_body_that_never_finishes_is_a_408(bundle: Path, tmp_path: Path, path: str) -> None:
    import asyncio

    server = Server(Predictor(bundle), PredictionLog(tmp_path / "log.sqlite"), body_timeout_s=0.2)
    app, sent = server.app(), []

    async def receive() -> dict[str, Any]:
        if not sent and not hasattr(receive, "started"):
            receive.started = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b'{"instances": [', "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "root_path": "", "query_string": b""}
    asyncio.run(app(scope, receive, send))
    server.log.close()
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "body: not received in full within 0.2 s", "field": "body"}
    assert len(sent) == 2 and read_predictions(tmp_path / "log.sqlite") == []


def test_the_predictor_runs_the_packed_graph_and_answers_as_model_onnx(bundle: Path, tmp_path: Path) -> None:
    predictor = Predictor(bundle)
    assert predictor.packed_input is not None and predictor.packed_columns == ["age", "income"]
    feeds = predictor.feeds_from_rows([{"age": 30, "income": None, "city": "a"}, {"age": None, "income": 5.0,
                                                                                   "city": "zz"}])
    answer = predictor.predict(feeds).outputs
    named = dict(zip([o.name for o in predictor.session.get_outputs()], predictor.session.run(None, feeds),
                     strict=True))  # model.onnx itself, named columns in
    assert [i.name for i in predictor.session.get_inputs()] == ["age", "income", "city"]
    np.testing.assert_array_equal(answer["probabilities"], named["probabilities"])
    assert list(answer["label"]) == list(named["label"])
    altered = shutil.copytree(bundle, tmp_path / "altered")
    (altered / "packed.onnx").write_bytes((altered / "packed.onnx").read_bytes() + b"x")
    with pytest.raises(MlopsError, match="packed.onnx .*altered"):
        Predictor(altered)


def test_a_few_rows_of_plain_numbers_decode_into_one_block_that_never_goes_stale(bundle: Path) -> None:
    predictor = Predictor(bundle)
    rows = [{"age": 30, "income": 2.5, "city": "a"}, {"age": 41.5, "income": -1, "city": "b"}]
    feeds = predictor.feeds_from_rows(rows)
    assert predictor.block_key is not None and predictor.block_key in feeds
    np.testing.assert_array_equal(feeds[predictor.block_key], np.float32([[30, 2.5], [41.5, -1]]))
    assert "age" not in feeds  # the block alone stands for the packed columns: the two cannot disagree
    np.testing.assert_array_equal(predictor.named(feeds)["age"], np.float32([[30], [41.5]]))
    with_null = predictor.feeds_from_rows([{"age": None, "income": 2.5, "city": "a"}])
    assert predictor.block_key not in with_null  # checked column by column, as ever
    answer = predictor.predict(feeds).outputs["probabilities"]
    named = predictor.named(feeds)
    assert predictor.block_key not in named
    named["age"] = np.float32([[99.0], [41.5]])  # a column replaced by name: the block is joined anew
    changed = predictor.predict(named).outputs["probabilities"]
    fresh = predictor.predict(predictor.feeds_from_rows([rows[0] | {"age": 99.0}, rows[1]])).outputs["probabilities"]
    np.testing.assert_array_equal(changed, fresh)
    assert not np.array_equal(answer[0], changed[0])
    np.testing.assert_array_equal(predictor.predict({k: v[1:] for k, v in feeds.items()}).outputs["probabilities"],
                                  fresh[1:])  # rows sliced: the block is joined anew
    many = [{"age": i, "income": i / 3, "city": "a"} for i in range(40)]  # past the few rows checked in Python
    block = predictor.feeds_from_rows(many)
    assert predictor.block_key in block
    one_by_one = predictor.feeds_from_rows([*many[:-1], many[-1] | {"age": None}])
    assert predictor.block_key not in one_by_one
    np.testing.assert_array_equal(predictor.predict(block).outputs["probabilities"][:-1],
                                  predictor.predict(one_by_one).outputs["probabilities"][:-1])


def test_a_bundle_from_before_packing_is_served_through_model_onnx(bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((bundle / "bundle.json").read_text())
    del meta["packed"]
    (old / "bundle.json").write_text(json.dumps(meta))
    (old / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes())
    before, now = Predictor(old), Predictor(bundle)
    assert before.packed_input is None and before.block_key is None and before.session is before.runner
    rows = [{"age": 30, "income": None, "city": "a"}, {"age": 2, "income": 5.0, "city": "b"}]
    np.testing.assert_allclose(before.predict(before.feeds_from_rows(rows)).outputs["probabilities"],
                               now.predict(now.feeds_from_rows(rows)).outputs["probabilities"], atol=1e-6)
