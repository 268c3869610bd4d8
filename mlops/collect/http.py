"""KServe's payload logger landed in the prediction log (`mlops collect --http [HOST:]PORT --log STORE`).

An InferenceService's `spec.predictor.logger` makes KServe's agent POST each request and each response as a
CloudEvent in binary content mode: the payload as the body, and headers `ce-id` (the request id, the same on
both), `ce-type` (`org.kubeflow.serving.inference.request` / `.response`), `ce-source`, `ce-specversion`,
`ce-time`, and the extensions `ce-inferenceservicename`, `ce-namespace`, `ce-component`, `ce-endpoint`.
Structured mode (`application/cloudevents+json`: the attributes and `data` in one JSON body) is read too.

The two events of one id are paired in memory; once both are there, the prediction row(s) are written as
`mlops serve` writes them (`prediction_rows`: inputs and outputs one JSON object per instance, id = ce-id for one
instance, `ce-id-K` for the K-th of several) and the second event is answered 200 only after the commit.
The first of a pair is answered 200 at once, its body saying "pending" (KServe's agent logs any status but 200
as an error): the agent posts from a few workers, and holding a request's event until its response's came could
starve them. What has no partner after `pair_timeout_s` (the logger's
mode `request` or `response`, or a lost event) is written with what is known: the missing side as `{}` per
instance (the columns are NOT NULL), latency 0. Rows are kept only in memory until written: a collector
killed with unpaired events loses those (the pair's second event was never acknowledged, so never both).
The ids written are remembered (the last MAX_WRITTEN, with which of their events): an event re-sent after its
rows were written (an at-least-once broker's retry, the same ce-id and type) is answered 200 with
`"status": "duplicate"` and written nothing, where it would have started a new pair, written alone at its
timeout as a second row of that id (the log's id index is not unique: `mlops serve` logs a shadow's row under the
answered id). An event re-sent unchanged while its partner is awaited is a duplicate too; one that differs is a
400. A late partner of an event already written alone is no retry: it is written alone too.
An event the collector cannot take is answered 400 `{"error": "<field>: <message>", "field": "<field>"}`, as the
server answers a bad request, before it is paired: a body that is no JSON, a payload of the wrong shape, or one
the log could not keep (a lone surrogate, nesting past MAX_DEPTH, an integer past 64 bits), which would
otherwise fail its pair's write.

Inputs: V1 `instances` of named objects map directly; V1 list instances and V2 tensors need names, taken from
`input_names` (in order; `input_0`... without them). V2 tensors give one row per first-dimension entry.
Outputs: V1 `predictions` of objects as they are (ours: `label`, `probabilities` or `prediction`); a bare
float as `{"prediction": v}` (regression), any other scalar as `{"label": v}` (a class); V2 outputs by name.
Model = ce-inferenceservicename, version = the `ce-modelversion` extension if sent (else none), variant
`champion` as `mlops serve` logs by default; latency from the two events' ce-time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.ports import check_listen
from mlops.core.predlog import CHALLENGER, CHAMPION, prediction_rows
from mlops.core.predlog_store import log_name, open_log
from mlops.package.predictor import RequestError, json_nodes, parse_json_body

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
PAIR_TIMEOUT_S = 60.0
MAX_PENDING = 10_000  # unpaired ids held in memory; past it the oldest is written alone
MAX_WRITTEN = 10_000  # ids whose rows were written, remembered to answer a re-sent event; past it the oldest goes
MAX_DEPTH = 64  # levels of nesting a payload may have (a V2 tensor's data nests one per dimension)
WHO = "mlops collect"


class EventError(ValueError):
    """An event the collector cannot take: answered 400 with the field at fault, as the server answers a bad
    request (`{"error": "<field>: <message>", "field": <field>}`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field}


class MismatchError(EventError):
    """A request and a response that disagree on the instance count: each is logged alone."""


@dataclass
class Event:
    id: str
    kind: str  # "request" | "response"
    model: str
    version: str | None
    time: float | None
    data: Any
    variant: str = CHAMPION


@dataclass
class Counts:
    """What a collector did, for the summary it prints when it stops (and `--json` prints)."""

    url: str = ""  # where it received events
    log: str = ""  # where their rows landed (a URL without its password)
    events: int = 0  # taken (answered 200)
    refused: int = 0  # answered 400
    rows: int = 0  # written to the log
    lost: int = 0  # events whose rows the log refused (answered 503, or written alone and failed)
    duplicates: int = 0  # re-sent events, held or written already: answered 200 `duplicate`, not taken again


@dataclass
class Pending:
    request: Event | None = None
    response: Event | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def _time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None  # a malformed time only costs the latency, never the row


def parse_event(headers: dict[str, str], body: bytes) -> Event:
    """One CloudEvent (binary or structured mode) -> Event; EventError says what is wrong."""
    attrs: dict[str, Any]
    if headers.get("content-type", "").split(";")[0].strip() == "application/cloudevents+json":
        attrs = _json(body, "the structured CloudEvent body")
        if not isinstance(attrs, dict):
            raise EventError("body", "structured CloudEvent body is not a JSON object")
        data = attrs.get("data")
        if data is None and "data_base64" in attrs:
            raise EventError("data_base64", "not supported: send the payload as JSON in data")
    else:
        attrs = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
        data = _json(body, "the logged payload") if body else None
    ce_id = attrs.get("id")
    if not ce_id or not isinstance(ce_id, str | int):
        raise EventError("ce-id", "missing (the request id KServe pairs request and response by)")
    kinds = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
    if not isinstance(attrs.get("type"), str) or attrs["type"] not in kinds:
        raise EventError("ce-type", f"{attrs.get('type')!r} is neither {REQUEST_TYPE} nor {RESPONSE_TYPE}")
    if not isinstance(data, dict):
        raise EventError("body", "payload is not a JSON object (expected V1 instances/predictions or V2 "
                                 "inputs/outputs)")
    model = attrs.get("inferenceservicename") or attrs.get("source") or "unknown"
    # KServe sends no version extension; a V2 answer names its version in the body (ours does)
    version = attrs.get("modelversion") or data.get("model_version") or None
    # ce-endpoint is `canary` for the canary predictor of a rollout: our name for that arm is the challenger
    variant = CHALLENGER if attrs.get("endpoint") == "canary" else CHAMPION
    return Event(str(ce_id), kinds[attrs["type"]], str(model), None if version is None else str(version),
                 _time(attrs.get("time")), data, variant)


def _json(body: bytes, what: str) -> Any:
    """The body read as the server reads a request's (`parse_json_body`: strict JSON, no lone surrogate), and
    checked to be what the log can keep (`_check_loggable`): a bad request, not a crash or a failed log write."""
    try:
        value = parse_json_body(body)
    except RequestError as exc:
        if exc.field == "body":
            raise EventError("body", exc.message.replace("invalid JSON", f"{what} is not JSON", 1)) from None
        raise EventError(exc.field, exc.message) from None
    _check_loggable(value)
    return value


def _check_loggable(body: Any) -> None:
    """Refuse, naming where, what the log's JSON cannot keep: nesting past MAX_DEPTH (orjson writes 255 levels
    at most, and the V2 walks here recurse) or an integer past 64 bits (orjson refuses it). Found at the second
    event of a pair, either would fail the pair's write (a 503, the pair lost) instead of the event at fault."""
    for where, value, depth in json_nodes(body):
        if depth > MAX_DEPTH:
            raise EventError(where, f"nested deeper than {MAX_DEPTH} levels, more than the log keeps")
        if isinstance(value, int) and not -(2 ** 63) <= value < 2 ** 64:
            raise EventError(where or "body", "an integer past 64 bits, which the log's JSON cannot keep")


def _v2_rows(tensors: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(tensors, list) or not all(isinstance(t, dict) and "name" in t for t in tensors):
        raise EventError(what, f"V2 {what} must be a list of tensors with a name")
    rows: list[dict[str, Any]] = []
    sizes = set()
    for t in tensors:
        data, shape = t.get("data", []), t.get("shape") or [len(t.get("data", []))]
        if not isinstance(data, list) or not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise EventError(what, f"V2 tensor {t['name']!r}: data must be a list and shape a list of sizes")
        flat = _flat_len(data)
        if flat != math.prod(shape):
            raise EventError(what, f"V2 tensor {t['name']!r}: shape {shape} holds {math.prod(shape)} values, "
                             f"data has {flat}")
        n = shape[0] if shape else 1
        sizes.add(n)
        data = data if len(data) == flat else _flatten(data)  # nested JSON data, as V2 allows, made flat
        width = len(data) // n if n else 0
        while len(rows) < n:
            rows.append({})
        for i in range(n):
            part = data[i * width:(i + 1) * width] if isinstance(data, list) else data
            rows[i][t["name"]] = part[0] if isinstance(part, list) and width == 1 else part
    if len(sizes) > 1:
        raise EventError(what, f"V2 {what} tensors disagree on the batch size (first dimensions {sorted(sizes)})")
    return rows


def _flatten(data: list[Any]) -> list[Any]:
    return [x for d in data for x in (_flatten(d) if isinstance(d, list) else [d])]


def _flat_len(data: list[Any]) -> int:
    return sum(_flat_len(d) if isinstance(d, list) else 1 for d in data)


def input_rows(payload: dict[str, Any], input_names: list[str] | None) -> list[dict[str, Any]]:
    """A request payload -> one inputs object per instance, as the log keeps them."""
    if "instances" in payload:
        if not isinstance(payload["instances"], list):
            raise EventError("instances", "V1 'instances' must be a list")
        out = []
        for inst in payload["instances"]:
            if isinstance(inst, dict):
                out.append(inst)
            else:
                values = inst if isinstance(inst, list) else [inst]
                names = input_names or [f"input_{k}" for k in range(len(values))]
                if len(names) != len(values):
                    raise EventError("instances", f"an instance has {len(values)} values, the inputs are {len(names)}")
                out.append(dict(zip(names, values, strict=True)))
        return out
    if "inputs" in payload:
        rows = _v2_rows(payload["inputs"], "inputs")
        if input_names and len(payload["inputs"]) == 1 and rows and isinstance(next(iter(rows[0].values())), list):
            only = payload["inputs"][0]["name"]  # one [n, k] tensor of k named inputs
            rows = [dict(zip(input_names, r[only], strict=False)) for r in rows]
        return rows
    raise EventError("body", "request payload has neither V1 'instances' nor V2 'inputs'")


def _scalar_key(value: Any) -> str:
    """Where a bare V1 prediction goes so the monitor reads it as ours: a float is a regression's `prediction`,
    a class (an integer, a string, a boolean) a classifier's `label`."""
    return "prediction" if isinstance(value, float) else "label"


def output_rows(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A response payload -> one outputs object per instance."""
    if "predictions" in payload:
        if not isinstance(payload["predictions"], list):
            raise EventError("predictions", "V1 'predictions' must be a list")
        return [p if isinstance(p, dict) else {_scalar_key(p): p} for p in payload["predictions"]]
    if "outputs" in payload:
        return _v2_rows(payload["outputs"], "outputs")
    raise EventError("body", "response payload has neither V1 'predictions' nor V2 'outputs'")


def event_rows(pair: Pending, input_names: list[str] | None) -> list[tuple[Any, ...]]:
    """The prediction rows of a pair (or of one side alone, the other as `{}` per instance)."""
    req, resp = pair.request, pair.response
    first = req or resp
    assert first is not None
    inputs = input_rows(req.data, input_names) if req else None
    outputs = output_rows(resp.data) if resp else None
    n = len(inputs if inputs is not None else outputs or [])
    inputs = inputs if inputs is not None else [{} for _ in range(n)]
    outputs = outputs if outputs is not None else [{} for _ in range(n)]
    if len(outputs) != n:
        raise MismatchError("predictions", f"request {first.id}: {n} instances but {len(outputs)} predictions")
    latency = 0.0
    if req and resp and req.time is not None and resp.time is not None:
        latency = max(0.0, (resp.time - req.time) * 1000)
    ids = answered_ids(resp.data, n) if resp else None
    ids = ids or ([first.id] if n == 1 else [f"{first.id}-{i}" for i in range(n)])
    version = (resp.version if resp else None) or (req.version if req else None)
    return prediction_rows(ids, first.model, version, first.variant, inputs, outputs, latency)


def answered_ids(payload: dict[str, Any], n: int) -> list[str] | None:
    """The prediction ids `mlops serve` answered (V1 `ids`, V2 `parameters.prediction_ids`): clients send ground
    truth by them, so the rows must carry them. None when the response has none (another server)."""
    ids = payload.get("ids")
    if ids is None and isinstance(payload.get("parameters"), dict):
        joined = payload["parameters"].get("prediction_ids")
        ids = joined.split(",") if isinstance(joined, str) else None
    if isinstance(ids, list) and len(ids) == n and all(isinstance(i, str) and i for i in ids):
        return ids
    return None


def cloudevents_app(log: str, input_names: list[str] | None = None,
                    pair_timeout_s: float = PAIR_TIMEOUT_S) -> Starlette:
    """The collector's ASGI app: POST / takes CloudEvents, GET /healthz answers ok."""
    writer = open_log(log)
    pending: dict[str, Pending] = {}
    # id -> the kinds of event whose rows were written, oldest first: an at-least-once sender's retry of an event
    # already written would otherwise start a new pair, written alone at its timeout, a second row of that id
    written: dict[str, frozenset[str]] = {}
    counts = Counts(log=log_name(log))

    async def write(pair: Pending) -> int:
        rows = event_rows(pair, input_names)
        await writer.write("predictions", rows)
        counts.rows += len(rows)
        first = pair.request or pair.response
        assert first is not None
        kinds = written.pop(first.id, frozenset()) | {e.kind for e in (pair.request, pair.response) if e is not None}
        written[first.id] = kinds  # at the end again: it is the newest
        if len(written) > MAX_WRITTEN:
            del written[next(iter(written))]
        return len(rows)

    def expire(ce_id: str) -> None:
        pair = pending.pop(ce_id, None)
        if pair is not None:
            if pair.timer is not None:
                pair.timer.cancel()
            asyncio.get_running_loop().create_task(_write_alone(pair))

    async def _write_alone(pair: Pending) -> None:
        try:
            await write(pair)
        except Exception as exc:  # a background write: reported, never raised into the loop
            counts.lost += 1
            say(f"could not log unpaired event {(pair.request or pair.response).id}: {exc}", WHO)  # type: ignore[union-attr]

    async def receive(request: Request) -> JSONResponse:
        try:
            event = parse_event({k.lower(): v for k, v in request.headers.items()}, await request.body())
            # the payload's shape is checked now, so a bad event is refused to its sender, not at pairing
            input_rows(event.data, input_names) if event.kind == "request" else output_rows(event.data)
            held = getattr(pending.get(event.id), event.kind, None)
            # a retry, not a new prediction: its rows are in the log, or it is held (its timer left as it runs)
            if event.kind in written.get(event.id, ()) or held == event:
                counts.duplicates += 1
                return JSONResponse({"id": event.id, "status": "duplicate"}, status_code=200)
            if event.id not in pending and len(pending) >= MAX_PENDING:
                oldest = next(iter(pending))  # dicts keep insertion order: the oldest unpaired id
                expire(oldest)
            pair = pending.setdefault(event.id, Pending())
            if held is not None:
                raise EventError("ce-id", f"a second {event.kind} event for id {event.id}, unlike the first (its "
                                          "model, version, time or payload differ)")
            setattr(pair, event.kind, event)
            if pair.request is None or pair.response is None:
                loop = asyncio.get_running_loop()
                pair.timer = loop.call_later(pair_timeout_s, expire, event.id)
                counts.events += 1
                return JSONResponse({"id": event.id, "status": "pending"}, status_code=200)
            pending.pop(event.id, None)
            if pair.timer is not None:
                pair.timer.cancel()
            try:
                rows = await write(pair)
            except MismatchError:  # the first event was acknowledged already: log each side alone, lose neither
                await _write_alone(Pending(request=pair.request))
                await _write_alone(Pending(response=pair.response))
                raise
            except EventError:
                raise
            except Exception as exc:  # the store failed: KServe's agent does not retry, so the pair is lost
                counts.lost += 2
                say(f"log write failed for {event.id}: {exc}", WHO)
                return JSONResponse({"error": f"log write failed: {exc}"}, status_code=503)
            counts.events += 1
            return JSONResponse({"id": event.id, "rows": rows}, status_code=200)
        except EventError as exc:
            counts.refused += 1
            return JSONResponse(exc.body(), status_code=400)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "pending": len(pending)})

    async def shutdown() -> None:
        for ce_id in list(pending):  # unpaired events are written as they are rather than dropped
            pair = pending.pop(ce_id)
            if pair.timer is not None:
                pair.timer.cancel()
            await _write_alone(pair)
        writer.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await shutdown()

    app = Starlette(routes=[Route("/", receive, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
                    lifespan=lifespan, exception_handlers={HTTPException: _http_exception})
    app.state.counts = counts
    return app


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    """No such route (404), a method the route does not take (405): a JSON body naming what is wrong, as the
    server answers them, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    allow = (exc.headers or {}).get("Allow")
    if exc.status_code == 404:
        error = EventError("path", f"no route {request.url.path[:200]} on this collector (POST / takes "
                                   "CloudEvents, GET /healthz answers its health)")
    elif exc.status_code == 405:
        error = EventError("method", f"{request.method[:20]} is not allowed on {request.url.path[:200]}"
                                     + (f" (allowed: {allow})" if allow else ""))
    else:
        error = EventError("request", str(exc.detail) or "refused")
    return JSONResponse(error.body(), status_code=exc.status_code, headers={"Allow": allow} if allow else None)


def serve_cloudevents(log: str, host: str, port: int, input_names: list[str] | None = None,
                      pair_timeout_s: float = PAIR_TIMEOUT_S) -> Counts:
    """Collect KServe's payload logger into the log `log` on host:port until SIGTERM/SIGINT; what it did. An
    address it cannot listen on (a port another process holds) is an MlopsError naming it, before the log opens."""
    check_listen("--http", host, port, takes_host=True)
    app = cloudevents_app(log, input_names, pair_timeout_s)
    c: Counts = app.state.counts
    c.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    say(f"collecting KServe CloudEvents on {c.url} into {log_name(log)}", WHO)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # uvicorn stops on SIGTERM, then raises it again to the handler it found: the default one would end the
        # process before the summary below. This one lets it return, as it does after Ctrl-C
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    except SystemExit:  # uvicorn did not start (it logged why, then exits 3): the port was taken since the check
        check_listen("--http", host, port, takes_host=True)  # says so in our words when it still is
        raise MlopsError(f"the collector could not start on {c.url} (uvicorn's line above says why)") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    say(f"stopped: {c.events} events taken, {c.refused} refused; {c.rows} rows landed in {log_name(log)}"
        + (f"; {c.duplicates} re-sent events held or written already, not taken again" if c.duplicates else "")
        + (f"; {c.lost} events lost to failed log writes" if c.lost else ""), WHO)
    return c
