"""Fuzz `mlops serve` from its OpenAPI document: schemathesis against a real server on loopback,
hypothesis-generated JSON and raw bytes against every POST route (live and in-process), and the HTTP layer at
volume (over 10,000 requests on raw keep-alive sockets, to both runtimes: ours and `--runtime kserve`): bad
methods, unknown paths, malformed HTTP, truncated and stalled bodies, wrong content types, huge headers. However
wrong a request is, the answer is a 4xx JSON body naming the field at fault, never a 5xx."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mlops.core.predlog import PredictionLog
from mlops.package.bundle import read_bundle
from mlops.package.predictor import NUMERIC_V2, Predictor
from mlops.serve.app import Server
from mlops.serve.openapi import openapi_spec
from tests.media_fixtures import IMAGE as MEDIA_IMAGE
from tests.media_fixtures import MAX_CHARS as MEDIA_MAX_CHARS
from tests.media_fixtures import NAME as MEDIA_MODEL
from tests.media_fixtures import NUMBER as MEDIA_NUMBER
from tests.media_fixtures import TEXT as MEDIA_TEXT
from tests.media_fixtures import build_media_bundle, image_png, instance
from tests.net import LiveServer as Live
from tests.net import serve_bundle
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

MODEL = "toy"
COLUMNS = ["age", "income", "city"]
MAX_BATCH = 16
SEED = 20240601
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"
FEEDBACK = "/v1/feedback"
POST_ROUTES = {"v1": V1, "v2": V2, "feedback": FEEDBACK}
START_TIMEOUT = 90  # a cold `python -m mlops.cli` import on a busy 2-core machine takes seconds
BODY_TIMEOUT_S = 2  # the live servers' --body-timeout: the stalled bodies of the HTTP-layer fuzz wait this long
FEEDBACK_IDS = [f"fb-{i}" for i in range(4)]  # predicted before feedback is fuzzed: feedback for them is a 200


def with_openapi(server: Server) -> Starlette:
    """The app as `mlops serve` runs it, GET /openapi.json included."""
    return server.app()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("fuzz-bundle") / "bundle", name=MODEL)


@pytest.fixture(scope="module")
def spec(bundle: Path) -> dict[str, Any]:
    return openapi_spec(read_bundle(bundle), MAX_BATCH)


# --- the document itself --------------------------------------------------------------------------------

def test_document_is_valid_openapi_31_and_covers_every_route(bundle: Path, spec: dict[str, Any]) -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    jsonschema.Draft202012Validator(OPENAPI_31).validate(spec)
    for name, schema in spec["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise AssertionError(f"components.schemas.{name}: {exc.message}") from None
    json.dumps(spec, allow_nan=False)  # plain JSON

    # every route of the app is documented with its methods, and nothing else is
    server = Server(Predictor(bundle, max_batch=MAX_BATCH), None)
    served = set()
    for route in with_openapi(server).routes:
        path = route.path.replace("{name_verb:path}", "{name}:predict")
        served |= {(path, m.lower()) for m in route.methods or () if m != "HEAD"}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == documented

    # every route that takes a request can answer it with the documented error body
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "200" in op["responses"], (method, path)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"]), (method, path)


def _validator(spec: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


GOOD_ROW_EXAMPLE = {"age": 41.0, "income": 50, "city": "a"}
GOOD_V1 = [{"instances": [{"age": 41.0, "income": 50, "city": "a"}, {"age": None, "income": 1.5, "city": None}]},
           {"instances": [[41.0, 50.0, "a"]], "id": "req-1"}]
GOOD_V2 = [
    {"inputs": [{"name": "age", "shape": [2], "datatype": "FP64", "data": [41.0, None]},
                {"name": "income", "shape": [2, 1], "datatype": "INT64", "data": [50, 60]},
                {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["a", None]}], "id": "r"},
    {"inputs": [{"name": "all", "shape": [1, 3], "datatype": "BYTES", "data": [[41.0, 50.0, "a"]]}]},
]
BAD_V1 = [{}, {"instances": []}, {"instances": [{"age": 1, "income": 2}]}, {"instances": [{"age": "x", "income": 1,
          "city": "a"}]}, {"instances": [[1.0, 2.0]]}, {"instances": [{"age": 1, "income": 2, "city": "a"}] * 17}]


def test_request_schemas_match_what_the_server_takes(bundle: Path, spec: dict[str, Any]) -> None:
    """The documented request schemas accept the bodies the server answers 200, and reject typical 400s."""
    client = TestClient(Server(Predictor(bundle, max_batch=MAX_BATCH), None).app())
    for path, name, good in ((V1, "V1Request", GOOD_V1), (V2, "V2Request", GOOD_V2)):
        validator = _validator(spec, name)
        for body in good:
            validator.validate(body)
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            _validator(spec, name.replace("Request", "Response")).validate(response.json())
    for body in BAD_V1:
        assert not _validator(spec, "V1Request").is_valid(body), body
        assert client.post(V1, json=body).status_code in (400, 413)
    _validator(spec, "FeedbackRequest").validate([{"id": "a", "label": "yes"}, {"id": "b", "value": 2.5}])
    assert not _validator(spec, "FeedbackRequest").is_valid({"id": "a"})
    _validator(spec, "ModelMetadata").validate(client.get(f"/v2/models/{MODEL}").json())


def test_openapi_route_serves_the_document_in_process(bundle: Path, spec: dict[str, Any]) -> None:
    import schemathesis

    app = with_openapi(Server(Predictor(bundle, max_batch=MAX_BATCH), None))
    with TestClient(app) as client:
        response = client.get("/openapi.json")
        assert response.status_code == 200
        assert response.json() == spec
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = {op.ok().label for op in loaded.get_all_operations()}
    assert "POST /v1/models/{name}:predict" in operations and "POST /v2/models/{name}/infer" in operations


# --- a real server ----------------------------------------------------------------------------------------

def _get(port: int, path: str, timeout: float = 2) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _serve(bundle: Path, tmp: Path, runtime: str = "mlops", feedback_ids: bool = False) -> Iterator[Live]:
    """`mlops serve BUNDLE` (or `--runtime kserve`) in a subprocess on a free port; killed however the module
    ends. With `feedback_ids` it has predicted FEEDBACK_IDS once it is yielded."""
    servers = serve_bundle(bundle, tmp, runtime, ("--max-batch", str(MAX_BATCH), "--body-timeout",
                                                  str(BODY_TIMEOUT_S)), START_TIMEOUT)
    server = next(servers)
    try:
        post = _live_post(server.port)
        for pid in FEEDBACK_IDS if feedback_ids else []:
            assert post(V1, json.dumps({"id": pid, "instances": [GOOD_ROW_EXAMPLE]}).encode())[0] == 200
        yield server
    finally:
        servers.close()  # stops the server


@pytest.fixture(scope="module")
def live(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _serve(bundle, tmp_path_factory.mktemp("fuzz-live"), feedback_ids=True)


def _check_error_body(status: int, raw: bytes, what: str) -> None:
    try:
        body = json.loads(raw)
    except ValueError:
        raise AssertionError(f"{what}: {status} with a body that is not JSON: {raw[:200]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("field"), str) and body["field"], f"{what}: {body}"
    assert isinstance(body.get("error"), str) and body["error"].startswith(f"{body['field']}:"), f"{what}: {body}"


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error(live: Live, spec: dict[str, Any], tmp_path: Path) -> None:
    """`st run` over every documented operation (examples, coverage, fuzzing and stateful phases; positive
    and negative data) with a fixed seed: no 5xx, every response as documented, 4xx bodies name a field."""
    status, raw = _get(live.port, "/openapi.json")
    if status == 200:  # the app serves it: fuzz from there, and it is the document of this bundle
        assert json.loads(raw) == spec
        location = f"{live.base}/openapi.json"
        exclude: list[str] = []
    else:  # not wired into mlops/serve/app.py yet: the same document from a file
        location = str(tmp_path / "openapi.json")
        Path(location).write_text(json.dumps(spec))
        exclude = ["--exclude-path", "/openapi.json"]
    har = tmp_path / "run.har"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", location, "--url", live.base, "--seed", str(SEED),
         "--max-examples", "60", "--workers", "1", "--generation-database", "none", "--no-color",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         "--request-timeout", "10", "--report", "har", "--report-har-path", str(har), *exclude],
        cwd=tmp_path, capture_output=True, text=True, timeout=200)
    elapsed = time.monotonic() - started
    report = f"st run took {elapsed:.0f} s, exit {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"

    entries = json.loads(har.read_text())["log"]["entries"]
    statuses: Counter[tuple[str, str, int]] = Counter()
    server_errors = []
    for entry in entries:
        method, url = entry["request"]["method"], urlsplit(entry["request"]["url"]).path
        status, content = entry["response"]["status"], entry["response"]["content"]
        statuses[(method, url, status)] += 1
        if status >= 500:
            server_errors.append(f"{status} {method} {url} {entry['request'].get('postData', {}).get('text', '')[:300]}"
                                 f" -> {content.get('text', '')[:200]}")
        elif 400 <= status < 500 and "json" in content.get("mimeType", ""):
            _check_error_body(status, content.get("text", "").encode(), f"{method} {url}")
    assert not server_errors, f"{len(server_errors)} responses with 5xx, e.g.\n" + "\n".join(server_errors[:5]) + \
        f"\nserver output:\n{live.tail()}"
    assert proc.returncode == 0, report
    assert len(entries) >= 500, report
    for route in (V1, V2):  # the fuzzer got past the validation and into it
        assert statuses[("POST", route, 200)] and statuses[("POST", route, 400)], (route, statuses)
    # feedback is a 200 only for an id this server predicted, which a fuzzer of the document cannot know (the
    # hypothesis fuzz below sends known ones): here it gets past the checks of the body to the id's look-up
    assert statuses[("POST", FEEDBACK, 400)] and statuses[("POST", FEEDBACK, 404)], statuses


# --- hypothesis: arbitrary JSON, near-valid bodies and raw bytes for every POST route ---------------------

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(["a", "b", "c", "", "NaN", "age", "city"]))
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
VALUE = SCALARS | st.integers(-(2**25), 2**25) | st.floats(-1e39, 1e39) | JSON_VALUES
NAMED_ROW = st.fixed_dictionaries({c: VALUE for c in COLUMNS}, optional={"zip": VALUE})
INSTANCE = NAMED_ROW | st.dictionaries(st.sampled_from([*COLUMNS, "zip"]), VALUE, max_size=4) \
    | st.lists(VALUE, min_size=2, max_size=4) | JSON_VALUES
TENSOR_KEYS = {
    "name": st.sampled_from([*COLUMNS, "all"]) | JSON_VALUES,
    "shape": st.lists(st.integers(-2, 20), max_size=3) | st.lists(JSON_VALUES, max_size=2) | JSON_VALUES,
    "datatype": st.sampled_from([*sorted(NUMERIC_V2), "BYTES", "BOOL", "STR"]) | JSON_VALUES,
    "data": st.lists(VALUE | st.lists(VALUE, max_size=3), max_size=20) | JSON_VALUES,
}
TENSOR = st.fixed_dictionaries(TENSOR_KEYS, optional={"parameters": JSON_VALUES}) \
    | st.fixed_dictionaries({}, optional=TENSOR_KEYS) | JSON_VALUES
# values the model takes, column by column: near-valid bodies built from these get past validation
GOOD = {"age": st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-(2**24), 2**24),
        "income": st.none() | st.floats(-1e6, 1e6) | st.integers(-1000, 1000),
        "city": st.none() | st.sampled_from(["a", "b", "c"]) | st.text(max_size=6)}
GOOD_ROW = st.fixed_dictionaries(GOOD) | st.tuples(*GOOD.values()).map(list)


@st.composite
def good_tensors(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = draw(st.integers(1, MAX_BATCH + 1))  # one over the limit now and then: a 413
    tensors = []
    for name in draw(st.permutations(COLUMNS)):
        datatype = draw(st.just("BYTES") if name == "city" else st.sampled_from(sorted(NUMERIC_V2)))
        tensors.append({"name": name, "shape": draw(st.sampled_from([[rows], [rows, 1]])), "datatype": datatype,
                        "data": draw(st.lists(GOOD[name], min_size=rows, max_size=rows))})
    return tensors


@st.composite
def mutated(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    """A value of `strategy`, then (mostly) one thing in it replaced by an arbitrary JSON value or dropped."""
    value = draw(strategy)
    for _ in range(draw(st.integers(0, 2))):
        node, path = value, []
        while isinstance(node, list | dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            if draw(st.booleans()):
                parent[key] = draw(VALUE)
            elif isinstance(parent, dict):
                del parent[key]
            else:
                parent.pop(key)
    return value


FEEDBACK_ID = st.sampled_from(FEEDBACK_IDS) | st.text(min_size=1, max_size=8)
FEEDBACK_ITEM = st.fixed_dictionaries({}, optional={"id": FEEDBACK_ID | JSON_VALUES,
                                                    "label": st.sampled_from(["yes", "no"]) | JSON_VALUES,
                                                    "value": VALUE}) | JSON_VALUES
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "v1": mutated(st.fixed_dictionaries({"instances": st.lists(GOOD_ROW, min_size=1, max_size=MAX_BATCH + 1)},
                                        optional={"id": st.text(max_size=8)}))
    | st.fixed_dictionaries({"instances": st.lists(INSTANCE, max_size=MAX_BATCH + 2) | JSON_VALUES},
                            optional={"id": st.text(max_size=8) | JSON_VALUES}) | JSON_VALUES,
    "v2": mutated(st.fixed_dictionaries({"inputs": good_tensors()}, optional={"id": st.text(max_size=8)}))
    | st.fixed_dictionaries({"inputs": st.lists(TENSOR, max_size=4) | JSON_VALUES},
                            optional={"id": st.text(max_size=8) | JSON_VALUES,
                                      "parameters": JSON_VALUES, "outputs": JSON_VALUES}) | JSON_VALUES,
    "feedback": mutated(st.fixed_dictionaries({"id": FEEDBACK_ID}, optional={
        "label": st.sampled_from(["yes", "no"]), "value": st.floats(allow_nan=False, allow_infinity=False)}))
    | FEEDBACK_ITEM | st.lists(FEEDBACK_ITEM, max_size=3),
}
DEEP = 100_000  # nesting far past Python's recursion limit: still a 4xx
RAW = st.binary(max_size=80) | st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES) \
    | st.builds(lambda v, n: json.dumps(v).encode()[:n], JSON_VALUES, st.integers(0, 40))


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN and Infinity go out as the non-JSON tokens the server must refuse


def _check(route: str, status: int, raw: bytes, sent: bytes) -> None:
    what = f"POST {route} {sent[:300]!r}"
    assert status < 500, f"{what} -> {status} {raw[:300]!r}"
    if status >= 400:
        _check_error_body(status, raw, what)


Poster = Callable[[str, bytes], tuple[int, bytes]]


def _fuzz(post: Poster, route: str, max_examples: int) -> Counter[int]:
    """Structured bodies then raw bytes to `route`: every answer < 500, a 4xx names its field. Returns the
    statuses the structured bodies got."""
    seen: Counter[int] = Counter()

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=BODIES[route])
    def structured(body: Any) -> None:
        sent = _encode(body)
        status, raw = post(POST_ROUTES[route], sent)
        seen[status] += 1
        _check(POST_ROUTES[route], status, raw, sent)

    @settings(max_examples=max_examples // 2, derandomize=True, database=None, deadline=None)
    @given(raw=RAW)
    @example(raw=b"[" * DEEP + b"]" * DEEP)
    @example(raw=b'{"instances":' + b"[" * DEEP)
    @example(raw=b'{"inputs":[{"name":"age","shape":[1],"datatype":"FP32","data":' + b"[" * 990 + b"1"
             + b"]" * 990 + b"}]}")
    @example(raw=b"\xff\xfe{}")
    @example(raw=b'{"instances":[{"age":NaN,"income":Infinity,"city":"a"}]}')
    def raw_bytes(raw: bytes) -> None:
        _check(POST_ROUTES[route], *post(POST_ROUTES[route], raw), raw)

    structured()
    raw_bytes()
    assert seen[200] and seen[400], f"{route}: the bodies never got past validation, or never failed it: {seen}"
    return seen


def _live_post(port: int) -> Poster:
    def post(path: str, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # one per request: a 4xx may close it
        try:
            conn.request("POST", path, body=body, headers={"content-type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    return post


@pytest.mark.timeout(240)
@pytest.mark.parametrize("route", list(POST_ROUTES))
def test_live_server_answers_arbitrary_bodies_with_4xx_not_5xx(live: Live, route: str) -> None:
    _fuzz(_live_post(live.port), route, max_examples=120)
    assert live.proc.poll() is None, live.tail()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("route", list(POST_ROUTES))
def test_in_process_app_answers_arbitrary_bodies_with_4xx_not_5xx(bundle: Path, tmp_path: Path, route: str) -> None:
    """The same through the ASGI app in-process (cheap: no sockets), with a small body limit for 413s."""
    server = Server(Predictor(bundle, max_batch=MAX_BATCH), PredictionLog(tmp_path / "log.sqlite"), max_body=2048)
    with TestClient(with_openapi(server)) as client:
        def post(path: str, body: bytes) -> tuple[int, bytes]:
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            return response.status_code, response.content

        for pid in FEEDBACK_IDS:
            assert post(V1, json.dumps({"id": pid, "instances": [GOOD_ROW_EXAMPLE]}).encode())[0] == 200
        _fuzz(post, route, max_examples=200)


# --- an image + text model ------------------------------------------------------------------------------------

MEDIA_V1 = f"/v1/models/{MEDIA_MODEL}:predict"
MEDIA_V2 = f"/v2/models/{MEDIA_MODEL}/infer"
MEDIA_ROUTES = {"v1": MEDIA_V1, "v2": MEDIA_V2}


@pytest.fixture(scope="module")
def media_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_media_bundle(tmp_path_factory.mktemp("fuzz-media") / "bundle")


@pytest.fixture(scope="module")
def media_spec(media_bundle: Path) -> dict[str, Any]:
    return openapi_spec(read_bundle(media_bundle), MAX_BATCH)


def _media_good() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [instance(seed=1), instance(seed=2, text="awful", age=None)]
    images, texts, ages = ([r[c] for r in rows] for c in (MEDIA_IMAGE, MEDIA_TEXT, MEDIA_NUMBER))
    as_lists = [[i["b64"], t, a] for i, t, a in zip(images, texts, ages, strict=True)]
    v1 = [{"instances": rows}, {"instances": as_lists}]
    v2 = [{"inputs": [{"name": MEDIA_IMAGE, "shape": [2], "datatype": "BYTES", "data": [i["b64"] for i in images]},
                      {"name": MEDIA_TEXT, "shape": [2, 1], "datatype": "BYTES", "data": texts},
                      {"name": MEDIA_NUMBER, "shape": [2], "datatype": "FP64", "data": ages}]},
          {"inputs": [{"name": MEDIA_IMAGE, "shape": [1, 8, 8], "datatype": "UINT8", "data": [7] * 64},
                      {"name": MEDIA_TEXT, "shape": [1], "datatype": "BYTES", "data": ["fine"]},
                      {"name": MEDIA_NUMBER, "shape": [1], "datatype": "FP32", "data": [3]}]}]
    return v1, v2


def test_media_document_describes_images_and_texts(media_bundle: Path, media_spec: dict[str, Any]) -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    jsonschema.Draft202012Validator(OPENAPI_31).validate(media_spec)
    for schema in media_spec["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    client = TestClient(Server(Predictor(media_bundle, max_batch=MAX_BATCH), None).app())
    good_v1, good_v2 = _media_good()
    for path, name, bodies in ((MEDIA_V1, "V1Request", good_v1), (MEDIA_V2, "V2Request", good_v2)):
        for body in bodies:
            _validator(media_spec, name).validate(body)
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            _validator(media_spec, name.replace("Request", "Response")).validate(response.json())
    instance_schema = _validator(media_spec, "V1Request")
    for bad in ({MEDIA_TEXT: ""}, {MEDIA_TEXT: "   "}, {MEDIA_TEXT: "x" * (MEDIA_MAX_CHARS + 1)},
                {MEDIA_TEXT: None}, {MEDIA_IMAGE: None}, {MEDIA_IMAGE: {"url": "x"}}, {MEDIA_IMAGE: 5}):
        body = {"instances": [instance() | bad]}
        assert not instance_schema.is_valid(body), bad
        assert client.post(MEDIA_V1, json=body).status_code in (400, 413), bad
    props = media_spec["components"]["schemas"]["V1Response"]["properties"]["predictions"]["items"]["properties"]
    assert set(props) == {"label", "probabilities"}  # the embedding is never answered
    _validator(media_spec, "ModelMetadata").validate(client.get(f"/v2/models/{MEDIA_MODEL}").json())


@pytest.fixture(scope="module")
def live_media(media_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _serve(media_bundle, tmp_path_factory.mktemp("fuzz-media-live"))


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_on_an_image_and_text_model(live_media: Live,
                                                                      media_spec: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    """`st run` over the two inference routes of an image + text model (a few hundred requests: the documented
    example image gets past validation, fuzzed images and texts do not): no 5xx, responses as documented."""
    status, raw = _get(live_media.port, "/openapi.json")
    assert status == 200 and json.loads(raw) == media_spec
    har = tmp_path / "run.har"
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{live_media.base}/openapi.json",
         "--url", live_media.base, "--seed", str(SEED), "--max-examples", "40", "--workers", "1", "--generation-database", "none",
         "--no-color", "--include-operation-id", "v1Predict", "--include-operation-id", "v2Infer",
         "--phases", "examples,coverage,fuzzing",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance,response_headers_conformance",
         "--request-timeout", "10", "--report", "har", "--report-har-path", str(har)],
        cwd=tmp_path, capture_output=True, text=True, timeout=200)
    report = f"st run exit {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"

    entries = json.loads(har.read_text())["log"]["entries"]
    statuses: Counter[tuple[str, int]] = Counter()
    server_errors = []
    for entry in entries:
        url, status = urlsplit(entry["request"]["url"]).path, entry["response"]["status"]
        content = entry["response"]["content"]
        statuses[(url, status)] += 1
        if status >= 500:
            server_errors.append(f"{status} {url} {entry['request'].get('postData', {}).get('text', '')[:300]}"
                                 f" -> {content.get('text', '')[:200]}")
        elif 400 <= status < 500 and "json" in content.get("mimeType", ""):
            _check_error_body(status, content.get("text", "").encode(), url)
    assert not server_errors, "\n".join(server_errors[:5]) + f"\nserver output:\n{live_media.tail()}"
    assert proc.returncode == 0, report
    assert len(entries) >= 200, report
    for route in MEDIA_ROUTES.values():
        assert statuses[(route, 400)], (route, statuses)
    assert statuses[(MEDIA_V1, 200)], statuses  # the documented examples are answered
    assert live_media.proc.poll() is None, live_media.tail()


def _png(seed: int, size: tuple[int, int], mode: str) -> str:
    return base64.b64encode(image_png(seed, size, mode)).decode()


PNGS = [_png(s, size, mode) for s, size, mode in ((0, (8, 8), "L"), (1, (3, 17), "RGB"), (2, (1, 1), "RGBA"),
                                                  (3, (40, 40), "P"))]
MEDIA_IMAGES = (st.sampled_from(PNGS) | st.sampled_from(PNGS).map(lambda b: {"b64": b})
                | st.builds(lambda b, n: b[:n], st.sampled_from(PNGS), st.integers(0, 120))  # truncated
                | st.builds(lambda raw: base64.b64encode(raw).decode(), st.binary(max_size=64))
                | st.text(max_size=20) | JSON_VALUES)
ODD_TEXTS = ["", " ", "\t\n", "ok", "x" * (MEDIA_MAX_CHARS + 1), "caf\u00e9 \u2603 \U0001f600"]
MEDIA_TEXTS = st.text(min_size=1, max_size=30) | st.sampled_from(ODD_TEXTS) | JSON_VALUES
MEDIA_GOOD = {MEDIA_IMAGE: MEDIA_IMAGES, MEDIA_TEXT: MEDIA_TEXTS,
              MEDIA_NUMBER: st.none() | st.floats(-1e6, 1e6) | st.integers(-1000, 1000)}
MEDIA_ROW = st.fixed_dictionaries(MEDIA_GOOD) | st.tuples(*MEDIA_GOOD.values()).map(list)
PIXELS = st.builds(lambda n, h, w, c, v: {"name": MEDIA_IMAGE, "shape": [n, h, w] + ([c] if c else []),
                                          "datatype": "UINT8", "data": [v] * (n * h * w * (c or 1))},
                   st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.sampled_from([0, 1, 3]),
                   st.integers(-1, 256))


@st.composite
def media_tensors(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = draw(st.integers(1, 4))
    image = draw(PIXELS) if draw(st.booleans()) else {
        "name": MEDIA_IMAGE, "shape": [rows], "datatype": "BYTES",
        "data": draw(st.lists(MEDIA_IMAGES, min_size=rows, max_size=rows))}
    return [image,
            {"name": MEDIA_TEXT, "shape": [rows, 1], "datatype": draw(st.sampled_from(["BYTES", "BYTES", "INT64"])),
             "data": draw(st.lists(MEDIA_TEXTS, min_size=rows, max_size=rows))},
            {"name": MEDIA_NUMBER, "shape": [rows], "datatype": "FP32",
             "data": draw(st.lists(MEDIA_GOOD[MEDIA_NUMBER], min_size=rows, max_size=rows))}]


MEDIA_BODIES: dict[str, st.SearchStrategy[Any]] = {
    "v1": mutated(st.fixed_dictionaries({"instances": st.lists(MEDIA_ROW, min_size=1, max_size=4)})),
    "v2": mutated(st.fixed_dictionaries({"inputs": media_tensors()})),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("route", list(MEDIA_ROUTES))
def test_in_process_app_answers_bad_images_and_texts_with_4xx_not_5xx(media_bundle: Path, tmp_path: Path,
                                                                      route: str) -> None:
    """Near-valid bodies of real, truncated and random images, and of odd texts (blank, too long, lone
    surrogates, not strings), through the ASGI app with its log and the micro-batcher."""
    server = Server(Predictor(media_bundle, max_batch=MAX_BATCH), PredictionLog(tmp_path / "log.sqlite"),
                    max_body=64 * 1024, batch_max=8)
    seen: Counter[int] = Counter()
    with TestClient(with_openapi(server)) as client:
        @settings(max_examples=150, derandomize=True, database=None, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=MEDIA_BODIES[route])
        @example(body={"instances": [instance() | {MEDIA_TEXT: "\ud800"}]} if route == "v1" else {"inputs": []})
        def structured(body: Any) -> None:
            sent = json.dumps(body).encode("utf-8", "surrogatepass")
            response = client.post(MEDIA_ROUTES[route], content=sent, headers={"content-type": "application/json"})
            seen[response.status_code] += 1
            _check(MEDIA_ROUTES[route], response.status_code, response.content, sent)

        structured()
    assert seen[200] and seen[400], seen


# --- the HTTP layer at volume: both runtimes, raw sockets, keep-alive, concurrent connections -----------------

HTTP_FUZZ = {"mlops": 6000, "kserve": 4000}  # requests per runtime: 10,000 here alone
CONNECTIONS = 8  # concurrent keep-alive connections
STALLED = 4  # bodies that stop halfway, per runtime: each a 408 after BODY_TIMEOUT_S
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", "get", "TRACE"]
PATHS = [V1, V2, FEEDBACK, "/v2/repository/models/toy/traffic", "/v2/repository/models/toy/load", "/v2",
         "/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready",
         f"/v1/models/{MODEL}", "/metrics", "/openapi.json", "/", "/v1/models/other:predict", "/v2/models/other/infer",
         f"/v1/models/{MODEL}:explain", "/v3", "/v2/models//infer", "/%00", "/%ff%fe", "/v2/../v2", "/a?b=%zz",
         "/v2/models/toy/infer/", "/" + "x" * 4000, "/v1/models/" + "%2F" * 50,
         "/mlops/v1/models/toy/traffic", f"/v2/models/{MODEL}/versions/1/infer", f"/v2/models/{MODEL}/versions/1",
         f"/v2/models/{MODEL}/versions/1/ready", f"/v2/models/{MODEL}/versions//infer"]
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz", "application/octet-stream",
                 "application/ld+json", "text/html", "", "application/json; charset=latin-1", "image/png"]
MALFORMED = [b"HELLO\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
             b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
             b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
             b"POST " + V1.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
             b"GET /v2 HTTP/1.1\r\nNo Colon Header\r\n\r\n", b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
             b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n"]


def _http_bodies(rng: random.Random) -> bytes:
    """A body for one fuzzed request: a valid one, a typical mistake, feedback of every kind, random JSON, bytes."""
    pick = rng.random()
    if pick < 0.5:
        body: Any = rng.choice([*GOOD_V1, *GOOD_V2, *BAD_V1, {"percent": rng.choice([0, 50, 101, "x", None])},
                                {"id": rng.choice(FEEDBACK_IDS), "label": rng.choice(["yes", "no", 1])},
                                {"id": rng.choice(FEEDBACK_IDS), "label": {"nested": "yes"}},
                                {"id": "never-predicted", "label": "yes"}, {"id": "k" * 5000, "label": "yes"},
                                [{"id": rng.choice(FEEDBACK_IDS), "thumbs": "up"}, {"id": 5}]])
        return json.dumps(body).encode()
    if pick < 0.8:
        return json.dumps(_random_json(rng, 3)).encode()
    return rng.randbytes(rng.randint(0, 120))


def _random_json(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(7 if depth else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**63, 1e308, -0.0, 3.5])
    if kind == 2:
        return rng.choice(["", "a", "yes", "inputs", "instances", "\u2603", "x" * 300])
    if kind in (3, 4):
        return rng.choice([COLUMNS, [], [[1, 2, "a"]], {"instances": []}, {"inputs": [{}]}])
    if kind == 5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    keys = ["instances", "inputs", "id", "label", "value", "percent", "name", "shape", "datatype", "data", "zz"]
    return {rng.choice(keys): _random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def _http_request(rng: random.Random) -> tuple[str, bytes]:
    """(kind, bytes) of one fuzzed request. `malformed` and `truncated` ones end their connection."""
    pick = rng.random()
    if pick < 0.04:
        return "malformed", rng.choice(MALFORMED)
    method = "POST" if pick < 0.6 else rng.choice(METHODS)
    path = rng.choice(PATHS[:5] if method == "POST" and rng.random() < 0.8 else PATHS)
    headers = ["Host: 127.0.0.1"]
    content_type = rng.choice(CONTENT_TYPES)
    if content_type is not None:
        headers.append(f"Content-Type: {content_type}")
    if rng.random() < 0.03:
        headers += [f"X-Fuzz-{i}: {'v' * rng.randint(0, 50)}" for i in range(rng.randint(50, 150))]
    if rng.random() < 0.03:
        headers.append("X-Huge: " + "h" * rng.randint(8_000, 60_000))
    if rng.random() < 0.05:
        headers.append(f"Authorization: Bearer {'t' * rng.randint(0, 40)}")
    body = _http_bodies(rng) if method != "GET" or rng.random() < 0.1 else b""
    if method == "HEAD":
        body = b""
    if rng.random() < 0.05 and body:  # chunked transfer encoding, split at random
        cut = rng.randint(0, len(body))
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:cut], body[cut:]) if part)
        head = "\r\n".join([f"{method} {path} HTTP/1.1", *headers, "Transfer-Encoding: chunked"])
        return "chunked", head.encode() + b"\r\n\r\n" + chunks + b"0\r\n\r\n"
    if rng.random() < 0.02 and body:  # announces more than it sends, then ends its side of the connection
        head = "\r\n".join([f"{method} {path} HTTP/1.1", *headers, f"Content-Length: {len(body) + 50}"])
        return "truncated", head.encode() + b"\r\n\r\n" + body
    head = "\r\n".join([f"{method} {path} HTTP/1.1", *headers, f"Content-Length: {len(body)}"])
    return method, head.encode() + b"\r\n\r\n" + body


async def _read_answer(reader: asyncio.StreamReader, head_only: bool) -> tuple[int, dict[str, str], bytes] | None:
    """One response off the connection; None when the server closed it without answering."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        assert not exc.partial, f"half an answer: {exc.partial[:200]!r}"
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    if head_only or status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return status, headers, body
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await reader.read()


async def _http_fuzz(port: int, requests: list[tuple[str, bytes]]) -> tuple[Counter[tuple[str, int]], list[str]]:
    """Send `requests` over CONNECTIONS keep-alive connections (a new one after each the server closes); plus
    STALLED bodies that stop halfway, each on its own connection. Returns (kind, status) counts (status 0: no
    answer, as for a client that left mid-body) and what went wrong."""
    seen: Counter[tuple[str, int]] = Counter()
    problems: list[str] = []

    def judge(kind: str, sent: bytes, answer: tuple[int, dict[str, str], bytes] | None) -> None:
        status = answer[0] if answer else 0
        seen[(kind, status)] += 1
        if answer is None:
            if kind not in ("truncated",):
                problems.append(f"no answer to {sent[:150]!r}")
            return
        _, headers, body = answer
        if status >= 500:
            problems.append(f"{status} to {sent[:150]!r}: {body[:200]!r}")
        elif status >= 400 and kind != "HEAD":  # the answer to a HEAD has no body
            try:
                _check_error_body(status, body, f"{kind} {sent[:100]!r}")
            except AssertionError as exc:
                problems.append(str(exc))
        elif kind == "malformed":  # (a truncated one may be answered: by a route that reads no body)
            problems.append(f"{status} to a malformed request {sent[:150]!r}")

    async def worker(mine: list[tuple[str, bytes]]) -> None:
        reader = writer = None
        for kind, sent in mine:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            assert reader is not None
            writer.write(sent)
            if kind == "truncated":
                writer.write_eof()
            answer = await asyncio.wait_for(_read_answer(reader, kind == "HEAD"), timeout=30)
            judge(kind, sent, answer)
            if answer is None or kind in ("malformed", "truncated") or answer[1].get("connection") == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def stalled() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        writer.write(sent.encode() + b'{"instanc')
        answer = await asyncio.wait_for(_read_answer(reader, False), timeout=BODY_TIMEOUT_S + 30)
        judge("stalled", sent.encode(), answer)
        if answer is None or answer[0] != 408:
            problems.append(f"a stalled body got {answer and answer[:1]}, not a 408")
        writer.close()

    await asyncio.gather(*(worker(requests[k::CONNECTIONS]) for k in range(CONNECTIONS)),
                         *(stalled() for _ in range(STALLED)))
    return seen, problems


@pytest.fixture(scope="module")
def live_kserve(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from _serve(bundle, tmp_path_factory.mktemp("fuzz-kserve"), runtime="kserve")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("runtime", list(HTTP_FUZZ))
def test_the_http_layer_answers_every_request_with_json_4xx_never_5xx(runtime: str, request: pytest.FixtureRequest
                                                                     ) -> None:
    """Thousands of requests, most of them wrong at the HTTP layer (methods, paths, content types, headers,
    chunking, malformed or truncated requests) or in their body, on concurrent keep-alive connections: every
    answer below 500, every 4xx a JSON body naming the field, the HTTP parser's refusals included; a stalled
    body is a 408; a truncated one (its client gone) gets no answer and costs nothing."""
    live: Live = request.getfixturevalue("live" if runtime == "mlops" else "live_kserve")
    rng = random.Random(SEED)
    requests = [_http_request(rng) for _ in range(HTTP_FUZZ[runtime])]
    seen, problems = asyncio.run(_http_fuzz(live.port, requests))
    assert not problems, f"{len(problems)} problems, e.g.\n" + "\n".join(problems[:8]) + f"\n{live.tail()}"
    assert sum(seen.values()) == HTTP_FUZZ[runtime] + STALLED
    statuses = Counter(status for (_, status) in seen.elements())
    for status in (200, 400, 404, 405, 408, 415):  # every kind of answer came up
        assert statuses[status], statuses
    assert live.proc.poll() is None, live.tail()
