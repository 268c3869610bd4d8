"""`mlops serve --grpc-port`: the V2 gRPC protocol (KServe's GRPCInferenceService) beside HTTP in one process,
called by tritonclient.grpc, by KServe's generated messages over a plain channel (typed `contents` and malformed
raw tensors) and by KServe's own clients (InferenceGRPCClient, and InferenceRESTClient with binary tensors). The
same answers as the JSON path, the same log (shadow and A/B included), the metrics, and bad input as
INVALID_ARGUMENT naming it.

The clients run in subprocesses: tritonclient's generated messages and KServe's define the same protobuf names
(`inference.ModelInferRequest`...), and one process's descriptor pool refuses the second set (other test modules
of a session import kserve)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlops.core.predlog import read_predictions
from mlops.serve.grpc import SERVICE, v2_messages
from mlops.serve.routing import assign_arm
from tests.net import LiveServer, free_port, start_server, stop_process
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration
grpc = pytest.importorskip("grpc", reason="grpcio is in the serve extra")
if importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("kserve") is None:
    pytest.skip("tritonclient[grpc] (dev extra) and kserve (serve extra) are needed", allow_module_level=True)

MODEL = "toy"
AGES, INCOMES, CITIES = [41.0, 30.0, 55.5], [50.0, 40.0, 70.5], ["a", "b", "c"]
KEY_HEADER = "x-request-key"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, int, Path]]:
    """One server: a champion, a shadow, and a challenger answering half of the request keys."""
    tmp = tmp_path_factory.mktemp("grpc")
    champion = build_bundle(tmp / "champion")
    other = build_bundle(tmp / "other", weights_seed=2)
    log = tmp / "predictions.sqlite"
    grpc_ports: dict[int, int] = {}

    def command(port: int) -> list[str]:
        grpc_ports[port] = free_port()
        return [sys.executable, "-m", "mlops.cli", "serve", str(champion), "--port", str(port), "--grpc-port",
                str(grpc_ports[port]), "--log", str(log), "--shadow", str(other), "--ab", f"{other}:50"]

    env = {k: v for k, v in os.environ.items() if k != "MLOPS_SERVE_TOKEN"} | {
        "MLOPS_HOME": str(tmp / ".mlops"), "PYTHONUNBUFFERED": "1"}
    server = start_server("mlops", command, lambda port: tmp / f"server-{port}.out", env, 120)
    try:
        yield server, grpc_ports[server.port], log
    finally:
        stop_process(server.proc)


def keys() -> tuple[str, str]:
    """A request key the champion answers, and one the challenger answers (at 50 %)."""
    champion = next(f"k{i}" for i in range(1000) if not assign_arm(f"k{i}", 50.0))
    challenger = next(f"k{i}" for i in range(1000) if assign_arm(f"k{i}", 50.0))
    return champion, challenger


def json_infer(port: int, key: str, request_id: str) -> dict[str, Any]:
    body = {"id": request_id, "inputs": [
        {"name": "age", "shape": [3, 1], "datatype": "FP64", "data": AGES},
        {"name": "income", "shape": [3, 1], "datatype": "FP32", "data": INCOMES},
        {"name": "city", "shape": [3, 1], "datatype": "BYTES", "data": CITIES}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
                                     data=json.dumps(body).encode(),
                                     headers={KEY_HEADER: key, "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


TRITON_CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

grpc_port, model = int(sys.argv[1]), sys.argv[2]
AGES, INCOMES, CITIES = json.loads(sys.argv[3])
client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
out = {"live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready(model),
       "inputs": [i.name for i in client.get_model_metadata(model).inputs], "answers": {}}
for key, request_id in zip(sys.argv[4].split(","), sys.argv[5].split(",")):
    inputs = []
    for name, values, datatype in (("age", np.array(AGES).reshape(-1, 1), "FP64"),
                                   ("income", np.array(INCOMES, dtype=np.float32).reshape(-1, 1), "FP32"),
                                   ("city", np.array(CITIES, dtype=object).reshape(-1, 1), "BYTES")):
        t = grpcclient.InferInput(name, list(values.shape), datatype)
        t.set_data_from_numpy(values)  # raw_input_contents: tritonclient's default
        inputs.append(t)
    result = client.infer(model, inputs, request_id=request_id, headers={"x-request-key": key})
    response = result.get_response()
    out["answers"][request_id] = {
        "raw": len(response.raw_output_contents), "ids": response.parameters["prediction_ids"].string_param,
        "outputs": {o.name: [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(o.name).reshape(-1).tolist()]
                    for o in response.outputs}}
print(json.dumps(out))
"""


def run_client(script: str, *args: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def as_arrays(outputs: dict[str, list[Any]], expected: dict[str, Any]) -> dict[str, np.ndarray]:
    shapes = {o["name"]: o["shape"] for o in expected["outputs"]}
    return {k: np.array(v, dtype=object if isinstance(v[0], str) else float).reshape(shapes[k])
            for k, v in outputs.items()}


def assert_same(outputs: dict[str, np.ndarray], expected: dict[str, Any]) -> None:
    assert set(outputs) == {o["name"] for o in expected["outputs"]}
    for o in expected["outputs"]:
        got = outputs[o["name"]]
        assert list(got.shape) == o["shape"], o["name"]
        if o["datatype"] == "BYTES":
            assert [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)] == o["data"]
        else:
            np.testing.assert_allclose(got.reshape(-1), o["data"], rtol=1e-6)


def test_tritonclient_grpc_answers_as_json_and_is_logged_counted_shadowed(live: tuple[LiveServer, int, Path]
                                                                         ) -> None:
    server, grpc_port, log = live
    routed = keys()
    expected = {variant: json_infer(server.port, key, f"json-{variant}")
                for key, variant in zip(routed, ("champion", "challenger"), strict=True)}
    got = run_client(TRITON_CLIENT, grpc_port, MODEL, json.dumps([AGES, INCOMES, CITIES]), ",".join(routed),
                     "grpc-champion,grpc-challenger")
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["inputs"] == ["age", "income", "city"]
    for variant in ("champion", "challenger"):
        answer = got["answers"][f"grpc-{variant}"]
        assert answer["raw"] == len(expected[variant]["outputs"]), "outputs go back as raw_output_contents"
        assert_same(as_arrays(answer["outputs"], expected[variant]), expected[variant])
        assert answer["ids"] == ",".join(f"grpc-{variant}-{i}" for i in range(3))
    rows = read_predictions(log)
    answered = {r["id"]: r for r in rows if r["id"].startswith("grpc-") and r["variant"] != "shadow"}
    assert answered["grpc-champion-1"]["variant"] == "champion"
    assert answered["grpc-challenger-1"]["variant"] == "challenger"
    assert json.loads(answered["grpc-challenger-2"]["inputs"])["city"] == "c"
    shadowed: list[dict[str, Any]] = []
    for _ in range(100):  # the shadow runs after the answer, on its own thread
        shadowed = [r for r in read_predictions(log) if r["variant"] == "shadow" and r["id"].startswith("grpc-")]
        if len(shadowed) >= 6:
            break
        time.sleep(0.1)
    assert len(shadowed) == 6
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("mlops_requests_total") and 'route="v2_grpc_infer"' in line
                  and 'status="200"' in line)
    assert counted >= 2


def infer(grpc_port: int, request: Any, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """One ModelInfer call over a plain channel with KServe's messages."""
    pb = v2_messages()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        return call(request, metadata=metadata, timeout=30)


def typed_request(**override: Any) -> Any:
    request = v2_messages().ModelInferRequest(model_name=MODEL, id="typed")
    for name, datatype, field, values in (("age", "FP64", "fp64_contents", AGES),
                                          ("income", "FP32", "fp32_contents", INCOMES),
                                          ("city", "BYTES", "bytes_contents", [c.encode() for c in CITIES])):
        t = request.inputs.add(name=name, datatype=datatype, shape=[3, 1])
        getattr(t.contents, field).extend(values)
    for key, value in override.items():
        field = getattr(request, key)
        if isinstance(value, list):
            field.extend(value)
        else:
            setattr(request, key, value)
    return request


def test_typed_contents_answer_as_raw_contents(live: tuple[LiveServer, int, Path]) -> None:
    server, grpc_port, _ = live
    champion_key, _ = keys()
    expected = json_infer(server.port, champion_key, "json-typed")
    response = infer(grpc_port, typed_request(), ((KEY_HEADER, champion_key),))
    assert len(response.raw_output_contents) == len(response.outputs)
    got = {}
    for o, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if o.datatype == "BYTES":  # each element: its length (4 bytes, little-endian), then its bytes
            values, at = [], 0
            while at < len(raw):
                size = int.from_bytes(raw[at:at + 4], "little")
                values.append(raw[at + 4:at + 4 + size].decode())
                at += 4 + size
            got[o.name] = np.array(values, dtype=object).reshape(list(o.shape))
        else:
            got[o.name] = np.frombuffer(raw, dtype="<f4").reshape(list(o.shape))
    assert_same(got, expected)


def _refused(grpc_port: int, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        infer(grpc_port, request)
    return caught.value


def test_bad_input_is_invalid_argument_naming_it(live: tuple[LiveServer, int, Path]) -> None:
    _, grpc_port, _ = live
    short = typed_request()
    short.raw_input_contents.extend([np.array(AGES[:2]).tobytes(), np.array(INCOMES, dtype=np.float32).tobytes(),
                                     b"".join(len(c).to_bytes(4, "little") + c.encode() for c in CITIES)])
    for request, words in (
            (short, ["inputs[0].parameters.binary_data_size", "'age'"]),  # 16 bytes for 3 FP64 values
            (typed_request(raw_input_contents=[b"x"]), ["raw_input_contents", "3 inputs"]),
    ):
        error = _refused(grpc_port, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert all(w in error.details() for w in words), error.details()
    unknown = typed_request()
    unknown.inputs[2].name = "town"
    error = _refused(grpc_port, unknown)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "town" in error.details()
    wrong_type = typed_request()
    wrong_type.inputs[2].datatype = "FP32"
    wrong_type.inputs[2].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    error = _refused(grpc_port, wrong_type)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "city" in error.details()
    error = _refused(grpc_port, typed_request(model_name="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "nope" in error.details()


KSERVE_CLIENTS = r"""
import asyncio, json, sys
import numpy as np
from kserve import InferInput, InferRequest
from kserve.inference_client import InferenceGRPCClient, InferenceRESTClient, RESTConfig

http_port, grpc_port, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
AGES, INCOMES, CITIES = json.loads(sys.argv[4])
KEY = sys.argv[5]

def request(binary):
    inputs = []
    for name, values, datatype in (("age", np.array(AGES).reshape(-1, 1), "FP64"),
                                   ("income", np.array(INCOMES, dtype=np.float32).reshape(-1, 1), "FP32"),
                                   ("city", np.array(CITIES, dtype=object).reshape(-1, 1), "BYTES")):
        t = InferInput(name, list(values.shape), datatype)
        t.set_data_from_numpy(values, binary_data=binary)
        inputs.append(t)
    return InferRequest(model_name=model, infer_inputs=inputs, request_id="kserve",
                        parameters={"binary_data_output": True} if binary else None)

def outputs(response):
    return {o.name: [v.decode() if isinstance(v, bytes) else v for v in o.as_numpy().reshape(-1).tolist()]
            for o in response.outputs}

async def main():
    out = {}
    client = InferenceGRPCClient(f"127.0.0.1:{grpc_port}")
    out["grpc"] = outputs(await client.infer(request(True), headers=(("x-request-key", KEY),)))
    bad = request(True)
    bad.inputs[0]._raw_data = bad.inputs[0]._raw_data[:8]
    try:
        await client.infer(bad)
        out["grpc_bad"] = None
    except Exception as exc:
        out["grpc_bad"] = f"{type(exc).__name__}: {getattr(exc, 'code', lambda: '')()} {exc}"
    await client.close()
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    response = await rest.infer(f"http://127.0.0.1:{http_port}", request(True), model_name=model,
                                headers={"x-request-key": KEY})
    out["rest_binary"] = outputs(response)
    await rest.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_kserve_clients_grpc_and_rest_binary(live: tuple[LiveServer, int, Path], tmp_path: Path) -> None:
    server, grpc_port, _ = live
    champion_key, _ = keys()
    expected = json_infer(server.port, champion_key, "json-kserve")
    got = run_client(KSERVE_CLIENTS, server.port, grpc_port, MODEL, json.dumps([AGES, INCOMES, CITIES]),
                     champion_key)
    for client in ("grpc", "rest_binary"):
        assert_same(as_arrays(got[client], expected), expected)
    assert got["grpc_bad"] is not None and "INVALID_ARGUMENT" in got["grpc_bad"] and "'age'" in got["grpc_bad"]


def test_token_guards_grpc_as_http(tmp_path: Path) -> None:
    """With MLOPS_SERVE_TOKEN, a call without `authorization: Bearer <token>` metadata is UNAUTHENTICATED;
    the liveness probe stays open, as GET /v2/health/live does."""
    bundle = build_bundle(tmp_path / "bundle")
    grpc_ports: dict[int, int] = {}

    def command(port: int) -> list[str]:
        grpc_ports[port] = free_port()
        return [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port", str(port), "--grpc-port",
                str(grpc_ports[port]), "--log", str(tmp_path / "predictions.sqlite")]

    env = os.environ | {"MLOPS_HOME": str(tmp_path / ".mlops"), "PYTHONUNBUFFERED": "1",
                        "MLOPS_SERVE_TOKEN": "s3cret"}
    server = start_server("mlops", command, lambda port: tmp_path / f"server-{port}.out", env, 120)
    try:
        grpc_port = grpc_ports[server.port]
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as caught:
                infer(grpc_port, typed_request(), metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization" in caught.value.details()
        response = infer(grpc_port, typed_request(), (("authorization", "Bearer s3cret"),))
        assert response.parameters["prediction_ids"].string_param == "typed-0,typed-1,typed-2"
        pb = v2_messages()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            live = channel.unary_unary(f"/{SERVICE}/ServerLive", request_serializer=pb.ServerLiveRequest.SerializeToString,
                                       response_deserializer=pb.ServerLiveResponse.FromString)
            assert live(pb.ServerLiveRequest(), timeout=30).live
    finally:
        stop_process(server.proc)
