"""The lean ASGI runtime: KServe's V1 and V2 (Open Inference) REST protocols over one Predictor.

Every response to a bad request is a 4xx JSON body naming the field at fault; anything else that goes
wrong is a 5xx with an error id, never a crash. Predictions are logged before their 200 is sent.

Optionally an A/B challenger answers a stable share of requests (by a hash of the request key), and a
shadow model runs on a copy of every answered request after the response is sent (see routing.py).
With `batch_max` > 1, concurrent small requests to one model share one model call (see batching.py); each
still gets its own id, log rows, variant and metrics.
"""

from __future__ import annotations

import contextlib
import gc
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

import mlops
from mlops.core.log import say
from mlops.core.predlog import (
    SHADOW,
    FeedbackError,
    LogReader,
    LoopCommits,
    PredictionLog,
    dumps_json,
    feedback_row,
    loop_commits_ok,
    prediction_ids,
)
from mlops.core.predlog_pg import LogWriteError, PgLogReader, PgPredictionLog
from mlops.core.predlog_redis import RedisPredictionLog
from mlops.core.predlog_store import open_reader
from mlops.core.refs import CHALLENGER
from mlops.package.predictor import Prediction, Predictor, RequestError, imputed_parameters, parse_json_body
from mlops.serve import binary
from mlops.serve.batching import DEFAULT_WAIT_MS, MicroBatcher, SharedLogWrites, batch_rows_histogram
from mlops.serve.logrows import PendingPrediction
from mlops.serve.metrics import ServeMetrics
from mlops.serve.openapi import openapi_spec
from mlops.serve.routing import (
    DEFAULT_KEY_HEADER,
    DEFAULT_SHADOW_QUEUE,
    Arm,
    ShadowRunner,
    assign_arm,
    check_compatible,
    request_key,
)
from mlops.serve.tensors import input_tensors, output_tensors
from mlops.serve.wire import (
    BINARY_MEDIA,
    DEFAULT_BODY_TIMEOUT_S,
    MAX_ID_CHARS,
    MAX_REQUEST_ID_CHARS,
    RequestGuard,
    content_type_error,
    http_error,
)

DEFAULT_MAX_BODY = 8 * 1024 * 1024
V2_INFER, V1_PREDICT = "v2_infer", "v1_predict"  # the inference routes' label in the metrics


def inference_route(path: str) -> tuple[str, str] | None:
    """(route, name) when `path` is one of the two inference routes, as Starlette would match them:
    `/v2/models/{name}/infer` (a name without "/") and `/v1/models/{name_verb:path}` (anything after). The
    versioned V2 route is `versioned_infer_route`'s."""
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        name = path[len("/v2/models/"):-len("/infer")]
        return (V2_INFER, name) if name and "/" not in name else None
    if path.startswith("/v1/models/"):  # an empty name too: it is answered 404 as an unknown model
        return V1_PREDICT, path[len("/v1/models/"):]
    return None


def versioned_infer_route(path: str) -> tuple[str, str] | None:
    """(name, version) when `path` is `/v2/models/{name}/versions/{version}/infer`, as Starlette would match it
    (neither part empty nor holding "/")."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    name, sep, version = path[len("/v2/models/"):-len("/infer")].partition("/versions/")
    if not sep or not name or not version or "/" in name or "/" in version:
        return None
    return name, version


def inference_target(path: str) -> tuple[str, str, str | None] | None:
    """(route, name, version) of a POST path the inference handlers answer straight from the ASGI messages (or
    the fast path from the HTTP protocol's callbacks): either inference route, or the versioned V2 one."""
    found = inference_route(path)
    if found is not None:
        return found[0], found[1], None
    versioned = versioned_infer_route(path)
    return None if versioned is None else (V2_INFER, versioned[0], versioned[1])


# The old path of the traffic route: it is ours, not KServe's repository extension, so it moved out of /v2. The
# old one still answers for one release, marked deprecated (RFC 9745 `Deprecation`, a `Link` to its successor).
TRAFFIC_PATH = "/mlops/v1/models/{name}/traffic"
OLD_TRAFFIC_PATH = "/v2/repository/models/{name}/traffic"
TRAFFIC_DEPRECATED_SINCE = "@1796256000"  # 2026-12-03, the release that moved it (a structured-field date)


@dataclass
class Call:
    """One request as every handler sees it, whichever way it came in: through Starlette's routing, or the
    raw ASGI path the two inference routes take (see `ServeApp`)."""

    name: str  # the model name in the path ("" on routes without one)
    headers: Mapping[str, str]  # lower-case names
    receive: Callable[[], Awaitable[dict[str, Any]]]  # the ASGI receive channel, for the body
    arm: Arm | None = None  # the arm that answered, once one was chosen
    version: str | None = None  # the version a versioned route names: that arm answers, whatever the A/B split


@dataclass
class Answer:
    """A JSON response; `after` runs once it is sent (the shadow's copy)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], Awaitable[None]] | None = None
    tail: bytes = b""  # the V2 binary extension's raw outputs, after the JSON body (see binary.py)

    def encode(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        # orjson when installed (several times faster than json for these small bodies); outputs are finite
        payload = dumps_json(self.body)
        if self.tail:
            headers = [(b"content-type", BINARY_MEDIA.encode()), (binary.HEADER_LENGTH.encode(),
                                                                  str(len(payload)).encode())]
            payload += self.tail
            headers.append((b"content-length", str(len(payload)).encode()))
            headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
            return payload, headers
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        return payload, headers


class AnswerResponse(Response):
    """An `Answer` through Starlette (every route but the two inference ones)."""

    def __init__(self, answer: Answer) -> None:
        payload, headers = answer.encode()
        super().__init__(status_code=answer.status, background=BackgroundTask(answer.after) if answer.after else None)
        self.body = payload
        self.raw_headers = headers


async def send_answer(send: Callable[[dict[str, Any]], Awaitable[None]], answer: Answer) -> None:
    payload, headers = answer.encode()
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    if answer.after is not None:
        await answer.after()


def _error(status: int, field: str, message: str) -> Answer:
    return Answer(status, {"error": f"{field}: {message}", "field": field})


def _call_of(request: Request) -> Call:
    return Call(request.path_params.get("name", ""), request.headers, request.receive,
                version=request.path_params.get("version"))


class Server:
    """One champion; optionally an A/B `challenger` answering `ab_percent` % of request keys, and a `shadow`
    that sees every answered request but never answers (each an `Arm`: predictor, version)."""

    def __init__(self, predictor: Predictor, log: PredictionLog | PgPredictionLog | RedisPredictionLog | None,
                 version: str | None = None, token: str | None = None, max_body: int = DEFAULT_MAX_BODY,
                 variant: str = "champion",
                 shadow: Arm | None = None, challenger: Arm | None = None, ab_percent: float = 0.0,
                 ab_key_header: str = DEFAULT_KEY_HEADER, shadow_queue: int = DEFAULT_SHADOW_QUEUE,
                 batch_max: int = 1, batch_wait_ms: float = DEFAULT_WAIT_MS,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.predictor = predictor
        self.log = log
        self.version = version
        self.token = token
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self._reader: LogReader | PgLogReader | None = None  # feedback's look-up of prediction ids, opened on first use
        self.variant = variant
        self.metrics = ServeMetrics()
        if log is not None:
            self.metrics.watch_log(predictor.name, log)
        self.champion = Arm(predictor, version, variant)
        self.challenger = Arm(challenger.predictor, challenger.version, CHALLENGER) if challenger else None
        self.ab_percent = ab_percent
        self.ab_key_header = ab_key_header
        self.shadow = (ShadowRunner(Arm(shadow.predictor, shadow.version, SHADOW), log, self.metrics, shadow_queue)
                       if shadow else None)
        # adaptive batching (off when batch_max <= 1): one batcher per answering arm, so arms never share a call
        self.batch_max = batch_max
        self.batch_wait_ms = batch_wait_ms
        self.batchers: dict[str, MicroBatcher] = {}
        if batch_max > 1:
            histogram = batch_rows_histogram(self.metrics.registry)
            for arm in (self.champion, self.challenger):
                if arm is not None:
                    observe = histogram.labels(arm.name, arm.variant).observe
                    self.batchers[arm.variant] = MicroBatcher(arm.predictor, batch_max, batch_wait_ms, observe)
        # where the rows of answered requests go: committed on the loop when commits do not fsync (see
        # LoopCommits); else through the log thread, a batch's requests sharing one hand-off and one commit
        self._log_writer: Any = log
        if isinstance(log, PredictionLog) and loop_commits_ok():  # LoopCommits opens the SQLite file itself
            self._log_writer = LoopCommits(log)
        elif log is not None and self.batchers:
            self._log_writer = SharedLogWrites(log)
        self.watcher: Any = None  # an AliasWatcher when served from NAME@ALIAS references (mlops/serve/reload.py)
        # what runs beside the HTTP server for its lifetime, on its event loop (the gRPC endpoint: grpc.py)
        self.services: list[Callable[[], contextlib.AbstractAsyncContextManager[Any]]] = []
        # the inputs whose binary BYTES are files, not text (arms take the same inputs: see check_compatible)
        self.images = frozenset(i.name for i in predictor.meta.inputs if i.image is not None)
        for arm in (self.champion, self.challenger, self.shadow.arm if self.shadow else None):
            if arm is not None:
                self.metrics.serving(arm.name, arm.variant, arm.version)

    def swap(self, variant: str, predictor: Predictor, version: str | None) -> None:
        """Serve `predictor` as `variant` from the next request on (its alias moved). Requests already in a
        model call finish on the old one. It must take the same inputs, or the swap is refused."""
        current = {self.variant: self.champion, CHALLENGER: self.challenger,
                   SHADOW: self.shadow.arm if self.shadow else None}.get(variant)
        if current is None:
            raise ValueError(f"no {variant} arm to swap")
        check_compatible(self.champion.predictor, predictor, variant)
        arm = Arm(predictor, version, variant)
        if variant == self.variant:
            self.champion, self.predictor, self.version = arm, predictor, version
        elif variant == CHALLENGER:
            self.challenger = arm
        elif self.shadow is not None:
            self.shadow.arm = arm
        if variant in self.batchers:
            self.batchers[variant].predictor = predictor
        self.metrics.serving(arm.name, variant, version, previous=current.version or "")

    # --- shared request handling --------------------------------------------------------------------

    async def _body(self, call: Call, json_required: bool = False) -> Any:
        """The request's JSON body. Routes that change state take `application/json` only (`json_required`);
        inference routes take a request without a content type too (see wire.content_type_error)."""
        return parse_json_body(await self._raw_body(call, json_required))

    async def _raw_body(self, call: Call, json_required: bool = False, octet_stream: bool = False) -> bytes:
        """The request's body as sent; `octet_stream`: application/octet-stream is taken too (the V2 binary
        tensor extension)."""
        refused = content_type_error(call.headers.get("content-type"), required=json_required, binary=octet_stream)
        if refused is not None:
            raise refused
        length = call.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise RequestError("body", f"over the size limit of {self.max_body} bytes", status=413)
        raw, more = b"", True
        while more:
            message = await call.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
            if len(raw) > self.max_body:
                raise RequestError("body", f"over the size limit of {self.max_body} bytes", status=413)
        return raw

    def _authorised(self, call: Call) -> bool:
        if not self.token:
            return True
        given = call.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def _refused(self, request: Request) -> Response | None:
        """The 401 of a route outside `_handle` (metrics, documents), or None when the token fits."""
        if self._authorised(_call_of(request)):
            return None
        return AnswerResponse(_error(401, "authorization", "missing or wrong bearer token"))

    def _model(self, name: str) -> None:
        if name != self.predictor.name:
            raise RequestError("model", f"no model named '{name}' (this server has '{self.predictor.name}')", 404)

    async def _handle(self, call: Call, route: str, work: Callable[[Call, float], Awaitable[Answer]]) -> Answer:
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        status = 500
        try:
            if not self._authorised(call):
                status = 401
                return _error(401, "authorization", "missing or wrong bearer token")
            answer = await work(call, started)
            status = answer.status
            return answer
        except RequestError as exc:
            status = exc.status
            # after a body timeout the rest of the body may still come: the connection cannot carry another request
            return Answer(exc.status, exc.body(), {"Connection": "close"} if exc.status == 408 else {})
        except ClientDisconnect:  # nobody is left to answer; nothing was predicted nor logged
            status = 499
            raise
        except (sqlite3.Error, LogWriteError) as exc:  # the prediction could not be logged: never answer it as a success
            status = 503
            say(f"prediction log error on {route}: {exc}", "mlops serve")
            return Answer(503, {"error": f"log: the prediction log is unavailable ({exc})", "field": "log"})
        except Exception as exc:  # a bug or a broken model: report it with an id, keep serving
            error_id = uuid.uuid4().hex[:12]
            say(f"error {error_id} on {route}: {type(exc).__name__}: {exc}", "mlops serve")
            return Answer(500, {"error": f"internal error {error_id}", "field": None})
        finally:
            self.metrics.in_flight.dec()
            arm = call.arm or self.champion  # the arm that answered, if any
            self.metrics.observe(route, arm.name, arm.variant, status, time.perf_counter() - started)

    async def _route(self, call: Call, route: str, work: Callable[[Call, float], Awaitable[Answer]]) -> Response:
        """A Starlette endpoint over `_handle`."""
        try:
            return AnswerResponse(await self._handle(call, route, work))
        except ClientDisconnect:  # the client left while sending its body: nothing to answer
            return Response(status_code=499)

    def inference(self, route: str, name: str, version: str | None, raw_headers: list[tuple[bytes, bytes]],
                  receive: Callable[[], Awaitable[dict[str, Any]]]) -> Coroutine[Any, Any, Answer]:
        """An inference request (`inference_target`'s route, name and version) answered by `_handle`: the ASGI
        path awaits it, the HTTP fast path steps it by hand (mlops/serve/fastpath.py)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        if version is not None:
            work = self._versioned_infer
        else:
            work = self._infer if route == V2_INFER else self._v1_predict
        return self._handle(Call(name, headers, receive, version=version), route, work)

    def _served(self, call: Call) -> Arm:
        """The arm a request names: the champion, or on a versioned route the arm serving that version (the
        challenger's too: a client may ask for it by version). A version no arm serves is a 404 naming it."""
        self._model(call.name)
        if call.version is None:
            return self.champion
        arms = [a for a in (self.champion, self.challenger) if a is not None and a.version is not None]
        for arm in arms:
            if arm.version == call.version:
                return arm
        served = ", ".join(str(a.version) for a in arms) or "none: it is served from a bundle, without a version"
        raise RequestError("version", f"model '{call.name}' has no version '{call.version}' served here "
                                      f"(versions served: {served})", 404)

    def _arm(self, call: Call, request_id: str | None) -> Arm:
        """Champion, or the A/B challenger for `ab_percent` % of request keys (key header, else body id); on a
        versioned route, the arm of that version."""
        if call.version is not None:
            call.arm = self._served(call)
            return call.arm
        arm = self.champion
        if self.challenger is not None:
            key, _ = request_key(call.headers.get(self.ab_key_header.lower()), request_id)
            if assign_arm(key, self.ab_percent):
                arm = self.challenger
        call.arm = arm
        return arm

    async def _predict_and_log(self, arm: Arm, feeds: dict[str, Any], request_id: str | None,
                               started: float) -> tuple[Prediction, list[str]]:
        batcher = self.batchers.get(arm.variant)
        if batcher is not None:  # the arm's model checked the feeds: their batch runs on it (see MicroBatcher)
            prediction = await batcher.predict(feeds, arm.predictor)
        else:
            prediction = arm.predictor.predict(feeds)
        ids = prediction_ids(request_id, prediction.rows)
        if self.log is not None:
            latency = (time.perf_counter() - started) * 1000
            # the rows are built by the commit, for every request it writes at once (mlops.serve.logrows)
            await self._log_writer.write("predictions", PendingPrediction(
                arm.predictor, ids, arm.name, arm.version, arm.variant, feeds, prediction, latency))
        if "label" in prediction.outputs:
            self.metrics.count_classes(arm.name, arm.variant, prediction.outputs["label"])
        return prediction, ids

    def _imputed(self, arm: Arm, feeds: dict[str, Any], rows: int) -> list[list[str]] | None:
        """Count the categories never seen in training; per row, those the answer names (data.categories)."""
        unseen = arm.predictor.unseen(feeds)
        self.metrics.count_unseen(arm.name, unseen)
        return arm.predictor.imputed(unseen, rows)

    def _answer(self, body: dict[str, Any], arm: Arm, feeds: dict[str, Any], ids: list[str],
                prediction: Prediction) -> Answer:
        """The response, tagged with the variant that answered; the shadow gets its copy once it is sent (it
        logs the inputs as the answering model saw them, built on its own thread)."""
        after = None
        if self.shadow is not None:
            shadow = self.shadow

            async def after() -> None:  # never blocks: a full queue drops and counts
                shadow.submit(feeds, ids, arm.predictor, prediction)

        return Answer(200, body, {"X-Model-Variant": arm.variant}, after)

    # --- V2 -----------------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return AnswerResponse(Answer(200, {"live": True}))

    async def ready(self, request: Request) -> Response:
        return AnswerResponse(Answer(200, {"ready": True}))

    async def server_metadata(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        # the repository extension: POST /v2/repository/models/{name}/load (KServe's and Triton's name for it)
        return AnswerResponse(Answer(200, {"name": "mlops", "version": mlops.__version__,
                                           "extensions": ["model_repository", "binary_tensor_data"]}))

    async def model_metadata(self, request: Request) -> Response:
        """`/v2/models/{name}` (every version served) and `/v2/models/{name}/versions/{version}` (that one)."""
        async def work(call: Call, started: float) -> Answer:
            arm = self._served(call)
            meta = arm.predictor.meta
            versions = [call.version] if call.version is not None else self.served_versions()
            return Answer(200, {"name": meta.name, "versions": versions,
                                "platform": "onnxruntime_onnx", "inputs": input_tensors(meta),
                                "outputs": output_tensors(meta)})

        return await self._route(_call_of(request), "metadata", work)

    async def model_ready(self, request: Request) -> Response:
        async def work(call: Call, started: float) -> Answer:
            self._served(call)
            return Answer(200, {"name": self.predictor.name, "ready": True})

        return await self._route(_call_of(request), "ready", work)

    async def v1_model_status(self, request: Request) -> Response:
        """V1 model status (V2's ready answer). `NAME:predict` (any `NAME:VERB`) is a POST route: another method on
        it is a 405 saying so, not a 404 for a model named `NAME:predict`."""
        if ":" in request.path_params["name"]:
            raise HTTPException(405, headers={"Allow": "POST"})
        return await self.model_ready(request)

    async def _infer(self, call: Call, started: float) -> Answer:
        self._model(call.name)
        raw = await self._raw_body(call, octet_stream=True)
        # JSON, or with Inference-Header-Content-Length the binary tensor extension decoded into the same inputs
        body = binary.parse_request(raw, call.headers.get(binary.HEADER_LENGTH), self.images)
        return await self.infer_body(call, body, started)

    async def infer_body(self, call: Call, body: Any, started: float) -> Answer:
        """A V2 request's parsed body (JSON, binary extension or gRPC, all as the JSON `inputs`) answered."""
        if not isinstance(body, dict):
            raise RequestError("body", "must be a JSON object with 'inputs'")
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise RequestError("id", "must be a string")
        if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
            raise RequestError("id", f"longer than {MAX_REQUEST_ID_CHARS} characters")
        if not isinstance(body.get("parameters", {}), dict):  # the protocol's parameters are an object
            raise RequestError("parameters", "must be an object of named parameters")
        arm = self._arm(call, request_id)
        # the decoded tensors are let go of before the log's commit is awaited: under load every request in flight
        # held its ~90 of them, enough to set off a collection of the youngest generation every few requests
        feeds = arm.predictor.feeds_from_v2(body.pop("inputs", None))
        # checked before the model runs: a request naming an output the model has not is neither run nor logged
        requested = binary.requested_outputs(body, arm.answer_outputs)
        prediction, ids = await self._predict_and_log(arm, feeds, request_id, started)
        imputed = self._imputed(arm, feeds, prediction.rows)
        outputs, tail = binary.v2_outputs(prediction.outputs, *requested)
        answer = self._answer({"model_name": arm.name, "model_version": arm.version, "id": request_id or ids[0],
                               "parameters": {"prediction_ids": ",".join(ids)} | imputed_parameters(imputed),
                               "outputs": outputs},
                              arm, feeds, ids, prediction)
        answer.tail = tail
        return answer

    async def infer(self, request: Request) -> Response:
        return await self._route(_call_of(request), V2_INFER, self._infer)

    async def _versioned_infer(self, call: Call, started: float) -> Answer:
        """`/v2/models/{name}/versions/{version}/infer`: the version is checked before the body is read."""
        self._served(call)
        return await self._infer(call, started)

    async def versioned_infer(self, request: Request) -> Response:
        return await self._route(_call_of(request), V2_INFER, self._versioned_infer)

    # --- V1 -----------------------------------------------------------------------------------------

    async def _v1_predict(self, call: Call, started: float) -> Answer:
        name, _, verb = call.name.partition(":")
        self._model(name)
        if verb != "predict":
            raise RequestError("path", f"unknown verb ':{verb}' (use :predict)", 404)
        body = await self._body(call)
        if not isinstance(body, dict) or "instances" not in body:
            raise RequestError("instances", "the body must be an object with an 'instances' list")
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise RequestError("id", "must be a string")
        if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
            raise RequestError("id", f"longer than {MAX_REQUEST_ID_CHARS} characters")
        arm = self._arm(call, request_id)
        feeds = arm.predictor.feeds_from_rows(body["instances"])
        prediction, ids = await self._predict_and_log(arm, feeds, request_id, started)
        imputed = self._imputed(arm, feeds, prediction.rows)
        answer = {"predictions": prediction.instances(), "ids": ids} | ({"imputed": imputed} if imputed else {})
        return self._answer(answer, arm, feeds, ids, prediction)

    async def v1_predict(self, request: Request) -> Response:
        call = Call(request.path_params["name_verb"], request.headers, request.receive)
        return await self._route(call, V1_PREDICT, self._v1_predict)

    async def feedback(self, request: Request) -> Response:
        """Ground truth for prediction ids (one object or a list): see `feedback_row` for what an item holds."""
        async def work(call: Call, started: float) -> Answer:
            body = await self._body(call, json_required=True)
            items = body if isinstance(body, list) else [body]
            rows = []
            for k, item in enumerate(items):
                where = f"[{k}]" if isinstance(body, list) else "body"
                try:
                    rows.append(feedback_row(item))
                    self._check_feedback(item)
                except FeedbackError as exc:
                    raise RequestError(f"{where}.{exc.field}", exc.message) from None
            known = self._known_ids([r[0] for r in rows])
            for k, row in enumerate(rows):
                if row[0] not in known:  # nothing is recorded: the client fixes its list and sends it again
                    raise RequestError(f"{f'[{k}]' if isinstance(body, list) else 'body'}.id",
                                       f"no prediction '{row[0]}' in this server's log", 404)
            assert self.log is not None  # an id is known only from the log
            await self._log_writer.write("feedback", rows)
            return Answer(200, {"recorded": len(rows)})

        return await self._route(_call_of(request), "feedback", work)

    def _check_feedback(self, item: dict[str, Any]) -> None:
        """What `feedback_row` leaves to the server: the id's length, and truth of the model's task's type."""
        if len(item["id"]) > MAX_ID_CHARS:
            raise FeedbackError("id", f"longer than {MAX_ID_CHARS} characters: no prediction has such an id")
        regression = self.predictor.meta.task == "regression"
        label, value = item.get("label"), item.get("value")
        if label is not None and regression:
            raise FeedbackError("label", f"model '{self.predictor.name}' is a regression: give the true 'value'")
        if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
            raise FeedbackError("label", f"a class label is a string (or an integer), got {type(label).__name__}")
        if value is not None and not regression:
            raise FeedbackError("value", f"model '{self.predictor.name}' is a classifier: give the true 'label'")

    def _known_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` this server's log has a prediction for (an indexed look-up). The log is always up to
        date for them: a prediction's 200, and so its id, reaches the client only after its rows are committed
        (see PredictionLog), and a read sees every commit."""
        if self.log is None:
            return set()
        if isinstance(self.log, RedisPredictionLog):  # a stream cannot be searched: taken unchecked, collected
            return set(ids)
        if self._reader is None:
            self._reader = open_reader(self.log.path, archive=False)  # the live rows: archives are not loaded here
        return self._reader.known_ids(ids)

    async def prometheus(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def load(self, request: Request) -> Response:
        """KServe's V2 repository extension, `POST /v2/repository/models/<name>/load`: re-resolve the aliases
        this server follows now, instead of at the next periodic check."""
        async def work(call: Call, started: float) -> Answer:
            self._model(call.name)
            from starlette.concurrency import run_in_threadpool

            changes = await run_in_threadpool(self.watcher.check) if self.watcher is not None else []
            failed = [c for c in changes if "error" in c]
            body = {"name": self.predictor.name, "load": not failed, "version": self.version, "changes": changes,
                    "watching": sorted(self.watcher.watched) if self.watcher is not None else [],
                    "traffic": self.traffic_state()}
            return Answer(409 if failed else 200, body)

        return await self._route(_call_of(request), "load", work)

    async def traffic(self, request: Request) -> Response:
        """`POST /mlops/v1/models/<name>/traffic {"percent": P}`: the A/B challenger answers P % of request
        keys from now on (0: none). What a rollout's canary steps move on a live server (mlops rollout
        --live-url); the arms themselves follow their aliases (see reload.py)."""
        return await self._route(_call_of(request), "traffic", self._traffic)

    async def old_traffic(self, request: Request) -> Response:
        """The traffic route at its old path (`POST /v2/repository/models/<name>/traffic`): it answers as before
        for one release (the same body, so strict clients keep working), with a `Deprecation` header and a
        `Link` to the new path."""
        response = await self._route(_call_of(request), "traffic", self._traffic)
        response.headers["Deprecation"] = TRAFFIC_DEPRECATED_SINCE
        # the name as sent, percent-encoded again: a header carries latin-1 only, a path's name may be any text
        successor = TRAFFIC_PATH.format(name=quote(request.path_params["name"], safe=""))
        response.headers["Link"] = f'<{successor}>; rel="successor-version"'
        return response

    async def _traffic(self, call: Call, started: float) -> Answer:
        self._model(call.name)
        body = await self._body(call, json_required=True)  # a control route: never from a browser's form
        percent = body.get("percent") if isinstance(body, dict) else None
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise RequestError("percent", "a number from 0 to 100 is required")
        if self.challenger is None and percent > 0:
            raise RequestError("percent", "this server has no challenger: start it with --ab NAME@challenger:0 "
                               "to move traffic live", status=409)
        self.ab_percent = float(percent)
        return Answer(200, self.traffic_state())

    def served_versions(self) -> list[str]:
        """The versions the versioned routes answer: the champion's, then the A/B challenger's."""
        arms = (self.champion, self.challenger)
        return list(dict.fromkeys(a.version for a in arms if a is not None and a.version is not None))

    def traffic_state(self) -> dict[str, Any]:
        c = self.challenger
        return {"name": self.predictor.name, "champion": {"version": self.version},
                "challenger": {"version": c.version} if c is not None else None,
                "percent": self.ab_percent if c is not None else 0.0}

    async def openapi(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        return AnswerResponse(Answer(200, openapi_spec(self.predictor.meta, self.predictor.max_batch,
                                                      self.served_versions())))

    def app(self) -> Starlette:
        routes = [
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.versioned_infer, methods=["POST"]),
            Route("/v1/models/{name_verb:path}", self.v1_predict, methods=["POST"]),
            Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready), Route("/v2", self.server_metadata),
            Route("/v2/models/{name}", self.model_metadata), Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/versions/{version}", self.model_metadata),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v1/models/{name}", self.v1_model_status),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route(TRAFFIC_PATH, self.traffic, methods=["POST"]),
            Route(OLD_TRAFFIC_PATH, self.old_traffic, methods=["POST"]),
            Route("/metrics", self.prometheus), Route("/openapi.json", self.openapi),
        ]
        return ServeApp(self, routes)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # what was loaded at start-up (the model, the libraries) outlives every request: kept out of the cyclic
        # collector's sweeps, whose full passes over it stalled every request in flight for ~15 ms (p99 at 8
        # connections 16 ms before, 6 ms after, V2 bodies of 30 tensors: each request's many small objects
        # bring those passes round often)
        gc.collect()
        gc.freeze()
        if self.watcher is not None:
            self.watcher.start()
        async with contextlib.AsyncExitStack() as services:  # stopped before the log closes below
            for service in self.services:
                await services.enter_async_context(service())
            yield
        if self.watcher is not None:
            self.watcher.stop()
        for batcher in self.batchers.values():
            await batcher.close()
        if self.shadow is not None:  # let queued shadow work finish (bounded wait) before the log closes
            self.shadow.close()
        if isinstance(self._log_writer, LoopCommits):
            self._log_writer.close()
        if self._reader is not None:
            self._reader.close()
        if self.log is not None:  # drain and close: whatever was acknowledged is already committed
            self.log.close()


class ServeApp(Starlette):
    """The ASGI app. A POST to either inference route is answered straight from the ASGI messages: Starlette's
    routing, request and response objects cost as much as the model call for a single row. Every other
    request, those routes' other methods, and the inference routes themselves when the app is mounted under a
    prefix go through Starlette's routing to the same handlers behind `Server._handle`."""

    def __init__(self, server: Server, routes: list[Route]) -> None:
        super().__init__(routes=routes, lifespan=server._lifespan,
                         exception_handlers={HTTPException: _http_exception})
        self.server = server
        # a body that never ends: the read raises BodyTimeout, which `_handle` answers 408 like any RequestError
        self._guarded = RequestGuard(self._dispatch, server.body_timeout_s, own_answer=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._guarded(scope, receive, send)

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = inference_target(scope["path"])
            if target is not None:
                try:
                    answer = await self.server.inference(*target, scope["headers"], receive)
                except ClientDisconnect:
                    return
                await send_answer(send, answer)
                return
        await super().__call__(scope, receive, send)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """No such route (404), a method the route does not take (405): our JSON error body, not Starlette's text."""
    assert isinstance(exc, HTTPException)
    body, headers = http_error(exc.status_code, request.method, request.url.path, str(exc.detail),
                               (exc.headers or {}).get("Allow"))
    return AnswerResponse(Answer(exc.status_code, body, headers))
