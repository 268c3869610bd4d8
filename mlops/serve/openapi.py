"""The OpenAPI document of `mlops serve` for one bundle: its real routes, with request schemas from the
bundle's input schema, so a client generator or a fuzzer (schemathesis) knows what to send and which
4xx answers to expect.

Every route answers a bad request with a 4xx JSON body `{"error": "<field>: <why>", "field": "<field>"}`
naming the field at fault; 5xx is never an expected answer. The document is OpenAPI 3.1 (JSON Schema
2020-12): nullable columns are `["number", "null"]`, and a V1 instance given as a list in schema order is
a `prefixItems` tuple. An image input is `{"b64": "<base64>"}` or the base64 text alone (in a V2 tensor: BYTES
of base64 texts, or UINT8 pixels [N, height, width, channels]); a text input is a string of at most its
`max_chars` (not blank, unless the model allows it). Both carry an example the model takes, so that a fuzzer
gets past validation.
"""

from __future__ import annotations

from typing import Any

from mlops import __version__
from mlops.package.bundle import BundleInput, BundleMeta
from mlops.package.predictor import EMBEDDING, FP32_EXACT_INT, FP32_MAX, NUMERIC_V2
from mlops.serve.wire import MAX_ID_CHARS, MAX_REQUEST_ID_CHARS

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
# the error statuses a route answers bad requests with, and what each means
CLIENT_ERRORS = {
    "400": "A request the model cannot take (bad JSON, wrong shape, type or value): the body names the field.",
    "401": "Missing or wrong bearer token (only when the server runs with MLOPS_SERVE_TOKEN).",
    "404": "No model of that name on this server, or an unknown verb; for feedback, an id this server never "
           "predicted (named in the error).",
    "408": "The request body did not arrive in full within the server's body timeout (`--body-timeout`).",
    "409": "The request is valid but this server cannot do it (e.g. traffic for a challenger it does not have).",
    "413": "Body over the size limit, or a batch of more rows than the server's max batch.",
    "415": "A body that is not JSON: inference takes application/json (or no content type; V2 infer also "
           "application/octet-stream, the binary tensor extension), feedback and traffic application/json only.",
    "422": "Reserved for a well-formed request the model refuses; same error body.",
}
# what the document shows for an image input (a 1x1 grey PNG: the server resizes it) and a text input
EXAMPLE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR42mNoAAAAggCB2kUIOwAAAABJRU5ErkJggg=="
EXAMPLE_TEXT = "a short example text"
# the label of the variant that answered a prediction (A/B testing: see mlops/serve/routing.py)
VARIANTS = ["champion", "challenger"]


def openapi_spec(meta: BundleMeta, max_batch: int, versions: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server over the bundle `meta` that takes at most `max_batch` rows and
    serves `versions` (the champion's, and the A/B challenger's: what the versioned routes accept)."""

    name = meta.name
    columns = [i.name for i in meta.inputs]
    model_param = {"name": "name", "in": "path", "required": True, "description": "The model's name.",
                   "schema": {"type": "string", "enum": [name]}, "example": name}
    # not an enum: any other version is a documented 404 that names it
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "A version this server serves (see GET /v2/models/{name}); another one is a 404."
                     } | ({"example": versions[0]} if versions else {})
    auth = [{}, {"bearer": []}]  # a bearer token only when the server was started with MLOPS_SERVE_TOKEN

    def op(operation_id: str, summary: str, ok: dict[str, Any], errors: tuple[str, ...] = (),
           body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
           secured: bool = True, tags: tuple[str, ...] = ()) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": ok}
        for status in (*errors, *(("401",) if secured else ())):
            responses[status] = {"$ref": f"#/components/responses/{_ERROR_NAMES[status]}"}
        if secured:  # anything unexpected is a 500 with an error id (a bug: the fuzz tests require none)
            responses["500"] = {"$ref": "#/components/responses/ServerError"}
        out: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": list(tags),
                               "responses": responses}
        if params:
            out["parameters"] = params
        if body is not None:
            out["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        if secured:
            out["security"] = auth
        return out

    def ok_json(schema: dict[str, Any], description: str = "OK",
                headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
        if headers:
            out["headers"] = headers
        return out

    variant_header = {"X-Model-Variant": {"description": "The variant that answered (A/B testing).",
                                          "schema": {"type": "string", "enum": VARIANTS}}}
    body_errors = ("400", "404", "408", "413", "415", "422")
    version_of = {"type": ["object", "null"], "properties": {"version": {"type": ["string", "null"]}}}
    traffic_state = _obj({"name": {"type": "string"}, "champion": version_of, "challenger": version_of,
                          "percent": {"type": "number"}})
    load_result = _obj({"name": {"type": "string"}, "load": {"type": "boolean"},
                        "version": {"type": ["string", "null"]}, "changes": {"type": "array"},
                        "watching": {"type": "array", "items": {"type": "string"}}, "traffic": traffic_state})
    load_op = op("v2RepositoryLoad", "Re-resolve the NAME@ALIAS references this server follows, and swap in "
                 "versions whose alias moved (no body needed)", ok_json(load_result), ("404",),
                 params=[model_param], tags=("v2",))
    load_op["responses"]["409"] = ok_json(load_result, "A moved alias pointed at a version that could not be "
                                          "loaded: the running version keeps serving")
    traffic_op = op(
        "mlopsTraffic", "Set the share of request keys the A/B challenger answers (a live canary step)",
        ok_json(traffic_state), ("400", "404", "408", "409", "413", "415", "422"),
        body=_obj({"percent": {"type": "number", "minimum": 0, "maximum": 100}}), params=[model_param],
        tags=("mlops",))
    paths: dict[str, Any] = {
        # --- V1 -------------------------------------------------------------------------------------
        "/v1/models/{name}": {"get": op(
            "v1ModelStatus", "V1 model status", ok_json(_ref("ModelReady")), ("404",), params=[model_param],
            tags=("v1",))},
        "/v1/models/{name}:predict": {"post": op(
            "v1Predict", "V1 predict: one prediction per instance", ok_json(_ref("V1Response"), headers=variant_header),
            body_errors, body=_ref("V1Request"), params=[model_param], tags=("v1",))},
        "/v1/feedback": {"post": op(
            "v1Feedback", "Ground truth for earlier predictions, by prediction id", ok_json(_ref("FeedbackResponse")),
            ("400", "404", "408", "413", "415", "422"), body=_ref("FeedbackRequest"), tags=("v1",))},
        # --- V2 (Open Inference Protocol) -----------------------------------------------------------
        "/v2/health/live": {"get": op("v2Live", "Liveness", ok_json(_obj({"live": {"type": "boolean"}})),
                                      secured=False, tags=("v2",))},
        "/v2/health/ready": {"get": op("v2Ready", "Readiness", ok_json(_obj({"ready": {"type": "boolean"}})),
                                       secured=False, tags=("v2",))},
        "/v2": {"get": op("v2ServerMetadata", "Server metadata", ok_json(_obj({
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}})), tags=("v2",))},
        "/v2/models/{name}": {"get": op(
            "v2ModelMetadata", "Model metadata: inputs and outputs", ok_json(_ref("ModelMetadata")), ("404",),
            params=[model_param], tags=("v2",))},
        "/v2/models/{name}/ready": {"get": op(
            "v2ModelReady", "Model readiness", ok_json(_ref("ModelReady")), ("404",), params=[model_param],
            tags=("v2",))},
        "/v2/models/{name}/infer": {"post": op(
            "v2Infer", "V2 inference: one tensor per input column, or one [N, columns] tensor",
            ok_json(_ref("V2Response"), headers=variant_header), body_errors, body=_ref("V2Request"),
            params=[model_param], tags=("v2",))},
        "/v2/models/{name}/versions/{version}": {"get": op(
            "v2ModelVersionMetadata", "Metadata of one served version", ok_json(_ref("ModelMetadata")), ("404",),
            params=[model_param, version_param], tags=("v2",))},
        "/v2/models/{name}/versions/{version}/ready": {"get": op(
            "v2ModelVersionReady", "Readiness of one served version", ok_json(_ref("ModelReady")), ("404",),
            params=[model_param, version_param], tags=("v2",))},
        "/v2/models/{name}/versions/{version}/infer": {"post": op(
            "v2VersionInfer", "V2 inference by one served version (the A/B split does not apply)",
            ok_json(_ref("V2Response"), headers=variant_header), body_errors, body=_ref("V2Request"),
            params=[model_param, version_param], tags=("v2",))},
        # --- V2 model repository extension: follow a moved alias now (mlops/serve/reload.py) ---------------
        "/v2/repository/models/{name}/load": {"post": load_op},
        # --- mlops's own control routes ------------------------------------------------------------
        "/mlops/v1/models/{name}/traffic": {"post": traffic_op},
        "/v2/repository/models/{name}/traffic": {"post": traffic_op | {
            "operationId": "v2RepositoryTraffic", "deprecated": True,
            "summary": "Deprecated path of POST /mlops/v1/models/{name}/traffic (answers the same, with a "
                       "Deprecation header); goes away in the next release"}},
        # --- operations -----------------------------------------------------------------------------
        "/metrics": {"get": op("metrics", "Prometheus metrics", {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}}}, tags=("ops",))},
        "/openapi.json": {"get": op("openapi", "This document", ok_json({"type": "object"}), tags=("ops",))},
    }
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        _binary_tensor_data(paths[path]["post"])
    responses = {_ERROR_NAMES[status]: {"description": text, "content": {JSON: {"schema": ERROR_REF}}}
                 for status, text in CLIENT_ERRORS.items()}
    responses["ServerError"] = {"description": "A bug or a broken model, reported with an error id; never expected.",
                                "content": {JSON: {"schema": _obj({"error": {"type": "string"},
                                                                   "field": {"type": "null"}})}}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": f"mlops serve: {name}", "version": __version__,
                 "description": (f"KServe V1 and V2 (Open Inference Protocol) REST for model '{name}' "
                                 f"(task {meta.task}; inputs in schema order: {', '.join(columns)}). At most "
                                 f"{max_batch} rows a request. Bad requests get a 4xx JSON body naming the field "
                                 "at fault.")},
        "tags": [{"name": "v1", "description": "KServe V1 protocol"},
                 {"name": "v2", "description": "KServe V2 / Open Inference Protocol"},
                 {"name": "mlops", "description": "mlops's own control routes (not KServe's)"},
                 {"name": "ops", "description": "Monitoring and discovery"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(meta, max_batch),
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "The MLOPS_SERVE_TOKEN the server was started with."}},
        },
    }


BINARY = "application/octet-stream"
BINARY_EXTENSION = (
    "The V2 binary tensor data extension (what tritonclient sends by default): with the header "
    "Inference-Header-Content-Length, the body is a V2 JSON request of that many bytes, then the raw tensors "
    "(little-endian, row-major) of the inputs whose parameters give `binary_data_size`, in order; a BYTES "
    "element is its length (4 bytes, little-endian) then its bytes (an image input's: the encoded file). "
    "`parameters.binary_data_output: true`, or an output's `parameters.binary_data: true`, asks for binary "
    "outputs: the answer is then application/octet-stream, its JSON part as long as its own "
    "Inference-Header-Content-Length header says, each binary output's bytes after it.")


def _binary_tensor_data(operation: dict[str, Any]) -> None:
    """A V2 infer operation that also takes and answers the binary tensor data extension (mlops/serve/binary.py)."""
    raw = {"schema": {"type": "string", "format": "binary"}}
    operation["requestBody"]["description"] = BINARY_EXTENSION
    operation["requestBody"]["content"][BINARY] = raw
    operation.setdefault("parameters", []).append({
        "name": "Inference-Header-Content-Length", "in": "header", "required": False,
        "description": "The byte length of the JSON header at the start of a binary tensor data body.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"}})
    ok = operation["responses"]["200"]
    ok["content"][BINARY] = raw
    ok["headers"] = ok.get("headers", {}) | {"Inference-Header-Content-Length": {
        "description": "With binary outputs: the byte length of the answer's JSON part.",
        "schema": {"type": "string"}}}


_ERROR_NAMES = {"400": "BadRequest", "401": "Unauthorized", "404": "NotFound", "408": "BodyTimeout", "409": "Conflict",
                "413": "TooLarge", "415": "NotJson", "422": "Unprocessable"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, **extra}


def image_string(column: BundleInput) -> dict[str, Any]:
    """An encoded image as base64 text (how a V2 BYTES tensor carries it)."""
    spec = column.image
    assert spec is not None
    return {"type": "string", "contentEncoding": "base64", "examples": [EXAMPLE_PNG],
            "description": (f"'{column.name}': base64 of an encoded image (PNG, JPEG, ...) of at most "
                            f"{spec.max_bytes:,} bytes and {spec.max_pixels:,} pixels (413 above), converted to "
                            f"{spec.channels} channel{'s' if spec.channels > 1 else ''} and resized to "
                            f"{spec.size[1]}x{spec.size[0]}.")}


def text_schema(column: BundleInput) -> dict[str, Any]:
    spec = column.text
    assert spec is not None
    description = (f"'{column.name}': a text of at most {spec.max_chars:,} characters (413 above)"
                   f"{'' if spec.allow_empty else ', not blank'}; the model reads its first {spec.max_length} tokens.")
    out: dict[str, Any] = {"type": "string", "maxLength": spec.max_chars,
                           "examples": [EXAMPLE_TEXT[:spec.max_chars]], "description": description}
    if not spec.allow_empty:
        out |= {"minLength": 1, "pattern": r"\S"}  # a blank text is refused: at least one non-space character
    return out


def column_schema(column: BundleInput) -> dict[str, Any]:
    """One raw value of a column, as V1 instances and V2 tensors carry it; null means missing (imputed). An
    image is `{"b64": "..."}` (KServe's convention for binary data in JSON) or the base64 text alone; neither
    an image nor a text may be missing."""
    if column.image is not None:
        text = image_string(column)
        return {"anyOf": [_obj({"b64": text}, additionalProperties=False, examples=[{"b64": EXAMPLE_PNG}]), text],
                "description": text["description"]}
    if column.text is not None:
        return text_schema(column)
    if column.dtype == "string":
        return {"type": ["string", "null"], "description": f"'{column.name}': a category; null when missing."}
    return {"type": ["number", "null"], "minimum": -FP32_MAX, "maximum": FP32_MAX,
            "description": (f"'{column.name}': a finite number that FP32 holds (integers within ±{FP32_EXACT_INT}); "
                            "null when missing. NaN and Infinity are not JSON and are refused.")}


def _schemas(meta: BundleMeta, max_batch: int) -> dict[str, Any]:
    columns = [i.name for i in meta.inputs]
    values = {i.name: column_schema(i) for i in meta.inputs}
    rows = {"type": "integer", "minimum": 1, "maximum": max_batch}

    instance = {"anyOf": [
        {"type": "object", "title": "named columns", "properties": values, "required": columns,
         "additionalProperties": False},
        {"type": "array", "title": "values in schema order", "prefixItems": [values[c] for c in columns],
         "items": False, "minItems": len(columns), "maxItems": len(columns)},
    ]}

    def tensor(column: BundleInput) -> dict[str, Any]:
        if column.image is not None:
            return {"anyOf": [bytes_tensor(column, image_string(column)), pixel_tensor(column)]}
        if column.text is not None:
            return bytes_tensor(column, values[column.name])
        datatype = ["BYTES"] if column.dtype == "string" else sorted(NUMERIC_V2)
        return _obj({
            "name": {"const": column.name},
            "shape": {"type": "array", "prefixItems": [rows, {"const": 1}], "items": False, "minItems": 1,
                      "maxItems": 2, "description": "[N] or [N, 1]; N data values."},
            "datatype": {"type": "string", "enum": datatype},
            "data": {"type": "array", "items": values[column.name], "minItems": 1, "maxItems": max_batch},
            "parameters": {"type": "object"},
        }, required=["name", "shape", "datatype", "data"], title=f"column {column.name}")

    def bytes_tensor(column: BundleInput, value: dict[str, Any]) -> dict[str, Any]:
        return _obj({
            "name": {"const": column.name},
            "shape": {"type": "array", "prefixItems": [rows, {"const": 1}], "items": False, "minItems": 1,
                      "maxItems": 2, "description": "[N] or [N, 1]; N data values."},
            "datatype": {"type": "string", "const": "BYTES"},
            "data": {"type": "array", "items": value, "minItems": 1, "maxItems": max_batch},
            "parameters": {"type": "object"},
        }, required=["name", "shape", "datatype", "data"], title=f"column {column.name}")

    def pixel_tensor(column: BundleInput) -> dict[str, Any]:
        spec = column.image
        assert spec is not None
        side = {"type": "integer", "minimum": 1}
        return _obj({
            "name": {"const": column.name},
            "shape": {"type": "array", "prefixItems": [rows, side, side, {"const": spec.channels}], "items": False,
                      "minItems": 3, "maxItems": 4,
                      "description": "[N, height, width] or [N, height, width, channels]: decoded images of any "
                                     f"size (at most {spec.max_pixels:,} pixels), resized to {spec.size[1]}x"
                                     f"{spec.size[0]}."},
            "datatype": {"type": "string", "const": "UINT8"},
            "data": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 255},
                     "description": "The pixels, row-major (flat, or nested as the shape)."},
            "parameters": {"type": "object"},
        }, required=["name", "shape", "datatype", "data"], title=f"column {column.name} as pixels")

    # a single tensor carries every column as JSON values of one datatype: an image as its base64 text
    row_values = [image_string(i) if i.image is not None else values[i.name] for i in meta.inputs]
    single = _obj({
        "name": {"type": "string", "not": {"enum": columns}, "description": "Any name but a column's."},
        "shape": {"type": "array", "prefixItems": [rows, {"const": len(columns)}], "items": False,
                  "minItems": 2, "maxItems": 2},
        "datatype": {"type": "string", "enum": ["BYTES", *sorted(NUMERIC_V2)],
                     "description": "BYTES when the columns mix numbers and strings."},
        "data": {"type": "array", "minItems": 1, "maxItems": max_batch, "items": {
            "type": "array", "prefixItems": row_values, "items": False,
            "minItems": len(columns), "maxItems": len(columns)}, "description": f"rows in schema order {columns}"},
        "parameters": {"type": "object"},
    }, required=["name", "shape", "datatype", "data"], title="one [N, columns] tensor")

    answered = [o for o in meta.outputs if o["name"] != EMBEDDING]  # the embedding is never in an answer
    prediction_props: dict[str, Any] = {}
    for o in answered:
        scalar: dict[str, Any] = {"type": "string"} if o.get("dtype") == "string" else {"type": "number"}
        shape = o.get("shape") or []
        if len(shape) >= 2:
            width = shape[1] if isinstance(shape[1], int) else None
            scalar = {"type": "array", "items": scalar, **({"minItems": width, "maxItems": width} if width else {})}
        prediction_props[o["name"]] = scalar
    output_names = [o["name"] for o in answered]
    tensor_meta = _obj({"name": {"type": "string"}, "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}}})

    feedback_item = {
        "type": "object", "title": "feedback",
        "properties": {"id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS,
                              "description": "A prediction id the server returned (another id is a 404)."},
                       "label": {"type": ["string", "integer"], "description": "The true class (classification)."},
                       "value": {"type": "number", "description": "The true value (regression)."},
                       "thumbs": {"enum": ["up", "down", True, False],
                                  "description": "Whether the served answer was right."}},
        "additionalProperties": {"description": "An outcome field (e.g. converted), read as the recipe's "
                                                "improve.feedback.outcome declares."},
        "required": ["id"], "minProperties": 2,
    }
    return {
        "Error": {"type": "object", "required": ["error", "field"],
                  "properties": {"error": {"type": "string", "description": "'<field>: <why>'"},
                                 "field": {"type": "string", "description": "The field at fault, e.g. "
                                           "'instances[0].age', 'inputs[1].shape', 'body', 'model'."}}},
        "ModelReady": _obj({"name": {"type": "string", "const": meta.name}, "ready": {"type": "boolean"}}),
        "V1Request": _obj({
            "instances": {"type": "array", "items": instance, "minItems": 1, "maxItems": max_batch,
                          "description": f"Rows: objects of named columns, or lists in schema order {columns}."},
            "id": {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS,
                   "description": "Request id: prediction ids are it, or it-0, it-1, ..."},
        }, required=["instances"]),
        "V1Response": _obj({
            "predictions": {"type": "array", "items": _obj(prediction_props)},
            "ids": {"type": "array", "items": {"type": "string"}},
            "imputed": {"type": "array", "items": {"type": "array", "items": {"type": "string"}},
                        "description": "Per row, the columns whose category was never seen in training and was "
                                       "encoded as missing (data.categories.unseen: impute); only when some were"},
        }, required=["predictions", "ids"]),
        "V2Request": _obj({
            "id": {"type": "string", "maxLength": MAX_REQUEST_ID_CHARS},
            "parameters": {"type": "object"},
            "inputs": {"anyOf": [
                {"type": "array", "title": "one tensor per column", "items": {"anyOf": [tensor(i) for i in meta.inputs]},
                 "minItems": len(columns), "maxItems": len(columns)},
                {"type": "array", "title": "one tensor of all columns", "items": single, "minItems": 1, "maxItems": 1},
            ]},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string", "enum": output_names}}}},
        }, required=["inputs"]),
        "V2Response": _obj({
            "model_name": {"type": "string"},
            "model_version": {"type": ["string", "null"]},
            "id": {"type": "string"},
            "parameters": _obj({"prediction_ids": {"type": "string"}, "imputed": {
                "type": "string", "description": "input[row] of each category never seen in training and encoded "
                                                 "as missing (data.categories.unseen: impute); only when some were"}},
                               required=["prediction_ids"]),
            "outputs": {"type": "array", "items": _obj({
                "name": {"type": "string", "enum": output_names},
                "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "data": {"type": "array", "items": {"type": ["string", "number"]}},
            })},
        }),
        "ModelMetadata": _obj({
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": tensor_meta},
            "outputs": {"type": "array", "items": tensor_meta},
        }),
        "FeedbackRequest": {"anyOf": [feedback_item, {"type": "array", "items": feedback_item}]},
        "FeedbackResponse": _obj({"recorded": {"type": "integer", "minimum": 0}}),
    }
