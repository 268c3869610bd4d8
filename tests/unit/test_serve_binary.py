"""The V2 binary tensor data extension on our app: bodies encoded and answers decoded by tritonclient's own
functions (what it sends by default), answered as the JSON path answers; malformed binary bodies are a 400
naming the input at fault, never a 500."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from mlops.core.predlog import PredictionLog, read_predictions
from mlops.package.predictor import Predictor, RequestError
from mlops.serve.app import Server
from mlops.serve.binary import HEADER_LENGTH
from mlops.serve.grpc import request_body, v2_messages
from tests.media_fixtures import build_media_bundle, image_png
from tests.serve_fixtures import HAS_KSERVE, build_bundle, kserve_app

http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.http._utils import _get_inference_request  # noqa: E402 - after the skip

V2 = "/v2/models/toy/infer"
AGES, INCOMES, CITIES = [41.0, 30.0, 55.5], [50.0, 40.0, 70.5], ["a", "b", "c"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def media_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_media_bundle(tmp_path_factory.mktemp("media") / "bundle")


def _client(bundle: Path, log: Path) -> TestClient:
    return TestClient(Server(Predictor(bundle, max_batch=16), PredictionLog(log), version="3").app())


@pytest.fixture
def client(bundle: Path, tmp_path: Path) -> Any:
    with _client(bundle, tmp_path / "log.sqlite") as c:
        yield c


def tensor(name: str, values: np.ndarray, datatype: str, binary: bool = True) -> Any:
    t = http.InferInput(name, list(values.shape), datatype)
    t.set_data_from_numpy(values, binary_data=binary)
    return t


def tabular(binary: bool = True) -> list[Any]:
    return [tensor("age", np.array(AGES).reshape(-1, 1), "FP64", binary),
            tensor("income", np.array(INCOMES, dtype=np.float32).reshape(-1, 1), "FP32", binary),
            tensor("city", np.array(CITIES, dtype=object).reshape(-1, 1), "BYTES", binary)]


def send(client: TestClient, inputs: list[Any], outputs: list[Any] | None = None, path: str = V2,
         request_id: str = "") -> Any:
    """A request as tritonclient.http builds it; the answer as tritonclient reads it (or the error response)."""
    body, json_size = _get_inference_request(inputs=inputs, request_id=request_id, outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=None)
    headers = {HEADER_LENGTH: str(json_size)} if json_size is not None else {}
    response = client.post(path, content=body, headers=headers)
    if response.status_code != 200:
        return response
    return http.InferResult.from_response_body(response.content, header_length=response.headers.get(HEADER_LENGTH))


def json_answer(client: TestClient, inputs: list[dict[str, Any]], path: str = V2) -> dict[str, Any]:
    response = client.post(path, json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return response.json()


def json_tabular() -> list[dict[str, Any]]:
    return [{"name": "age", "shape": [3, 1], "datatype": "FP64", "data": AGES},
            {"name": "income", "shape": [3, 1], "datatype": "FP32", "data": INCOMES},
            {"name": "city", "shape": [3, 1], "datatype": "BYTES", "data": CITIES}]


def assert_same(result: Any, expected: dict[str, Any]) -> None:
    for output in expected["outputs"]:
        got = result.as_numpy(output["name"])
        assert got is not None, output["name"]
        assert list(got.shape) == output["shape"]
        if output["datatype"] == "BYTES":
            assert [v.decode() for v in got.reshape(-1)] == output["data"]
        else:
            np.testing.assert_allclose(got.reshape(-1), output["data"], rtol=1e-6)


def test_default_tritonclient_request_is_answered_binary_as_json_answers(client: TestClient, tmp_path: Path) -> None:
    expected = json_answer(client, json_tabular())
    body, json_size = _get_inference_request(inputs=tabular(), request_id="", outputs=None, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=None)
    response = client.post(V2, content=body, headers={HEADER_LENGTH: str(json_size)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header = json.loads(response.content[:int(response.headers[HEADER_LENGTH])])
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in header["outputs"])
    result = http.InferResult.from_response_body(response.content, header_length=response.headers[HEADER_LENGTH])
    assert_same(result, expected)
    assert header["parameters"]["prediction_ids"].count(",") == 2


def test_binary_rows_are_logged_and_counted(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.sqlite"
    with _client(bundle, log) as client:
        result = send(client, tabular(), request_id="bin-1")
        metrics = client.get("/metrics").text
    ids = result.get_response()["parameters"]["prediction_ids"].split(",")
    assert ids == ["bin-1-0", "bin-1-1", "bin-1-2"]
    rows = {r["id"]: r for r in read_predictions(log)}
    assert set(ids) <= set(rows)
    logged = json.loads(rows["bin-1-1"]["inputs"])
    assert logged["city"] == "b" and logged["age"] == 30.0
    line = next(x for x in metrics.splitlines() if x.startswith("mlops_requests_total") and 'route="v2_infer"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_json_inputs_with_chosen_binary_outputs(client: TestClient) -> None:
    """Inputs in JSON, one output asked binary and the other JSON: each comes back as asked."""
    expected = json_answer(client, json_tabular())
    names = [o["name"] for o in expected["outputs"]]
    outputs = [http.InferRequestedOutput(names[0], binary_data=True), http.InferRequestedOutput(names[-1],
                                                                                                binary_data=False)]
    result = send(client, tabular(binary=False), outputs=outputs)
    got = result.get_response()["outputs"]
    assert [o["name"] for o in got] == [names[0], names[-1]]
    assert "binary_data_size" in got[0]["parameters"] and "data" in got[-1]
    assert_same(result, {"outputs": [o for o in expected["outputs"] if o["name"] in (names[0], names[-1])]})


def test_only_requested_outputs_are_answered(client: TestClient) -> None:
    expected = json_answer(client, json_tabular())
    first = expected["outputs"][0]["name"]
    result = send(client, tabular(), outputs=[http.InferRequestedOutput(first)])
    assert [o["name"] for o in result.get_response()["outputs"]] == [first]


def test_unknown_requested_output_is_refused_before_the_model_runs(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "log.sqlite"
    with _client(bundle, log) as client:
        response = send(client, tabular(), outputs=[http.InferRequestedOutput("nope")], request_id="never")
    assert response.status_code == 400
    assert response.json()["field"] == "outputs[0].name"
    assert not [r for r in read_predictions(log) if r["id"].startswith("never")]


def test_server_metadata_lists_the_extension(client: TestClient) -> None:
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


def test_media_bundle_binary_bytes_are_files_and_texts(media_bundle: Path, tmp_path: Path) -> None:
    """An image input's BYTES element is the encoded file itself; a text's is UTF-8: both as JSON answers."""
    images = [image_png(1), image_png(2)]
    texts = ["great coffee, fresh and strong", "stale chips bad smell"]
    with _client(media_bundle, tmp_path / "log.sqlite") as client:
        path = "/v2/models/reviews/infer"
        expected = json_answer(client, [
            {"name": "image", "shape": [2, 1], "datatype": "BYTES",
             "data": [base64.b64encode(i).decode() for i in images]},
            {"name": "review", "shape": [2, 1], "datatype": "BYTES", "data": texts},
            {"name": "age", "shape": [2, 1], "datatype": "FP32", "data": [41.0, 20.0]}], path)
        result = send(client, [tensor("image", np.array(images, dtype=object).reshape(-1, 1), "BYTES"),
                               tensor("review", np.array(texts, dtype=object).reshape(-1, 1), "BYTES"),
                               tensor("age", np.array([[41.0], [20.0]], dtype=np.float32), "FP32")], path=path)
        assert_same(result, expected)
        # a UINT8 tensor of pixels [N, H, W, C], binary, as the same pixels in JSON
        pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
        expected = json_answer(client, [
            {"name": "image", "shape": [2, 8, 8, 1], "datatype": "UINT8", "data": pixels.reshape(-1).tolist()},
            {"name": "review", "shape": [2, 1], "datatype": "BYTES", "data": texts},
            {"name": "age", "shape": [2, 1], "datatype": "FP32", "data": [41.0, 20.0]}], path)
        result = send(client, [tensor("image", pixels, "UINT8"),
                               tensor("review", np.array(texts, dtype=object).reshape(-1, 1), "BYTES"),
                               tensor("age", np.array([[41.0], [20.0]], dtype=np.float32), "FP32")], path=path)
        assert_same(result, expected)


def _raw(inputs: list[dict[str, Any]], tail: bytes, header_length: int | None = None) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + tail, {HEADER_LENGTH: str(len(header) if header_length is None else header_length)}


def _binary(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


AGE = np.array([41.0], dtype="<f4").tobytes()
INCOME = np.array([50.0], dtype="<f4").tobytes()
CITY = (1).to_bytes(4, "little") + b"a"
GOOD = [_binary("age", "FP32", [1, 1], 4), _binary("income", "FP32", [1, 1], 4), _binary("city", "BYTES", [1, 1], 5)]

MALFORMED = [
    # (id, inputs, tail, header length or None, field, words the message holds)
    ("header-beyond-body", GOOD, AGE + INCOME + CITY, 10_000, HEADER_LENGTH, "byte length"),
    ("header-not-a-number", GOOD, AGE + INCOME + CITY, -1, HEADER_LENGTH, "byte length"),
    ("size-beyond-body", GOOD, AGE + INCOME, None, "inputs[2].parameters.binary_data_size", "'city'"),
    ("size-mismatch", [_binary("age", "FP32", [1, 1], 8), *GOOD[1:]], AGE + AGE + INCOME + CITY, None,
     "inputs[0].parameters.binary_data_size", "'age'"),
    ("wrong-datatype", [_binary("age", "FP8", [1, 1], 4), *GOOD[1:]], AGE + INCOME + CITY, None,
     "inputs[0].datatype", "'age'"),
    ("bad-bytes-prefix", [*GOOD[:2], _binary("city", "BYTES", [1, 1], 5)], AGE + INCOME + (9).to_bytes(4, "little")
     + b"a", None, "inputs[2].data", "'city'"),
    ("truncated-prefix", [*GOOD[:2], _binary("city", "BYTES", [1, 1], 2)], AGE + INCOME + b"\x01\x00", None,
     "inputs[2].data", "'city'"),
    ("bytes-count-vs-shape", [*GOOD[:2], _binary("city", "BYTES", [2, 1], 5)], AGE + INCOME + CITY, None,
     "inputs[2].shape", "'city'"),
    ("not-utf8", [*GOOD[:2], _binary("city", "BYTES", [1, 1], 5)], AGE + INCOME + (1).to_bytes(4, "little")
     + b"\xff", None, "inputs[2].data[0]", "'city'"),
    ("bad-size-value", [_binary("age", "FP32", [1, 1], -4), *GOOD[1:]], AGE + INCOME + CITY, None,
     "inputs[0].parameters.binary_data_size", "bytes"),
    ("data-and-size", [GOOD[0] | {"data": [1.0]}, *GOOD[1:]], AGE + INCOME + CITY, None, "inputs[0].data",
     "not both"),
    ("bytes-left-over", GOOD, AGE + INCOME + CITY + b"xx", None, "body", "2 bytes"),
    ("numeric-as-bytes", [_binary("age", "BYTES", [1, 1], 6), *GOOD[1:]], (2).to_bytes(4, "little") + b"41"
     + INCOME + CITY, None, "inputs[0].data", "numeric"),
    ("nan-refused-as-in-json", GOOD, np.array([np.nan], dtype="<f4").tobytes() + INCOME + CITY, None,
     "inputs[0].data[0]", "non-finite"),
]


@pytest.mark.parametrize(("inputs", "tail", "length", "field", "words"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_binary_body_is_400_naming_the_input(client: TestClient, inputs: list[dict[str, Any]],
                                                      tail: bytes, length: int | None, field: str, words: str) -> None:
    body, headers = _raw(inputs, tail, length)
    if length == -1:
        headers[HEADER_LENGTH] = "twelve"
    response = client.post(V2, content=body, headers=headers | {"content-type": "application/octet-stream"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["field"] == field, answer
    assert words in answer["error"], answer


def test_well_formed_raw_body_is_answered(client: TestClient) -> None:
    """The malformed cases' good twin: the same hand-built body, right, is a 200."""
    body, headers = _raw(GOOD, AGE + INCOME + CITY)
    response = client.post(V2, content=body, headers=headers | {"content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"  # no binary output was asked for


def test_binary_sizes_without_the_header_name_the_header(client: TestClient) -> None:
    """A binary-extension body whose client forgot Inference-Header-Content-Length is JSON with no data: the 400
    says which header is missing rather than only that data is."""
    response = client.post(V2, content=json.dumps({"inputs": GOOD}), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["field"] == "inputs[0].data" and HEADER_LENGTH.lower() in answer["error"].lower(), answer


# --- the gRPC request decoding (mlops/serve/grpc.py): the same inputs as JSON ------------------------------

def _grpc_request(raw: bool) -> Any:
    request = v2_messages().ModelInferRequest(model_name="toy", id="g")
    for name, datatype, field, values in (("age", "FP64", "fp64_contents", AGES),
                                          ("income", "FP32", "fp32_contents", INCOMES),
                                          ("city", "BYTES", "bytes_contents", [c.encode() for c in CITIES])):
        t = request.inputs.add(name=name, datatype=datatype, shape=[3, 1])
        if raw:
            dtype = {"FP64": "<f8", "FP32": "<f4"}.get(datatype)
            request.raw_input_contents.append(np.array(values, dtype=dtype).tobytes() if dtype else b"".join(
                len(v).to_bytes(4, "little") + v for v in values))
        else:
            getattr(t.contents, field).extend(values)
    return request


@pytest.mark.parametrize("raw", [False, True], ids=["contents", "raw_input_contents"])
def test_grpc_request_is_the_json_inputs(raw: bool) -> None:
    body = request_body(_grpc_request(raw), frozenset())
    assert body["id"] == "g" and body["parameters"] == {"binary_data_output": True}
    assert [(t["name"], t["datatype"], t["shape"], t["data"]) for t in body["inputs"]] == [
        ("age", "FP64", [3, 1], AGES), ("income", "FP32", [3, 1], INCOMES), ("city", "BYTES", [3, 1], CITIES)]


def test_grpc_request_errors_name_the_input() -> None:
    request = _grpc_request(raw=True)
    del request.raw_input_contents[2]
    with pytest.raises(RequestError, match="2 given for 3 inputs"):
        request_body(request, frozenset())
    request = _grpc_request(raw=False)
    request.inputs[1].datatype = "FP16"
    with pytest.raises(RequestError) as caught:
        request_body(request, frozenset())
    assert caught.value.field == "inputs[1].datatype" and "'income'" in caught.value.message
    request = _grpc_request(raw=False)
    request.inputs[2].contents.bytes_contents[0] = b"\xff"
    with pytest.raises(RequestError) as caught:
        request_body(request, frozenset())
    assert caught.value.field == "inputs[2].data[0]" and "'city'" in caught.value.message


@pytest.mark.parametrize(("inputs", "tail", "length"), [m[1:4] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_the_stock_runtime_never_answers_a_malformed_binary_body_with_a_500(bundle: Path, inputs: list[dict[str, Any]],
                                                                            tail: bytes, length: int | None) -> None:
    """`--runtime kserve`: KServe decodes the extension itself, and an error of its decoding (a header length that
    is no number, sizes past the body) was its generic 500. What it takes (extra bytes, a size that disagrees with
    the shape) is stock KServe's reading, and left to it."""
    if not HAS_KSERVE:
        pytest.skip("kserve is not installed (pip install -e '.[serve]')")
    body, headers = _raw(inputs, tail, length)
    if length == -1:
        headers[HEADER_LENGTH] = "twelve"
    with TestClient(kserve_app(bundle)) as stock:
        response = stock.post(V2, content=body, headers=headers | {"content-type": "application/octet-stream"})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        answer = response.json()
        assert set(answer) == {"error", "field"} and answer["error"].startswith(f"{answer['field']}: "), answer
