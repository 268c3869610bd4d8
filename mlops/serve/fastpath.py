"""The inference routes' HTTP fast path: a single-packet POST answered from uvicorn's protocol callbacks.

Under uvicorn every request costs a RequestResponseCycle, an asyncio.Event, a Task scheduled onto the next
trip around the loop, two ASGI `send` messages whose headers are checked again, and the middleware between
(measured: about as much as the model call and the log row together for a single row). For the two inference
routes none of that does any work: the body is small and whole by the time the headers are parsed, and the
handler runs to one await, its log commit. So the protocol here answers such a request itself: when the
parser reaches the end of the message, `Server._handle` runs right there as a coroutine driven by hand (the
steps a Task would take, without a Task), its rows join the loop's next log commit with every other request
read in the same trip, and the commit's callback writes the response bytes.

Everything the fast path does not take goes through uvicorn and the ASGI app as before, to the same
handlers: another route or method, a body without a Content-Length or over the size limit, HTTP/1.0, an
`Expect: 100-continue`, an upgrade, a request pipelined behind one still in progress, the app mounted under a
root path. A body that has not fully arrived when the bytes read so far are parsed is handed to the ASGI
path too, with what came of it, so its read timeout (wire.RequestGuard) applies as to any slow body.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from mlops.core.log import say
from mlops.serve.app import Answer, ServeApp, inference_target


def drive(coro: Coroutine[Any, Any, Any], done: Callable[[Any], None] | None) -> None:
    """Run `coro` to its end the way a Task steps it (resumed when the asyncio future it awaits is done, or
    on the next trip around the loop after a bare yield), then call `done` with its result. The first step
    runs now. Nothing here may be cancelled: the handlers it drives answer their own errors."""
    _Driven(coro, done, asyncio.get_running_loop()).step()


class _Driven:
    """One coroutine being driven. Its `step` is a bound method, not a closure: a closure that schedules itself
    holds itself through its own cell, a reference cycle that only the cyclic collector frees, and with it the
    coroutine, its frame and the request's cycle (measured: about 12 such objects a request, a gen-0 collection
    every ~60 requests and gen-1 ones of up to 1.6 ms in the p99's window). A future drops its callbacks once it
    has called them, so nothing here outlives the request."""

    __slots__ = ("coro", "done", "loop")

    def __init__(self, coro: Coroutine[Any, Any, Any], done: Callable[[Any], None] | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.coro, self.done, self.loop = coro, done, loop

    def step(self, _: Any = None) -> None:
        try:
            awaited = self.coro.send(None)
        except StopIteration as stop:
            if self.done is not None:
                self.done(stop.value)
            return
        if awaited is None:  # asyncio.sleep(0)
            self.loop.call_soon(self.step)
        else:  # an asyncio future: Task's own protocol (the flag tells the future a Task-like owner took it)
            awaited._asyncio_future_blocking = False
            awaited.add_done_callback(self.step)


class _NoEvent:
    """The cycle's message event, which uvicorn sets on a disconnect: nothing waits on it here."""

    @staticmethod
    def set() -> None:
        return None


class FastCycle:
    """What stands where uvicorn's RequestResponseCycle stands while a fast-path request is answered: the
    attributes the protocol reads (a pipelined request waits for `response_complete`; a disconnect and a
    graceful shutdown set `disconnected` and `keep_alive`)."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")
    message_event = _NoEvent()

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False


class FastInference:
    """The mixin over uvicorn's httptools protocol (see the module doc). `serve_app` is set on the class
    `fast_protocol` makes."""

    serve_app: ServeApp
    # uvicorn's protocol attributes this reads (see uvicorn.protocols.http.httptools_impl)
    parser: Any
    url: bytes
    headers: list[tuple[bytes, bytes]]
    cycle: Any
    transport: asyncio.Transport
    flow: Any
    root_path: str
    limit_concurrency: int | None
    expect_100_continue: bool
    server_state: Any
    on_response_complete: Callable[[], None]

    _fast: tuple[str, str, str | None] | None = None  # the request being read on the fast path: route, name, version
    _fast_body: list[bytes]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._fast is not None and self.parser is not None:  # its body is still on its way: the ASGI path
            self._hand_over()

    def on_headers_complete(self) -> None:
        self._fast = self._fast_route()
        if self._fast is None:
            super().on_headers_complete()  # type: ignore[misc]
        else:
            self._fast_body = []

    def on_body(self, body: bytes) -> None:
        if self._fast is None:
            super().on_body(body)  # type: ignore[misc]
        else:
            self._fast_body.append(body)

    def on_message_complete(self) -> None:
        if self._fast is None:
            super().on_message_complete()  # type: ignore[misc]
        else:
            self._answer()

    def _fast_route(self) -> tuple[str, str, str | None] | None:
        """(route, name, version) when this request may take the fast path (see the module doc)."""
        parser = self.parser
        if (parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or self.expect_100_continue
                or self.root_path or self.limit_concurrency is not None or parser.should_upgrade()
                or not (self.cycle is None or self.cycle.response_complete)):
            return None
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return None
                length = value
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit() or int(length) > self.serve_app.server.max_body:
            return None
        try:
            path = httptools.parse_url(self.url).path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return None
        if "%" in path:
            path = urllib.parse.unquote(path)
        return inference_target(path)

    def _hand_over(self) -> None:
        """The request's body did not come whole with its headers: uvicorn's cycle and the ASGI app take it,
        with the part already read."""
        body = b"".join(self._fast_body)
        self._fast, self._fast_body = None, []
        super().on_headers_complete()  # type: ignore[misc]
        if body and not self.cycle.response_complete:
            self.cycle.body += body
            if len(self.cycle.body) > HIGH_WATER_LIMIT:
                self.flow.pause_reading()
            self.cycle.message_event.set()

    def _answer(self) -> None:
        assert self._fast is not None
        route, name, version = self._fast
        body = b"".join(self._fast_body)
        self._fast, self._fast_body = None, []
        cycle = FastCycle(keep_alive=self.parser.should_keep_alive())
        self.cycle = cycle

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        answer = self.serve_app.server.inference(route, name, version, self.headers, receive)
        drive(answer, lambda done: self._respond(cycle, done))

    def _respond(self, cycle: FastCycle, answer: Answer) -> None:
        """The response as uvicorn's `send` would write it: its default headers (server, date) first, and
        the connection closed after it when the request or the answer asked for that."""
        transport = self.transport
        if cycle.disconnected or transport.is_closing():
            cycle.response_complete = True
        else:
            try:
                payload, headers = answer.encode()
            except Exception as exc:  # a bug in an answer's body: a 500 with an id, as `Server._handle` answers one
                error_id = uuid.uuid4().hex[:12]
                say(f"error {error_id} encoding an answer: {type(exc).__name__}: {exc}", "mlops serve")
                payload, headers = Answer(500, {"error": f"internal error {error_id}", "field": None}).encode()
                answer = Answer(500, None, after=answer.after)
            keep_alive = cycle.keep_alive and (b"connection", b"close") not in headers
            head = [STATUS_LINE[answer.status]]
            for n, v in (*self.server_state.default_headers, *headers):
                head += [n, b": ", v, b"\r\n"]
            if not keep_alive and (b"connection", b"close") not in headers:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", payload]
            transport.write(b"".join(head))
            cycle.response_complete = True
            if not keep_alive:
                transport.close()
            self.on_response_complete()
        if answer.after is not None:
            drive(answer.after(), None)


def fast_protocol(base: type[asyncio.Protocol], app: ServeApp) -> type[asyncio.Protocol]:
    """`base` (uvicorn's httptools protocol, see wire.http_protocol) with the fast path for `app`'s inference
    routes; any other protocol (h11, when httptools is not installed) is returned as it is."""
    if "HttpTools" not in base.__name__:
        return base
    return type(f"Fast{base.__name__}", (FastInference, base), {"serve_app": app})
