"""The HTTP edges of both runtimes (`mlops serve` and `mlops serve --runtime kserve`), over real sockets: a body
that never finishes is a 408, a request the HTTP parser refuses, an unknown route or method and a body that is
not JSON are 4xx JSON bodies naming what is wrong; feedback a client sends the moment its prediction is
answered is recorded."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.net import LiveServer as Live
from tests.net import serve_bundle
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

MODEL = "toy"
ROW = {"age": 41.0, "income": 50.0, "city": "a"}
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
BODY_TIMEOUT_S = 1
START_TIMEOUT = 120  # `--runtime kserve` imports kserve: seconds on a busy 2-core machine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("edges-bundle") / "bundle", name=MODEL)


@pytest.fixture(scope="module", params=["mlops", "kserve"])
def live(request: pytest.FixtureRequest, bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve_bundle(bundle, tmp_path_factory.mktemp(f"edges-{request.param}"), request.param,
                            ("--body-timeout", str(BODY_TIMEOUT_S)), START_TIMEOUT)


def exchange(port: int, data: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, keep the connection open, and read one response: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer to {data[:100]!r}"
            raw += chunk
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-answer"
            body += chunk
        return int(lines[0].split()[1]), headers, body[:length]


def assert_json_error(status: int, headers: dict[str, str], body: bytes, field: str) -> dict[str, Any]:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
    payload = json.loads(body)
    assert payload["field"] == field and payload["error"].startswith(f"{field}: "), (status, payload)
    return payload


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("path", [V1, V2, "/v1/feedback"])
def test_a_body_that_never_finishes_is_a_408(live: Live, path: str) -> None:
    """Headers that announce 100 bytes, then 10 of them, then nothing: answered 408 once the body timeout has
    passed (the socket's own timeout is far longer), and the connection is closed."""
    if live.runtime == "kserve" and path == "/v1/feedback":
        pytest.skip("the kserve runtime has no feedback route")
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    status, headers, body = exchange(live.port, head.encode() + b'{"instance', timeout=30)
    assert status == 408, (status, body)
    assert headers.get("connection") == "close"
    assert_json_error(status, headers, body, "body")
    assert live.proc.poll() is None, live.tail()


@pytest.mark.parametrize("raw", [
    b"HELLO\r\n\r\n",
    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /v2 HTTP/1.1\r\nBad Header Name: 1\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n",  # a TLS hello on plain HTTP
], ids=["request-line", "content-length", "chunk-size", "header-name", "tls-hello"])
def test_a_request_the_http_parser_refuses_is_a_json_400(live: Live, raw: bytes) -> None:
    status, headers, body = exchange(live.port, raw)
    assert status == 400
    assert_json_error(status, headers, body, "request")


@pytest.mark.parametrize(("method", "path", "status", "field"), [
    ("GET", "/nowhere", 404, "path"), ("POST", "/v9/models/toy/infer", 404, "path"),
    ("GET", V2, 405, "method"), ("DELETE", V1, 405, "method"),
])
def test_unknown_routes_and_methods_are_json(live: Live, method: str, path: str, status: int, field: str) -> None:
    got, headers, body = exchange(live.port, request(method, path))
    assert got == status, body
    assert_json_error(got, headers, body, field)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("path", [V1, V2])
def test_inference_refuses_a_body_that_is_not_json(live: Live, path: str, content_type: str) -> None:
    body = json.dumps({"instances": [ROW]} if path == V1 else {"inputs": [
        {"name": c, "shape": [1], "datatype": "BYTES" if c == "city" else "FP32", "data": [v]} for c, v in ROW.items()]})
    status, headers, answer = exchange(live.port, request("POST", path, body.encode(), {"Content-Type": content_type}))
    assert status == 415, answer
    assert_json_error(status, headers, answer, "content-type")
    for accepted in ({}, {"Content-Type": "application/json"}):
        assert exchange(live.port, request("POST", path, body.encode(), accepted))[0] == 200


def test_kserve_keeps_the_v2_binary_extension(live: Live) -> None:
    """application/octet-stream is how the V2 binary tensor extension arrives: the stock runtime still reads it."""
    if live.runtime != "kserve":
        pytest.skip("the binary extension is the stock runtime's")
    header = json.dumps({"inputs": [
        {"name": "age", "shape": [1], "datatype": "FP32", "data": [41.0]},
        {"name": "income", "shape": [1], "datatype": "FP32", "data": [50.0]},
        {"name": "city", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}).encode()
    body = header + (1).to_bytes(4, "little") + b"a"
    status, _, answer = exchange(live.port, request("POST", V2, body, {
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}))
    assert status == 200, answer


def test_feedback_sent_the_moment_a_prediction_is_answered_is_recorded(live: Live) -> None:
    """Eight clients, each predicting then at once sending its feedback on the same keep-alive connection."""
    if live.runtime == "kserve":
        pytest.skip("the kserve runtime has no feedback route")

    def client(k: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
        statuses = []
        try:
            for i in range(25):
                pid = f"now-{k}-{i}"
                conn.request("POST", V1, json.dumps({"id": pid, "instances": [ROW]}))
                predicted = conn.getresponse()
                predicted.read()
                assert predicted.status == 200
                conn.request("POST", "/v1/feedback", json.dumps({"id": pid, "label": "yes"}),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                statuses.append(response.status)
                response.read()
        finally:
            conn.close()
        return statuses

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(client, range(8)) for s in result]
    assert statuses == [200] * 200


def test_feedback_refuses_forms_unknown_ids_odd_labels_and_huge_ids(live: Live) -> None:
    if live.runtime == "kserve":
        pytest.skip("the kserve runtime has no feedback route")
    exchange(live.port, request("POST", V1, json.dumps({"id": "known", "instances": [ROW]}).encode()))
    cases = [
        ({"id": "known", "label": "yes"}, "text/plain", 415, "content-type"),
        ({"id": "never-predicted", "label": "yes"}, "application/json", 404, "body.id"),
        ({"id": "known", "label": {"nested": "yes"}}, "application/json", 400, "body.label"),
        ({"id": "k" * 100_000, "label": "yes"}, "application/json", 400, "body.id"),
    ]
    for body, content_type, status, field in cases:
        got, headers, answer = exchange(live.port, request("POST", "/v1/feedback", json.dumps(body).encode(),
                                                           {"Content-Type": content_type}))
        assert got == status, (body if len(json.dumps(body)) < 200 else field, answer)
        payload = assert_json_error(got, headers, answer, field)
        if status == 404:
            assert "'never-predicted'" in payload["error"]


@pytest.mark.parametrize("action", ["unload", "load"])
def test_no_client_can_unload_the_served_model(live: Live, action: str) -> None:
    """KServe's repository extension would let any client unload the one model (every later request a 404): under
    --runtime kserve it is a 403 naming the path; ours has no unload, and its load only re-reads aliases. Either
    way the model still answers afterwards."""
    status, headers, body = exchange(live.port, request("POST", f"/v2/repository/models/{MODEL}/{action}"))
    assert status != 200 or (live.runtime == "mlops" and action == "load"), body
    if live.runtime == "kserve":
        assert status == 403
        assert b"--runtime kserve" in assert_json_error(status, headers, body, "path")["error"].encode()
    v1 = json.dumps({"instances": [ROW]}).encode()
    assert exchange(live.port, request("POST", V1, v1, {"Content-Type": "application/json"}))[0] == 200
