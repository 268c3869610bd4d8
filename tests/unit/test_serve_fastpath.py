"""mlops.serve.fastpath: `drive` steps a coroutine by hand as a Task would; the protocol answers an inference
POST whose body came whole from its own callbacks, without a task, and leaves anything else to uvicorn's ASGI
cycle. The protocol runs over a fake transport (what is tested is the protocol, not the socket); the app, the
model and uvicorn's parser are real."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from mlops.package.predictor import Predictor
from mlops.serve.app import Answer, Server
from mlops.serve.fastpath import FastInference, drive, fast_protocol
from mlops.serve.wire import http_protocol
from tests.serve_fixtures import build_bundle

ROW = {"age": 41.0, "income": 50.0, "city": "a"}
V1 = "/v1/models/toy:predict"


def test_drive_runs_to_the_first_await_at_once_and_finishes_through_futures_and_bare_yields() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        seen: list[Any] = []

        async def handler() -> int:
            seen.append("started")
            value = await future
            await asyncio.sleep(0)
            seen.append("resumed")
            return value * 2

        drive(handler(), seen.append)
        assert seen == ["started"]  # the first step ran inside drive, before any trip around the loop
        loop.call_soon(future.set_result, 21)
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == ["started", "resumed", 42]

    asyncio.run(main())


def test_drive_raises_a_failed_future_inside_the_coroutine() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        results: list[Any] = []

        async def handler() -> str:
            try:
                await future
            except ValueError as exc:
                return f"caught {exc}"
            return "not raised"

        drive(handler(), results.append)
        future.set_exception(ValueError("log down"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert results == ["caught log down"]

    asyncio.run(main())


@contextlib.contextmanager
def no_cyclic_collection() -> Iterator[list[int]]:
    """Yields a list that, on leaving, holds how many objects only the cyclic collector could free of those the
    block left behind (a request's leftovers bring its collections round, and a gen-1 pass stalls every request in
    flight: see fastpath._Driven)."""
    gc.collect()
    gc.disable()
    found: list[int] = []
    try:
        yield found
        found.append(gc.collect())
    finally:
        gc.enable()


def test_drive_leaves_no_reference_cycle_behind() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        results: list[int] = []

        async def handler(future: asyncio.Future[int]) -> int:
            value = await future
            await asyncio.sleep(0)
            return value

        with no_cyclic_collection() as left:
            for i in range(50):
                future: asyncio.Future[int] = loop.create_future()
                drive(handler(future), results.append)
                future.set_result(i)
                for _ in range(3):
                    await asyncio.sleep(0)
        assert results == list(range(50))
        assert left == [0]

    asyncio.run(main())


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    return Server(Predictor(build_bundle(tmp_path_factory.mktemp("fast") / "bundle")), None)  # no log: no await


def connection(server: Server) -> tuple[Any, FakeTransport, ServerState]:
    app = server.app()
    protocol_class = fast_protocol(http_protocol(), app)
    assert issubclass(protocol_class, FastInference)
    state = ServerState()
    protocol = protocol_class(config=Config(app=app, http=protocol_class, ws="none"),  # type: ignore[call-arg]
                              server_state=state, app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport, state


def post(body: bytes, chunked: bool = False) -> bytes:
    head = f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + f"{len(body):x}\r\n".encode() + body + \
            b"\r\n0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def answer(written: bytes) -> tuple[int, Any]:
    head, _, body = written.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_whole_inference_post_is_answered_from_the_callbacks_without_a_task(server: Server) -> None:
    async def main() -> None:
        protocol, transport, state = connection(server)
        protocol.data_received(post(json.dumps({"instances": [ROW]}).encode()))
        assert not state.tasks  # no ASGI task: with no log to wait for, answered before data_received returned
        status, body = answer(transport.written)
        assert status == 200 and len(body["predictions"]) == 1, body
        protocol.connection_lost(None)

    asyncio.run(main())


def test_answered_requests_leave_no_reference_cycle_behind(server: Server) -> None:
    async def main() -> None:
        protocol, transport, _ = connection(server)
        request = post(json.dumps({"instances": [ROW]}).encode())
        protocol.data_received(request)  # the first request warms what is built once
        with no_cyclic_collection() as left:
            for _ in range(30):
                protocol.data_received(request)
        assert transport.written.count(b"HTTP/1.1 200") == 31
        assert left == [0]
        protocol.connection_lost(None)

    asyncio.run(main())


def test_a_chunked_body_goes_through_the_asgi_cycle_and_gets_the_same_answer(server: Server) -> None:
    async def main() -> None:
        protocol, transport, state = connection(server)
        protocol.data_received(post(json.dumps({"id": "same", "instances": [ROW]}).encode(), chunked=True))
        assert state.tasks and not transport.written  # an ASGI task was started for it, to run on the loop
        for _ in range(20):
            await asyncio.sleep(0)
        chunked = answer(transport.written)
        transport.written = b""
        protocol.data_received(post(json.dumps({"id": "same", "instances": [ROW]}).encode()))
        assert answer(transport.written) == chunked and chunked[0] == 200, chunked
        protocol.connection_lost(None)

    asyncio.run(main())


def test_an_answer_that_cannot_be_encoded_is_a_500_with_an_id(server: Server,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(call: Any, started: float) -> Answer:
        return Answer(200, {1: object()})  # orjson refuses a non-string key: a bug, not the client's fault

    monkeypatch.setattr(server, "_v1_predict", broken)

    async def main() -> None:
        protocol, transport, _ = connection(server)
        protocol.data_received(post(json.dumps({"instances": [ROW]}).encode()))
        status, body = answer(transport.written)
        assert status == 500 and body["error"].startswith("internal error "), body
        assert not transport.closed  # the connection goes on serving
        protocol.connection_lost(None)

    asyncio.run(main())
