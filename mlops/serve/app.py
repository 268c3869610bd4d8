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
import math
import secrets
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlops.serve.batching import DEFAULT_WAIT_MS, MicroBatcher, SharedLogWrites, batch_rows_histogram
from mlops.serve.log import (
    FeedbackError,
    LoopCommits,
    PredictionLog,
    dumps_json,
    feedback_row,
    loop_commits_ok,
    prediction_rows,
)
from mlops.serve.metrics import ServeMetrics
from mlops.serve.predictor import Prediction, Predictor, RequestError, parse_json_body
from mlops.serve.routing import (
    CHALLENGER,
    DEFAULT_KEY_HEADER,
    DEFAULT_SHADOW_QUEUE,
    SHADOW,
    Arm,
    ShadowRunner,
    assign_arm,
    check_compatible,
    request_key,
)

DEFAULT_MAX_BODY = 8 * 1024 * 1024


class FastJSONResponse(JSONResponse):
    """Prediction answers, encoded with orjson when it is installed (several times faster than json for
    these small bodies); the same JSON either way (outputs are finite: the graph's, checked at export)."""

    def render(self, content: Any) -> bytes:
        return dumps_json(content)


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status)


class Server:
    """One champion; optionally an A/B `challenger` answering `ab_percent` % of request keys, and a `shadow`
    that sees every answered request but never answers (each an `Arm`: predictor, version)."""

    def __init__(self, predictor: Predictor, log: PredictionLog | None, version: str | None = None,
                 token: str | None = None, max_body: int = DEFAULT_MAX_BODY, variant: str = "champion",
                 shadow: Arm | None = None, challenger: Arm | None = None, ab_percent: float = 0.0,
                 ab_key_header: str = DEFAULT_KEY_HEADER, shadow_queue: int = DEFAULT_SHADOW_QUEUE,
                 batch_max: int = 1, batch_wait_ms: float = DEFAULT_WAIT_MS) -> None:
        self.predictor = predictor
        self.log = log
        self.version = version
        self.token = token
        self.max_body = max_body
        self.variant = variant
        self.metrics = ServeMetrics()
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
        if log is not None and loop_commits_ok():
            self._log_writer = LoopCommits(log)
        elif log is not None and self.batchers:
            self._log_writer = SharedLogWrites(log)
        self.watcher: Any = None  # an AliasWatcher when served from NAME@ALIAS references (mlops/serve/reload.py)
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

    async def _body(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise RequestError("body", f"over the size limit of {self.max_body} bytes", status=413)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body:
                raise RequestError("body", f"over the size limit of {self.max_body} bytes", status=413)
        return parse_json_body(raw)

    def _authorised(self, request: Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def _model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.predictor.name:
            raise RequestError("model", f"no model named '{name}' (this server has '{self.predictor.name}')", 404)

    async def _handle(self, request: Request, route: str, work: Any) -> Response:
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        status = 500
        try:
            if not self._authorised(request):
                status = 401
                return _error(401, "authorization", "missing or wrong bearer token")
            response = await work(request, started)
            status = response.status_code
            return response
        except RequestError as exc:
            status = exc.status
            return JSONResponse(exc.body(), status_code=exc.status)
        except sqlite3.Error as exc:  # the prediction could not be logged: never answer it as a success
            status = 503
            print(f"mlops serve: prediction log error on {route}: {exc}", flush=True)
            return JSONResponse({"error": f"log: the prediction log is unavailable ({exc})", "field": "log"},
                                status_code=503)
        except Exception as exc:  # a bug or a broken model: report it with an id, keep serving
            error_id = uuid.uuid4().hex[:12]
            print(f"mlops serve: error {error_id} on {route}: {type(exc).__name__}: {exc}", flush=True)
            return JSONResponse({"error": f"internal error {error_id}", "field": None}, status_code=500)
        finally:
            self.metrics.in_flight.dec()
            arm: Arm = getattr(request.state, "arm", None) or self.champion  # the arm that answered, if any
            self.metrics.observe(route, arm.name, arm.variant, status, time.perf_counter() - started)

    def _arm(self, request: Request, request_id: str | None) -> Arm:
        """Champion, or the A/B challenger for `ab_percent` % of request keys (key header, else body id)."""
        arm = self.champion
        if self.challenger is not None:
            key, _ = request_key(request.headers.get(self.ab_key_header), request_id)
            if assign_arm(key, self.ab_percent):
                arm = self.challenger
        request.state.arm = arm
        return arm

    async def _predict_and_log(self, arm: Arm, feeds: dict[str, Any], request_id: str | None, started: float,
                               raw_rows: list[dict[str, Any]]) -> tuple[Prediction, list[str]]:
        batcher = self.batchers.get(arm.variant)
        prediction = await batcher.predict(feeds) if batcher is not None else arm.predictor.predict(feeds)
        rows = prediction.rows
        base = request_id or uuid.uuid4().hex
        ids = [base] if rows == 1 else [f"{base}-{i}" for i in range(rows)]
        if self.log is not None:
            latency = (time.perf_counter() - started) * 1000
            await self._log_writer.write("predictions", prediction_rows(
                ids, arm.name, arm.version, arm.variant, raw_rows, prediction.instances(), latency))
        if "label" in prediction.outputs:
            self.metrics.count_classes(arm.name, arm.variant, prediction.outputs["label"])
        return prediction, ids

    def _answer(self, body: dict[str, Any], arm: Arm, feeds: dict[str, Any], ids: list[str],
                raw_rows: list[dict[str, Any]], prediction: Prediction) -> JSONResponse:
        """The response, tagged with the variant that answered; the shadow gets its copy once it is sent."""
        background = None
        if self.shadow is not None:
            background = BackgroundTask(self._to_shadow, feeds, ids, raw_rows, prediction)
        return FastJSONResponse(body, headers={"X-Model-Variant": arm.variant}, background=background)

    async def _to_shadow(self, feeds: dict[str, Any], ids: list[str], raw_rows: list[dict[str, Any]],
                         prediction: Prediction) -> None:
        if self.shadow is not None:
            self.shadow.submit(feeds, ids, raw_rows, prediction)  # never blocks: a full queue drops and counts

    # --- V2 -----------------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        import mlops

        return JSONResponse({"name": "mlops", "version": mlops.__version__, "extensions": []})

    async def model_metadata(self, request: Request) -> Response:
        async def work(request: Request, started: float) -> Response:
            self._model(request)
            meta = self.predictor.meta
            inputs = [{"name": i.name, "datatype": "BYTES" if i.dtype == "string" else "FP32", "shape": [-1, 1]}
                      for i in meta.inputs]
            outputs = [{"name": o["name"], "datatype": "BYTES" if o["dtype"] == "string" else "FP32",
                        "shape": [-1 if isinstance(d, str) else d for d in o["shape"]]} for o in meta.outputs]
            return JSONResponse({"name": meta.name, "versions": [self.version] if self.version else [],
                                 "platform": "onnxruntime_onnx", "inputs": inputs, "outputs": outputs})

        return await self._handle(request, "metadata", work)

    async def model_ready(self, request: Request) -> Response:
        async def work(request: Request, started: float) -> Response:
            self._model(request)
            return JSONResponse({"name": self.predictor.name, "ready": True})

        return await self._handle(request, "ready", work)

    async def infer(self, request: Request) -> Response:
        async def work(request: Request, started: float) -> Response:
            self._model(request)
            body = await self._body(request)
            if not isinstance(body, dict):
                raise RequestError("body", "must be a JSON object with 'inputs'")
            request_id = body.get("id")
            if request_id is not None and not isinstance(request_id, str):
                raise RequestError("id", "must be a string")
            arm = self._arm(request, request_id)
            feeds = arm.predictor.feeds_from_v2(body.get("inputs"))
            raw = _rows_of(feeds)
            prediction, ids = await self._predict_and_log(arm, feeds, request_id, started, raw)
            outputs = []
            for name, values in prediction.outputs.items():
                datatype = "BYTES" if values.dtype == object else "FP32"
                data = values.reshape(-1).tolist()
                outputs.append({"name": name, "datatype": datatype, "shape": list(values.shape), "data": data})
            return self._answer({"model_name": arm.name, "model_version": arm.version, "id": request_id or ids[0],
                                 "parameters": {"prediction_ids": ",".join(ids)}, "outputs": outputs},
                                arm, feeds, ids, raw, prediction)

        return await self._handle(request, "v2_infer", work)

    # --- V1 -----------------------------------------------------------------------------------------

    async def v1_predict(self, request: Request) -> Response:
        async def work(request: Request, started: float) -> Response:
            name, _, verb = request.path_params["name_verb"].partition(":")
            request.path_params["name"] = name
            self._model(request)
            if verb != "predict":
                raise RequestError("path", f"unknown verb ':{verb}' (use :predict)", 404)
            body = await self._body(request)
            if not isinstance(body, dict) or "instances" not in body:
                raise RequestError("instances", "the body must be an object with an 'instances' list")
            request_id = body.get("id")
            if request_id is not None and not isinstance(request_id, str):
                raise RequestError("id", "must be a string")
            arm = self._arm(request, request_id)
            feeds = arm.predictor.feeds_from_rows(body["instances"])
            raw = _rows_of(feeds)
            prediction, ids = await self._predict_and_log(arm, feeds, request_id, started, raw)
            return self._answer({"predictions": prediction.instances(), "ids": ids}, arm, feeds, ids, raw, prediction)

        return await self._handle(request, "v1_predict", work)

    async def feedback(self, request: Request) -> Response:
        """Ground truth for prediction ids (one object or a list): see `feedback_row` for what an item holds."""
        async def work(request: Request, started: float) -> Response:
            body = await self._body(request)
            items = body if isinstance(body, list) else [body]
            rows = []
            for k, item in enumerate(items):
                where = f"[{k}]" if isinstance(body, list) else "body"
                try:
                    rows.append(feedback_row(item))
                except FeedbackError as exc:
                    raise RequestError(f"{where}.{exc.field}", exc.message) from None
            if self.log is not None:
                await self._log_writer.write("feedback", rows)
            return JSONResponse({"recorded": len(rows)})

        return await self._handle(request, "feedback", work)

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def load(self, request: Request) -> Response:
        """KServe's V2 repository extension, `POST /v2/repository/models/<name>/load`: re-resolve the aliases
        this server follows now, instead of at the next periodic check."""
        async def work(request: Request, started: float) -> Response:
            self._model(request)
            from starlette.concurrency import run_in_threadpool

            changes = await run_in_threadpool(self.watcher.check) if self.watcher is not None else []
            failed = [c for c in changes if "error" in c]
            body = {"name": self.predictor.name, "load": not failed, "version": self.version, "changes": changes,
                    "watching": sorted(self.watcher.watched) if self.watcher is not None else [],
                    "traffic": self.traffic_state()}
            return JSONResponse(body, status_code=409 if failed else 200)

        return await self._handle(request, "load", work)

    async def traffic(self, request: Request) -> Response:
        """`POST /v2/repository/models/<name>/traffic {"percent": P}`: the A/B challenger answers P % of request
        keys from now on (0: none). What a rollout's canary steps move on a live server (mlops rollout
        --live-url); the arms themselves follow their aliases (see reload.py)."""
        async def work(request: Request, started: float) -> Response:
            self._model(request)
            body = await self._body(request)
            percent = body.get("percent") if isinstance(body, dict) else None
            if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
                raise RequestError("percent", "a number from 0 to 100 is required")
            if self.challenger is None and percent > 0:
                raise RequestError("percent", "this server has no challenger: start it with --ab NAME@challenger:0 "
                                   "to move traffic live", status=409)
            self.ab_percent = float(percent)
            return JSONResponse(self.traffic_state())

        return await self._handle(request, "traffic", work)

    def traffic_state(self) -> dict[str, Any]:
        c = self.challenger
        return {"name": self.predictor.name, "champion": {"version": self.version},
                "challenger": {"version": c.version} if c is not None else None,
                "percent": self.ab_percent if c is not None else 0.0}

    async def openapi(self, request: Request) -> Response:
        from mlops.serve.openapi import openapi_spec

        return JSONResponse(openapi_spec(self.predictor.meta, self.predictor.max_batch))

    def app(self) -> Starlette:
        routes = [  # the two inference routes first: every request is matched against the list in order
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v1/models/{name_verb:path}", self.v1_predict, methods=["POST"]),
            Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready), Route("/v2", self.server_metadata),
            Route("/v2/models/{name}", self.model_metadata), Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v1/models/{name}", self.model_ready),  # V1 model status: the same answer
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{name}/traffic", self.traffic, methods=["POST"]),
            Route("/metrics", self.prometheus), Route("/openapi.json", self.openapi),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.watcher is not None:
            self.watcher.start()
        yield
        if self.watcher is not None:
            self.watcher.stop()
        for batcher in self.batchers.values():
            await batcher.close()
        if self.shadow is not None:  # let queued shadow work finish (bounded wait) before the log closes
            self.shadow.close()
        if isinstance(self._log_writer, LoopCommits):
            self._log_writer.close()
        if self.log is not None:  # drain and close: whatever was acknowledged is already committed
            self.log.close()


def _rows_of(feeds: dict[str, Any]) -> list[dict[str, Any]]:
    """The validated inputs as one object per row, for the log (NaN -> null, "" -> null)."""
    names = list(feeds)
    n = len(feeds[names[0]]) if names else 0
    rows = []
    for i in range(n):
        row = {}
        for name in names:
            v = feeds[name][i, 0]
            if isinstance(v, str):
                row[name] = v or None
            else:
                f = float(v)
                row[name] = None if math.isnan(f) else f
        rows.append(row)
    return rows
