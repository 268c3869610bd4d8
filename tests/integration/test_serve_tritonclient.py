"""NVIDIA's tritonclient.http against `mlops serve` with its defaults: binary inputs and binary outputs (the V2
binary tensor data extension), on a tabular bundle (FP64/FP32 numbers, BYTES categories) and on an image + text
bundle (images as BYTES of the encoded file). The answers are the JSON path's; the rows are in the log (read
with the log's reader) and the metrics count them; a malformed binary body is a 400 naming the input."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from mlops.core.predlog import LogReader
from tests.media_fixtures import build_media_bundle, image_png
from tests.net import LiveServer, serve_bundle
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402 - after the skip

AGES, INCOMES, CITIES = [41.0, 30.0, 55.5], [50.0, 40.0, 70.5], ["a", "b", "c"]
TEXTS = ["great coffee, fresh and strong", "stale chips bad smell"]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("tabular")
    yield from serve_bundle(build_bundle(tmp / "bundle"), tmp)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("media")
    yield from serve_bundle(build_media_bundle(tmp / "bundle"), tmp)


def client(live: LiveServer) -> Any:
    return httpclient.InferenceServerClient(f"127.0.0.1:{live.port}")


def tensor(name: str, values: np.ndarray, datatype: str, binary: bool = True) -> Any:
    t = httpclient.InferInput(name, list(values.shape), datatype)
    t.set_data_from_numpy(values, binary_data=binary)
    return t


def outputs_of(result: Any) -> dict[str, np.ndarray]:
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, values in expected.items():
        assert got[name].shape == values.shape, name
        if values.dtype == object:  # tritonclient reads BYTES as str from JSON, as bytes from binary
            assert [v.decode() for v in got[name].reshape(-1)] == values.reshape(-1).tolist(), name
        else:
            np.testing.assert_allclose(got[name], values, rtol=1e-6)


def tabular_inputs(binary: bool) -> list[Any]:
    return [tensor("age", np.array(AGES).reshape(-1, 1), "FP64", binary),
            tensor("income", np.array(INCOMES, dtype=np.float32).reshape(-1, 1), "FP32", binary),
            tensor("city", np.array(CITIES, dtype=object).reshape(-1, 1), "BYTES", binary)]


def log_rows(live: LiveServer, prefix: str) -> list[dict[str, Any]]:
    with LogReader(live.output.parent / "predictions.sqlite", archive=False) as reader:
        return [r for r in reader.predictions(("champion",)) if r["id"].startswith(prefix)]


def requests_counted(live: LiveServer) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mlops_requests_total") and 'route="v2_infer"' in line and 'status="200"' in line)


def test_tabular_defaults_answer_as_json_logged_and_counted(tabular: LiveServer) -> None:
    c = client(tabular)
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    before = requests_counted(tabular)
    # tritonclient with JSON everywhere: the JSON path's answer
    names = [o["name"] for o in c.get_model_metadata("toy")["outputs"]]
    json_outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in names]
    expected = outputs_of(c.infer("toy", tabular_inputs(binary=False), outputs=json_outputs, request_id="json"))
    # its defaults: binary inputs, and (no outputs named) binary_data_output
    result = c.infer("toy", tabular_inputs(binary=True), request_id="bin")
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    assert_same(outputs_of(result), expected)
    assert [r["id"] for r in log_rows(tabular, "bin-")] == ["bin-0", "bin-1", "bin-2"]
    logged = [json.loads(r["inputs"]) for r in log_rows(tabular, "bin-")]
    assert [r["city"] for r in logged] == CITIES and [r["age"] for r in logged] == AGES
    assert requests_counted(tabular) - before == 2


def test_tabular_malformed_binary_is_400_naming_the_input(tabular: LiveServer) -> None:
    c = client(tabular)
    inputs = tabular_inputs(binary=True)
    inputs[1]._raw_data = inputs[1]._raw_data[:-2]  # 10 bytes for 3 FP32 values
    inputs[1]._parameters["binary_data_size"] = 10
    with pytest.raises(InferenceServerException) as caught:
        c.infer("toy", inputs)
    assert caught.value.status() == "400"
    assert "inputs[1].parameters.binary_data_size" in caught.value.message() and "'income'" in caught.value.message()
    # a body whose header length points past its end
    header = json.dumps({"inputs": [{"name": "age", "datatype": "FP32", "shape": [1, 1],
                                     "parameters": {"binary_data_size": 4}}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", tabular.port, timeout=30)
    conn.request("POST", "/v2/models/toy/infer", header + b"\x00" * 4,
                 {"Inference-Header-Content-Length": str(len(header) + 100)})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 400 and answer["field"] == "inference-header-content-length"


def test_image_bytes_and_text_defaults_answer_as_json(media: LiveServer) -> None:
    c = client(media)
    images = [image_png(1), image_png(2)]
    ages = np.array([[41.0], [20.0]], dtype=np.float32)
    names = [o["name"] for o in c.get_model_metadata("reviews")["outputs"]]
    json_outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in names]
    # JSON: an image is base64 of its file
    expected = outputs_of(c.infer("reviews", [
        tensor("image", np.array([base64.b64encode(i).decode() for i in images], dtype=object).reshape(-1, 1),
               "BYTES", False),
        tensor("review", np.array(TEXTS, dtype=object).reshape(-1, 1), "BYTES", False),
        tensor("age", ages, "FP32", False)], outputs=json_outputs))
    # binary: an image is its file's bytes
    result = c.infer("reviews", [tensor("image", np.array(images, dtype=object).reshape(-1, 1), "BYTES"),
                                 tensor("review", np.array(TEXTS, dtype=object).reshape(-1, 1), "BYTES"),
                                 tensor("age", ages, "FP32")], request_id="img")
    assert_same(outputs_of(result), expected)
    assert len(log_rows(media, "img-")) == 2
    # a file that is no image, through the binary path: a 400 naming the input, as in JSON
    with pytest.raises(InferenceServerException) as caught:
        c.infer("reviews", [tensor("image", np.array([b"not a png", images[0]], dtype=object).reshape(-1, 1),
                                   "BYTES"),
                            tensor("review", np.array(TEXTS, dtype=object).reshape(-1, 1), "BYTES"),
                            tensor("age", ages, "FP32")])
    assert caught.value.status() == "400" and "image" in caught.value.message()
