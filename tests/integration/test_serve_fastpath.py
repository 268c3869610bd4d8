"""The inference routes' HTTP fast path (mlops/serve/fastpath.py) over a real `mlops serve`, raw sockets: a request
with a Content-Length is answered from the protocol's callbacks, one sent chunked goes through uvicorn's ASGI cycle,
and both answer alike; keep-alive, pipelining, `Connection: close`, a body that comes after its headers and a body
over the size limit behave as HTTP/1.1 says."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
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
V1_BODY = json.dumps({"instances": [ROW, ROW | {"city": "b"}]}).encode()
V2_BODY = json.dumps({"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [41.0]},
                                 {"name": "income", "shape": [1], "datatype": "FP64", "data": [50.0]},
                                 {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    bundle = build_bundle(tmp_path_factory.mktemp("fastpath-bundle") / "bundle", name=MODEL)
    yield from serve_bundle(bundle, tmp_path_factory.mktemp("fastpath"), "mlops", ("--body-timeout", "2"))


def post(path: str, body: bytes, headers: dict[str, str] | None = None, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:  # no Content-Length: the fast path leaves it to uvicorn's cycle and the ASGI app
        lines.append("Transfer-Encoding: chunked")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Responses read one after another from one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed; read so far: {self.buffer[:300]!r}"
        self.buffer += chunk

    def response(self) -> tuple[int, dict[str, str], Any]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, json.loads(body)

    def closed(self) -> bool:
        return self.buffer == b"" and self.sock.recv(1) == b""


def connect(live: Live) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.port), timeout=30)


def without_ids(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    if path == V1:
        return {k: v for k, v in payload.items() if k != "ids"}
    return payload | {"id": None, "parameters": None}


@pytest.mark.parametrize("path,body", [(V1, V1_BODY), (V2, V2_BODY)])
def test_the_fast_path_answers_as_the_asgi_path_does(live: Live, path: str, body: bytes) -> None:
    """One keep-alive connection: a request with a Content-Length (fast path), the same sent chunked (ASGI
    path), then the fast one again. Same status, headers and answer but for the prediction ids, which are new
    time-ordered 32-digit ids on both paths (a row number after each for a batch)."""
    with connect(live) as sock:
        reader = Reader(sock)
        answers = []
        for chunked in (False, True, False):
            sock.sendall(post(path, body, chunked=chunked))
            answers.append(reader.response())
    (fast_status, fast_headers, fast), (asgi_status, asgi_headers, asgi), (_, _, again) = answers
    assert fast_status == asgi_status == 200, answers
    assert set(fast_headers) == set(asgi_headers) >= {"content-type", "content-length", "x-model-variant", "date",
                                                      "server"}, (fast_headers, asgi_headers)
    assert fast_headers["content-type"] == asgi_headers["content-type"] == "application/json"
    assert without_ids(path, fast) == without_ids(path, asgi), (fast, asgi)
    ids = [a["ids"] if path == V1 else a["parameters"]["prediction_ids"].split(",") for a in (fast, asgi, again)]
    flat = [i for group in ids for i in group]
    assert all(re.fullmatch(r"[0-9a-f]{32}(-[0-9]+)?", i) for i in flat), ids
    assert len(set(flat)) == len(flat), ids
    assert ids[0][0] < ids[1][0] < ids[2][0], ids  # they grow with time: appended at the end of the log's index


def test_the_server_says_the_fast_path_is_on(live: Live) -> None:
    assert "inference fast path on" in live.tail(), live.tail()


def test_pipelined_requests_are_answered_in_order(live: Live) -> None:
    """Three requests in one write: the first on the fast path, the ones queued behind it through uvicorn's
    pipeline, all answered in the order sent."""
    bodies = [json.dumps({"id": f"pipelined-{k}", "instances": [ROW]}).encode() for k in range(3)]
    with connect(live) as sock:
        sock.sendall(b"".join(post(V1, b) for b in bodies))
        reader = Reader(sock)
        answers = [reader.response() for _ in bodies]
    assert [(status, body["ids"]) for status, _, body in answers] == [(200, [f"pipelined-{k}"]) for k in range(3)]


def test_a_body_that_comes_after_its_headers_is_answered(live: Live) -> None:
    """Headers first, the body a moment later: handed to the ASGI path with the part read, and answered."""
    request = post(V1, V1_BODY)
    head_end = request.index(b"\r\n\r\n") + 4
    with connect(live) as sock:
        sock.sendall(request[:head_end + 10])
        time.sleep(0.3)
        sock.sendall(request[head_end + 10:])
        status, _, body = Reader(sock).response()
    assert status == 200 and len(body["predictions"]) == 2, body


def test_connection_close_is_honoured(live: Live) -> None:
    with connect(live) as sock:
        sock.sendall(post(V2, V2_BODY, {"Connection": "close"}))
        reader = Reader(sock)
        status, headers, _ = reader.response()
        assert (status, headers.get("connection")) == (200, "close")
        assert reader.closed()


def test_a_fast_path_error_is_json_and_keeps_the_connection(live: Live) -> None:
    """A bad request answered on the fast path is the same 4xx JSON body, and the connection serves the next."""
    with connect(live) as sock:
        reader = Reader(sock)
        sock.sendall(post(V1, b'{"instances": [{"age": "old"}]'))  # not JSON: the closing brace is missing
        bad = reader.response()
        sock.sendall(post("/v2/models/nope/infer", V2_BODY))
        unknown = reader.response()
        sock.sendall(post(V1, V1_BODY))
        good = reader.response()
    assert (bad[0], bad[2]["field"]) == (400, "body"), bad
    assert (unknown[0], unknown[2]["field"]) == (404, "model"), unknown
    assert good[0] == 200, good


def test_a_body_over_the_size_limit_is_a_413(live: Live) -> None:
    """A Content-Length over the limit is never read into memory by the fast path: the ASGI path refuses it."""
    with connect(live) as sock:
        sock.sendall(f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {64 * 1024 * 1024}\r\n\r\n".encode())
        status, _, body = Reader(sock).response()
    assert (status, body["field"]) == (413, "body"), body
