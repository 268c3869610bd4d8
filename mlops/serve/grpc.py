"""The V2 gRPC endpoint (`mlops serve --grpc-port`): KServe's `inference.GRPCInferenceService` (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer), what `tritonclient.grpc` and KServe's
`InferenceGRPCClient` call, served by `grpc.aio` on the HTTP server's event loop, for the HTTP server's lifetime.

A ModelInferRequest becomes the JSON `inputs` the V2 JSON path takes (tensor `contents`, or
`raw_input_contents` decoded as the binary extension's tensors, see binary.py) and goes through the same
`Server` handling: validation, the log, metrics (route `v2_grpc_infer`), shadow and A/B (the key header read
from the call's metadata), the bearer token (metadata `authorization`). A bad request is INVALID_ARGUMENT with
the JSON path's message (`<field>: <why>`); outputs go back as `raw_output_contents`, as tritonclient and
KServe's own server answer by default.

The messages are KServe's generated ones (grpc_predict_v2.proto), loaded without importing the `kserve`
package, whose `__init__` imports pandas and FastAPI (about 1.7 s): only this file of it is needed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import mlops
from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.package.predictor import RequestError
from mlops.serve import binary
from mlops.serve.app import Answer, Call, Server
from mlops.serve.tensors import input_tensors, output_tensors

GRPC_INFER = "v2_grpc_infer"  # the route label of gRPC inferences in the metrics
SERVICE = "inference.GRPCInferenceService"
PROTO_MODULE = "kserve.protocol.grpc.grpc_predict_v2_pb2"
STOP_GRACE_S = 5.0  # calls in progress when the server stops get this long to finish
# each V2 datatype's field of InferTensorContents (FP16 has none: it travels in raw_input_contents only)
CONTENTS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def v2_messages() -> ModuleType:
    """KServe's generated `grpc_predict_v2_pb2`, registered under its own name (a later `import kserve` finds it
    there rather than registering the proto twice, which protobuf refuses)."""
    if PROTO_MODULE in sys.modules:
        return sys.modules[PROTO_MODULE]
    spec = importlib.util.find_spec("kserve")
    if spec is None or not spec.submodule_search_locations:
        raise MlopsError("--grpc-port needs kserve's gRPC messages: pip install 'mlops[serve]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "protocol" / "grpc" / "grpc_predict_v2_pb2.py"
    if not path.is_file():  # another layout: the ordinary (slower) import
        return importlib.import_module(PROTO_MODULE)
    module_spec = importlib.util.spec_from_file_location(PROTO_MODULE, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[PROTO_MODULE] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PROTO_MODULE]
        raise
    return module


def request_body(request: Any, images: frozenset[str]) -> dict[str, Any]:
    """A ModelInferRequest as the V2 JSON body `Server.infer_body` takes, every output asked in binary (they
    become `raw_output_contents`)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError("raw_input_contents", f"{len(raw)} given for {len(request.inputs)} inputs: give one "
                           "per input, in the inputs' order")
    inputs = []
    for k, t in enumerate(request.inputs):
        shape = list(t.shape)
        where = f"inputs[{k}]"
        if raw:
            data = binary.tensor_data(t.datatype, shape, raw[k], where, t.name, t.name in images)
        else:
            data = _contents(t, where, t.name in images)
        inputs.append({"name": t.name, "shape": shape, "datatype": t.datatype, "data": data})
    body: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.id:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": o.name} for o in request.outputs]
    return body


def _contents(t: Any, where: str, keep_bytes: bool) -> list[Any]:
    field = CONTENTS.get(t.datatype)
    if field is None:
        raise RequestError(f"{where}.datatype", f"input '{t.name}': {t.datatype!r} has no typed contents: send it "
                           "in raw_input_contents" if t.datatype == "FP16" else
                           f"input '{t.name}': unsupported datatype {t.datatype!r}")
    values = list(getattr(t.contents, field))
    if t.datatype != "BYTES" or keep_bytes:
        return values
    out = []
    for i, v in enumerate(values):
        try:
            out.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            raise RequestError(f"{where}.data[{i}]", f"input '{t.name}': BYTES must be UTF-8 text") from None
    return out


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class InferenceServicer:
    """The service's handlers over one `Server`."""

    def __init__(self, server: Server, pb: ModuleType) -> None:
        self.server = server
        self.pb = pb

    def handler(self) -> Any:
        import grpc

        pb = self.pb
        methods = {"ServerLive": (self.server_live, pb.ServerLiveRequest),
                   "ServerReady": (self.server_ready, pb.ServerReadyRequest),
                   "ModelReady": (self.model_ready, pb.ModelReadyRequest),
                   "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
                   "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
                   "ModelInfer": (self.model_infer, pb.ModelInferRequest)}
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=message.FromString,
                                                      response_serializer=lambda m: m.SerializeToString())
            for name, (fn, message) in methods.items()})

    async def _answer(self, context: Any, name: str, version: str, route: str,
                      work: Callable[[Call, float], Any]) -> Answer:
        """`work` through `Server._handle` (token, metrics, errors); a refusal aborts the call with its message."""
        headers = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        call = Call(name, headers, _no_body, version=version or None)
        answer = await self.server._handle(call, route, work)
        if answer.status != 200:
            await context.abort(_status(answer.status), str(answer.body.get("error", "refused")))
        return answer

    async def server_live(self, request: Any, context: Any) -> Any:
        return self.pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return self.pb.ServerReadyResponse(ready=True)

    async def model_ready(self, request: Any, context: Any) -> Any:
        async def work(call: Call, started: float) -> Answer:
            self.server._served(call)
            return Answer(200, {})

        await self._answer(context, request.name, request.version, "ready", work)
        return self.pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        async def work(call: Call, started: float) -> Answer:
            return Answer(200, {})

        await self._answer(context, "", "", "metadata", work)
        return self.pb.ServerMetadataResponse(name="mlops", version=mlops.__version__, extensions=[])

    async def model_metadata(self, request: Any, context: Any) -> Any:
        async def work(call: Call, started: float) -> Answer:
            meta = self.server._served(call).predictor.meta
            versions = [call.version] if call.version is not None else self.server.served_versions()
            return Answer(200, {"name": meta.name, "versions": versions, "inputs": input_tensors(meta),
                                "outputs": output_tensors(meta)})

        body = (await self._answer(context, request.name, request.version, "metadata", work)).body
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=body["name"], versions=body["versions"], platform="onnxruntime_onnx",
            inputs=[tensor(**t) for t in body["inputs"]], outputs=[tensor(**t) for t in body["outputs"]])

    async def model_infer(self, request: Any, context: Any) -> Any:
        server = self.server

        async def work(call: Call, started: float) -> Answer:
            server._served(call)  # the model and the version the request names, before its tensors are read
            return await server.infer_body(call, request_body(request, server.images), started)

        answer = await self._answer(context, request.model_name, request.model_version, GRPC_INFER, work)
        body = answer.body
        response = self.pb.ModelInferResponse(model_name=body["model_name"], model_version=body["model_version"] or "",
                                              id=body["id"])
        for key, value in body["parameters"].items():
            response.parameters[key].string_param = value
        tail = memoryview(answer.tail)
        offset = 0
        for o in body["outputs"]:
            response.outputs.add(name=o["name"], datatype=o["datatype"], shape=o["shape"])
            size = o["parameters"]["binary_data_size"]
            response.raw_output_contents.append(bytes(tail[offset:offset + size]))
            offset += size
        if answer.after is not None:  # the shadow's copy: a queue hand-off that never blocks
            await answer.after()
        return response


def _status(http_status: int) -> Any:
    import grpc

    return {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
            503: grpc.StatusCode.UNAVAILABLE}.get(http_status, grpc.StatusCode.INVALID_ARGUMENT if http_status < 500
                                                   else grpc.StatusCode.INTERNAL)


def grpc_service(server: Server, host: str, port: int) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
    """The gRPC endpoint on `host:port` as one of `server.services`: started on the HTTP server's event loop
    when it starts, stopped (calls in progress finish) before its log closes. Its largest message is the HTTP
    body limit."""

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        import grpc

        started = time.perf_counter()
        endpoint = grpc.aio.server(options=[("grpc.max_receive_message_length", server.max_body),
                                            ("grpc.so_reuseport", 0)])
        endpoint.add_generic_rpc_handlers((InferenceServicer(server, v2_messages()).handler(),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = endpoint.add_insecure_port(address)
        except RuntimeError as exc:
            raise MlopsError(f"--grpc-port {port}: cannot listen on {address} (address already in use?): "
                             f"{exc}") from None
        if not bound:
            raise MlopsError(f"--grpc-port {port}: cannot listen on {address} (address already in use?)")
        await endpoint.start()
        say(f"gRPC {SERVICE} on {address} (started in {time.perf_counter() - started:.2f} s)", "mlops serve")
        try:
            yield
        finally:
            await endpoint.stop(STOP_GRACE_S)

    return run
