"""What both runtimes (our app and the stock kserve.ModelServer) answer at the HTTP layer, around the handlers:
a body that never finishes (408), a content type that is not JSON (415), a path or a method that does not exist
(404, 405), and a request uvicorn's HTTP parser refuses (400). Each is the JSON body the handlers answer a bad
request with, `{"error": "<field>: <why>", "field": "<field>"}`, never uvicorn's or Starlette's plain text.

What stays out of reach: a connection that never finishes its request line and headers is uvicorn's alone (no
ASGI app sees it, and uvicorn has no header timeout), and a TLS or HTTP/2 preface on the plain port is closed
by uvicorn without an answer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from mlops.core.predlog import dumps_json
from mlops.package.predictor import RequestError

DEFAULT_BODY_TIMEOUT_S = 30.0
MAX_ID_CHARS = 256  # the longest prediction id feedback may name: a request id leaves room for its rows' "-<n>"
MAX_REQUEST_ID_CHARS = MAX_ID_CHARS - 16
JSON_MEDIA = "application/json"
# what the KServe V2 binary tensor extension and binary CloudEvents send (the stock runtime takes both)
BINARY_MEDIA = "application/octet-stream"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(field: str, message: str) -> dict[str, Any]:
    return {"error": f"{field}: {message}", "field": field}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None
                  ) -> tuple[Message, Message]:
    """The two ASGI messages of a JSON answer."""
    payload = dumps_json(body)
    raw = [(b"content-type", JSON_MEDIA.encode()), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return ({"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": payload})


def content_type_error(content_type: str | None, *, required: bool, binary: bool = False) -> RequestError | None:
    """Why a request body of `content_type` is refused (415), or None. JSON is `application/json` or any
    `application/<x>+json`; `binary` also takes application/octet-stream. A browser sends text/plain, form data
    and multipart cross-site without asking (no CORS preflight): a route that changes state requires JSON
    (`required`), so such a form cannot reach it; the others take a request without a content type too."""
    if content_type is None:
        return RequestError("content-type", f"required: send the body as {JSON_MEDIA}", 415) if required else None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == JSON_MEDIA or (media.startswith("application/") and media.endswith("+json")):
        return None
    if binary and media == BINARY_MEDIA:
        return None
    shown = content_type[:60].encode("ascii", "replace").decode()
    return RequestError("content-type", f"'{shown}' is not accepted: send the body as {JSON_MEDIA}", 415)


class BodyTimeout(RequestError):
    """The request body did not arrive in full within the server's body timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__("body", f"not received in full within {timeout_s:g} s", status=408)


def http_error(status: int, method: str, path: str, detail: str, allow: str | None = None
               ) -> tuple[dict[str, Any], dict[str, str]]:
    """An error Starlette or FastAPI raises as an HTTPException (no route, a method the route does not take,
    a body FastAPI cannot read) as our body, and the headers to send with it."""
    shown = path[:200]
    if status == 404:
        return error_body("path", f"no route {shown} on this server"), {}
    if status == 405:
        allowed = f" (allowed: {allow})" if allow else ""
        return error_body("method", f"{method[:20]} is not allowed on {shown}{allowed}"), ({"allow": allow} if allow
                                                                                           else {})
    return error_body("body" if status in (400, 422) else "request", detail or "refused"), {}


class RequestGuard:
    """ASGI middleware: the whole request body must arrive within `timeout_s` seconds of the app's first read,
    else the answer is a 408 JSON body (`Connection: close`), whatever the app inside makes of the body it
    never got. `check(scope)` may refuse a request before the app sees it (the stock runtime's content types).

    An app that answers `BodyTimeout` (a RequestError) itself, as ours does, is given the server's `send`; for
    another (`own_answer=False`: FastAPI turns a failed read into a 400) the guard replaces whatever it answers
    after its read timed out with the 408.

    A read that waits past its deadline is cancelled by one sweep over the reads in progress, every tenth of
    the timeout (so a body times out within 1.1 timeouts): a timer per read (asyncio.timeout) would cost more
    than the rest of a small request's read, which almost never waits."""

    def __init__(self, app: ASGIApp, timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
                 check: Callable[[Scope], RequestError | None] | None = None, own_answer: bool = False) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.check = check
        self.own_answer = own_answer
        self._interval = min(max(timeout_s / 10, 0.02), 1.0)
        self._reading: dict[asyncio.Task[Any], float] = {}  # tasks waiting for body messages: their deadlines
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled by the sweep: their read raises BodyTimeout
        self._sweep: asyncio.TimerHandle | None = None

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._reading.items()):
            if deadline <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
        self._sweep = loop.call_later(self._interval, self._expire) if self._reading else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.check is not None:
            refused = self.check(scope)
            if refused is not None:
                for message in json_response(refused.status, refused.body()):
                    await send(message)
                return
        timeout_s = self.timeout_s
        deadline: float | None = None
        body_done = False
        timed_out = started = answered = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done, timed_out
            if body_done:  # only a disconnect is left to wait for: no deadline on that
                return await receive()
            task = asyncio.current_task()
            assert task is not None
            if deadline is None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout_s
                if self._sweep is None:
                    self._sweep = loop.call_later(self._interval, self._expire)
            self._reading[task] = deadline
            try:
                message = await receive()
            except asyncio.CancelledError:
                if task not in self._expired:
                    raise
                self._expired.discard(task)
                task.uncancel()
                timed_out = True
                raise BodyTimeout(timeout_s) from None
            finally:
                self._reading.pop(task, None)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        if self.own_answer:  # the app answers a BodyTimeout itself: nothing to replace, no send to wrap
            await self.app(scope, timed_receive, send)
            return

        async def answer_timeout() -> None:
            nonlocal answered
            answered = True
            for message in json_response(408, BodyTimeout(timeout_s).body(), {"connection": "close"}):
                await send(message)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not timed_out or started:
                started = True
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                await answer_timeout()  # the app's own answer to a body it never got is dropped

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out or started:
                raise
        if timed_out and not started and not answered:
            await answer_timeout()


class _JsonBadRequest:
    """uvicorn's protocol answering a request its HTTP parser refuses (a bad request line, header or chunk
    size, headers over h11's limit) with our JSON 400 instead of a text/plain one. The connection closes, as
    uvicorn's own answer closes it: the parser cannot find where the next request would start."""

    transport: asyncio.Transport

    def send_400_response(self, msg: str) -> None:
        payload = dumps_json(error_body("request", "not a valid HTTP/1.1 request (the server's HTTP parser "
                                                   "refused it)"))
        head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(payload)).encode() + b"\r\nconnection: close\r\n\r\n")
        self.transport.write(head + payload)
        self.transport.close()


@functools.cache
def http_protocol() -> type[asyncio.Protocol]:
    """The HTTP protocol class uvicorn's `auto` picks (httptools when installed, else h11), answering a request
    its parser refuses with our JSON 400: give it as `uvicorn.Config(http=...)`."""
    base: type[asyncio.Protocol]
    try:
        import httptools  # noqa: F401 - uvicorn's `auto` test, repeated
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"Json{base.__name__}", (_JsonBadRequest, base), {})
