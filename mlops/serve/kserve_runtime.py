"""The same bundle served by KServe's stock `kserve.ModelServer`: a `kserve.Model` over our `Predictor`.

Requests decode through the same `Predictor.feeds_from_rows` / `feeds_from_v2` as our own app
(mlops.serve.app), and answers carry the same outputs (`label` + `probabilities`, or `prediction`) with
the same names, shapes and datatypes, so a client cannot tell the runtimes apart on V1 and V2 inference.
What this runtime does not do: write the prediction log, take /v1/feedback, A/B or shadow routing, bearer
tokens, body size limits. Those stay with our app.

    python -m mlops.serve.kserve_runtime BUNDLE_DIR --port 8080

Importing this module imports neither kserve (built on first use: see `_runtime`) nor torch, lightning,
prefect or mlflow.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import re
import struct
import sys
from functools import cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

from mlops.core.predlog import prediction_ids
from mlops.package.bundle import read_bundle
from mlops.package.predictor import Predictor, RequestError, imputed_parameters, parse_json_body
from mlops.serve.app import inference_route
from mlops.serve.binary import HEADER_LENGTH
from mlops.serve.tensors import input_tensors, output_tensors
from mlops.serve.wire import (
    DEFAULT_BODY_TIMEOUT_S,
    MAX_REQUEST_ID_CHARS,
    RequestGuard,
    content_type_error,
    http_error,
    http_protocol,
)


def _import_kserve() -> ModuleType:
    """`kserve.model_server` runs argparse over sys.argv when imported, with prefix matching on: under
    `mlops serve BUNDLE --log x` it would take `--log` for its own `--log_config_file` and fail to start.
    Nothing of ours is meant for it, so it sees a bare argv."""
    if "kserve" in sys.modules:
        return sys.modules["kserve"]
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        return importlib.import_module("kserve")
    finally:
        sys.argv = saved


@cache
def _runtime() -> SimpleNamespace:
    """kserve and our classes over it, built on first use: importing kserve takes seconds and a large
    dependency tree (a Kubernetes client among them), which `mlops serve`'s default runtime never needs."""
    kserve = _import_kserve()



    class BundleRequestError(kserve.errors.InvalidInput):
        """A `RequestError` as kserve's InvalidInput: any stock ModelServer answers it 400 with the field in its
        message; the handler `serve_kserve` installs answers with the RequestError's own status and body."""

        def __init__(self, error: RequestError) -> None:
            super().__init__(f"{error.field}: {error.message}")
            self.error = error


    class BundleModel(kserve.Model):
        """One ONNX bundle (model.onnx + bundle.json, no pickle) behind KServe's V1 and V2 endpoints."""

        def __init__(self, bundle_dir: str | Path, name: str | None = None, max_batch: int = 1024,
                     version: str | None = None) -> None:
            self.bundle_dir = Path(bundle_dir)
            # the endpoint name is needed before load(): bundle.json alone gives it, without opening the model
            super().__init__(name or read_bundle(self.bundle_dir).name)
            self.max_batch = max_batch
            self.version = version
            self.predictor: Predictor | None = None

        def load(self) -> bool:
            self.predictor = Predictor(self.bundle_dir, max_batch=self.max_batch)
            self.ready = True
            return self.ready

        def _loaded(self) -> Predictor:
            if self.predictor is None:
                raise kserve.errors.ModelNotReady(self.name)
            return self.predictor

        # V2 model metadata: the same tensors our app lists (kserve adds its own name and an empty platform)
        def get_input_types(self) -> list[dict[str, Any]]:
            return input_tensors(self._loaded().meta)

        def get_output_types(self) -> list[dict[str, Any]]:
            return output_tensors(self._loaded().meta)

        def predict(self, payload: Any, headers: dict[str, str] | None = None,
                    response_headers: dict[str, str] | None = None) -> Any:
            # synchronous on purpose: kserve then calls it inline, as our app runs ONNX Runtime inline
            try:
                if isinstance(payload, kserve.InferRequest):
                    return self._infer_v2(payload)
                return self._predict_v1(payload)
            except RequestError as exc:
                raise BundleRequestError(exc) from None

        def _predict_v1(self, body: Any) -> dict[str, Any]:
            predictor = self._loaded()
            if isinstance(body, bytes | str):  # kserve passes the body through undecoded unless it is sent as JSON
                body = parse_json_body(body)
            if not isinstance(body, dict) or "instances" not in body:
                raise RequestError("instances", "the body must be an object with an 'instances' list")
            request_id = body.get("id")
            if request_id is not None and not isinstance(request_id, str):
                raise RequestError("id", "must be a string")
            _check_id(request_id)
            feeds = predictor.feeds_from_rows(body["instances"])
            prediction = predictor.predict(feeds)
            imputed = predictor.imputed(predictor.unseen(feeds), prediction.rows)
            return {"predictions": prediction.instances(), "ids": prediction_ids(request_id, prediction.rows)} | (
                {"imputed": imputed} if imputed else {})

        def _infer_v2(self, request: Any) -> Any:
            predictor = self._loaded()
            _check_id(request.id)
            images = frozenset(i.name for i in predictor.meta.inputs if i.image is not None)
            feeds = predictor.feeds_from_v2(v2_inputs(request, images))
            prediction = predictor.predict(feeds)
            ids = prediction_ids(request.id, prediction.rows)
            imputed = predictor.imputed(predictor.unseen(feeds), prediction.rows)
            parameters = {"prediction_ids": ",".join(ids)} | imputed_parameters(imputed)
            outputs = []
            for name, values in prediction.outputs.items():
                # our app calls every numeric output FP32: cast so kserve's dtype check agrees with the label
                data = values if values.dtype == object else values.astype(np.float32, copy=False)
                outputs.append(kserve.InferOutput(name=name, shape=list(data.shape),
                                                  datatype="BYTES" if data.dtype == object else "FP32", data=data))
            return kserve.InferResponse(response_id=request.id or ids[0], model_name=self.name, infer_outputs=outputs,
                                        model_version=self.version, parameters=parameters,
                                        use_binary_outputs=request.use_binary_outputs,
                                        requested_outputs=request.request_outputs)


    class _ModelServer(kserve.ModelServer):
        """The stock server, bound to the host asked for: its uvicorn.Config hard-codes 0.0.0.0, and start()
        builds the REST server just before calling this hook, so the host is set there."""

        def __init__(self, host: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._bind_host = host

        def setup_event_loop(self) -> None:
            rest = getattr(self, "_rest_server", None)
            if rest is None:  # a kserve whose start() no longer works this way: refuse to bind wider than asked
                raise RuntimeError("kserve.ModelServer changed: cannot bind the REST server to a host")
            rest.config.host = self._bind_host
            # a request uvicorn's parser refuses is our JSON 400; no WebSocket routes, so an upgrade request is
            # answered as plain HTTP rather than refused with a bodiless 403 (see mlops.serve.wire)
            rest.config.http = http_protocol()
            rest.config.ws = "none"
            # kserve adds its own handlers when the REST server starts, after this hook, and its InvalidInput one
            # would replace ours: ours go in again after its own
            add_kserve_handlers = rest._add_exception_handlers

            def add_handlers(app: Any) -> None:
                add_kserve_handlers(app)
                install_error_handlers(app)

            rest._add_exception_handlers = add_handlers
            super().setup_event_loop()

    return SimpleNamespace(kserve=kserve, BundleRequestError=BundleRequestError, BundleModel=BundleModel,
                           ModelServer=_ModelServer)


def __getattr__(name: str) -> Any:
    """`kserve_runtime.BundleModel`, `.BundleRequestError` and `.kserve` as if defined at import."""
    if name in ("kserve", "BundleModel", "BundleRequestError"):
        return getattr(_runtime(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def v2_inputs(request: Any, images: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """kserve's InferRequest as the JSON `inputs` list `Predictor.feeds_from_v2` takes. BYTES arrive as str
    from JSON but as bytes from the binary extension: decoded here, so both reach the same checks. The
    `images` inputs keep their bytes: through the binary extension an image is its encoded file, not text."""
    out = []
    for k, t in enumerate(request.inputs):
        data = t.data.tolist() if isinstance(t.data, np.ndarray) else t.data
        shape = list(t.shape) if isinstance(t.shape, list | tuple) else t.shape
        if t.name not in images:
            data = _text(data, f"inputs[{k}].data")
        out.append({"name": t.name, "shape": shape, "datatype": t.datatype, "data": data})
    return out


def _text(data: Any, where: str) -> Any:
    if isinstance(data, list):
        return [_text(v, where) for v in data]
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(where, "BYTES must be UTF-8 text") from None
    return data


# KServe's V2 (and V1) repository extension: POST /v2/repository/models/<name>/unload and .../load
REPOSITORY_ACTION = re.compile(r"^/v[12]/repository/models/[^/]+/(?:load|unload)/?$")


def _check_id(request_id: str | None) -> None:
    if request_id is not None and len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RequestError("id", f"longer than {MAX_REQUEST_ID_CHARS} characters")


def _refused_before_kserve(scope: dict[str, Any]) -> RequestError | None:
    """What kserve is not given:
    - its repository extension's `load` and `unload` (403): this server serves one bundle and takes no token,
      so any client could unload the model (every later request a 404 until a restart) or make kserve look for
      another; a new version is a rollout, not a call to a live server;
    - a POST to an inference route sent as text/plain, form data or multipart (415): kserve would read such a
      body as JSON anyway. JSON and application/octet-stream (the V2 binary tensor extension, binary CloudEvents)
      go through; a body without a content type is labelled JSON, as our app reads it (kserve would take a V2
      one for binary tensors, and refuse it for want of their header)."""
    if REPOSITORY_ACTION.match(scope["path"]):
        return RequestError("path", f"{scope['path'][:200]}: the model repository's load and unload are off under "
                                    "--runtime kserve (one bundle, no token): restart the server or roll out a new "
                                    "version instead", 403)
    if scope["method"] != "POST" or inference_route(scope["path"]) is None:
        return None
    content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
    if content_type is None:
        scope["headers"] = [*scope["headers"], (b"content-type", b"application/json")]
        return None
    return content_type_error(content_type, required=False, binary=True)


def _field(loc: tuple[Any, ...] | list[Any], kind: str) -> str:
    """A pydantic error location as our field names: ('body', 'inputs', 0, 'datatype') -> inputs[0].datatype."""
    parts = list(loc)
    if parts[:1] == ["body"]:
        parts = parts[1:]
    if parts[:1] in (["InferenceRequest"], ["bytes"]):  # the V2 body is Union[InferenceRequest, bytes]: a tag
        parts = parts[1:]
    if kind == "json_invalid" or not parts:
        return "body"
    field = ""
    for p in parts:
        field += f"[{p}]" if isinstance(p, int) else (f".{p}" if field else str(p))
    return field


def install_error_handlers(app: Any) -> None:
    """Answer bad requests as our app does: `{"error": "<field>: <why>", "field": ...}` with its status.

    Without this, kserve answers a BundleRequestError 400 (InvalidInput) and a malformed V2 body 422 with
    FastAPI's `detail` list; a body over the batch limit would be 400 instead of our 413; and a body kserve
    cannot parse itself 400 without a field (here the field is `body`)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def request_error(_: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, _runtime().BundleRequestError)
        return JSONResponse(exc.error.body(), status_code=exc.error.status)

    async def validation_error(_: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # a JSON object fails both union arms: the InferenceRequest arm says which field, the bytes arm nothing
        errors = sorted(exc.errors(), key=lambda e: "bytes" in e.get("loc", ())) or [{"loc": ("body",)}]
        first = errors[0]
        field = _field(first.get("loc", ()), first.get("type", ""))
        return JSONResponse({"error": f"{field}: {first.get('msg', 'invalid')}", "field": field}, status_code=400)

    async def invalid_input(_: Any, exc: Exception) -> JSONResponse:
        # what kserve refuses before our model sees the request: a V1 body orjson cannot parse (a lone
        # surrogate, say), V2 binary data that does not add up. A BundleRequestError has its own handler above
        return JSONResponse({"error": f"body: {exc}", "field": "body"}, status_code=400)

    async def binary_payload(request: Any, exc: Exception) -> JSONResponse:
        # kserve decodes the V2 binary extension itself (InferRequest.from_bytes, struct.unpack_from): what a
        # request carrying the extension's header raises there is its payload's fault (a length that is no number,
        # sizes past the body), which kserve's generic handler answered 500. Any other such error stays a 500
        if HEADER_LENGTH in request.headers:
            return JSONResponse({"error": f"body: the binary tensor data does not add up ({type(exc).__name__}: "
                                          f"{exc})", "field": "body"}, status_code=400)
        return await _runtime().kserve.errors.generic_exception_handler(request, exc)

    async def undecodable_bytes(request: Any, exc: Exception) -> JSONResponse:
        # the same decoding's BYTES element that is no UTF-8 raises kserve's InferenceError (a 500 there); its
        # message is matched so that a model's own InferenceError stays kserve's
        if HEADER_LENGTH in request.headers and str(exc).startswith("Failed to encode"):
            return JSONResponse({"error": f"body: {exc}", "field": "body"}, status_code=400)
        return await _runtime().kserve.errors.inference_error_handler(request, exc)

    async def http_exception(request: Any, exc: Exception) -> JSONResponse:
        # no route (404), a method the route does not take (405), a body FastAPI could not read (400)
        assert isinstance(exc, HTTPException)
        body, headers = http_error(exc.status_code, request.method, request.url.path, str(exc.detail),
                                   (exc.headers or {}).get("Allow"))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def model_not_found(_: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"model: {exc}", "field": "model"}, status_code=404)

    async def not_implemented(_: Any, exc: Exception) -> JSONResponse:
        # `:explain` without an explainer: kserve says 501, a server error; our app answers it 404 (an unknown verb)
        return JSONResponse({"error": f"path: {exc or 'not served here'} (use :predict)", "field": "path"},
                            status_code=404)

    app.add_exception_handler(_runtime().BundleRequestError, request_error)
    app.add_exception_handler(_runtime().kserve.errors.InvalidInput, invalid_input)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_exception)
    app.add_exception_handler(_runtime().kserve.errors.ModelNotFound, model_not_found)
    app.add_exception_handler(NotImplementedError, not_implemented)
    for error in (ValueError, TypeError, struct.error):
        app.add_exception_handler(error, binary_payload)
    app.add_exception_handler(_runtime().kserve.errors.InferenceError, undecodable_bytes)


def serve_kserve(bundle_dir: Path, host: str, port: int, name: str | None = None, *, max_batch: int = 1024,
                 version: str | None = None, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
    """Serve one bundle with `kserve.ModelServer` on http://host:port (blocks until SIGINT/SIGTERM).

    Set away from kserve's defaults, and why:
    - enable_grpc=False: REST only, like our app (no second port, 8081, to collide on);
    - workers=1: several uvicorn workers fork the loaded model per process; scale with replicas instead;
    - enable_latency_logging=False and the `kserve.trace` / `uvicorn.access` loggers at WARNING: by default
      it logs several lines per request, which halves throughput (our app logs no access lines either);
    - the host: kserve binds 0.0.0.0 whatever it is told; this binds `host` (loopback by default);
    - error handlers: bad requests answer as our app's do (see install_error_handlers), down to the HTTP layer:
      a body that never finishes (408), a content type that is not JSON (415), a malformed request (400)
      (see mlops.serve.wire).
    """
    runtime = _runtime()
    model = runtime.BundleModel(bundle_dir, name=name, max_batch=max_batch, version=version)
    model.load()
    server = runtime.ModelServer(host, http_port=port, workers=1, enable_grpc=False, enable_docs_url=False,
                          enable_latency_logging=False)
    for logger in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    app = runtime.kserve.model_server.app
    install_error_handlers(app)
    app.add_middleware(RequestGuard, timeout_s=body_timeout_s, check=_refused_before_kserve)
    print(f"mlops serve (kserve {importlib.metadata.version('kserve')}): model '{model.name}' "
          f"version {version or '-'} from {bundle_dir}", flush=True)
    print(f"mlops serve (kserve): http://{host}:{port}/v2/models/{model.name}/infer  (no prediction log)", flush=True)
    server.start([model])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops.serve.kserve_runtime",
                                     description="serve a bundle directory with KServe's ModelServer")
    parser.add_argument("bundle", type=Path, help="bundle directory (model.onnx + bundle.json)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", help="model name on the endpoint path (default: the bundle's)")
    parser.add_argument("--max-batch", type=int, default=1024, help="most rows one request may carry")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="S",
                        help="a request body must arrive in full within S seconds, else a 408 (default 30)")
    args = parser.parse_args(argv)
    serve_kserve(args.bundle, args.host, args.port, args.name, max_batch=args.max_batch,
                 body_timeout_s=args.body_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
