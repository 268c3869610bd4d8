"""Our runtime (`mlops serve`) and KServe's stock ModelServer (mlops.serve.kserve_runtime) over one bundle,
both real servers on loopback, pass the same conformance checks through KServe's own REST client: the V1
and V2 protocols, the same answers for the same rows, and bad requests as 4xx naming the field at fault."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from mlops.package.predictor import Predictor
from tests.net import LiveServer, free_port, start_server, stop_process
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration


def _import_kserve() -> ModuleType:
    if importlib.util.find_spec("kserve") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kserve is not installed, and CI=true: the KServe conformance suite must run in CI "
                        "(install the 'serve' extra)", pytrace=False)
        pytest.skip("kserve is not installed (pip install -e '.[serve]'): KServe conformance not checked",
                    allow_module_level=True)
    from mlops.serve import kserve_runtime  # imports kserve with a bare sys.argv (see there)

    return kserve_runtime.kserve


kserve = _import_kserve()

RUNTIMES = ["mlops", "kserve"]
MODEL = "toy"
COLUMNS = ["age", "income", "city"]
ROWS: list[dict[str, Any]] = [
    {"age": 41.0, "income": 50.0, "city": "a"},
    {"age": 30.0, "income": 40.0, "city": "b"},
    {"age": None, "income": 70.5, "city": None},  # missing values: the graph imputes them
]
ROW = ROWS[0]
START_TIMEOUT = 90  # the machine may be busy with other suites: a cold `python -m` import takes seconds


# --- the servers -----------------------------------------------------------------------------------------

def _command(runtime: str, bundle: Path, port: int, workdir: Path) -> list[str]:
    if runtime == "mlops":
        return [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--port", str(port),
                "--log", str(workdir / f"predictions-{port}.sqlite")]
    # the stock kserve.ModelServer, started as a user would: `mlops serve --runtime kserve`
    return [sys.executable, "-m", "mlops.cli", "serve", str(bundle), "--runtime", "kserve", "--port", str(port)]


def _start(runtime: str, bundle: Path, workdir: Path) -> LiveServer:
    env = os.environ | {"MLOPS_HOME": str(workdir / ".mlops"), "PYTHONUNBUFFERED": "1"}
    return start_server(runtime, lambda port: _command(runtime, bundle, port, workdir),
                        lambda port: workdir / f"{runtime}-{port}.log", env, START_TIMEOUT)


class Pool:
    """The runtimes this module's tests have asked for, each started once and always stopped."""

    def __init__(self, bundle: Path, workdir: Path) -> None:
        self.bundle = bundle
        self.workdir = workdir
        self.started: dict[str, LiveServer] = {}

    def get(self, runtime: str) -> LiveServer:
        if runtime not in self.started:
            self.started[runtime] = _start(runtime, self.bundle, self.workdir)
        server = self.started[runtime]
        assert server.proc.poll() is None, f"{runtime} server died:\n{server.tail()}"
        return server

    def close(self) -> None:
        for server in self.started.values():
            stop_process(server.proc, timeout=15, kill_timeout=15)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("conformance") / "bundle", name=MODEL)


@pytest.fixture(scope="module")
def pool(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    servers = Pool(bundle, tmp_path_factory.mktemp("servers"))
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module", params=RUNTIMES)
def server(request: pytest.FixtureRequest, pool: Pool) -> LiveServer:
    return pool.get(request.param)


@pytest.fixture(scope="module")
def reference(bundle: Path) -> dict[str, np.ndarray]:
    """What the bundle answers for ROWS in process: both servers must agree with it."""
    predictor = Predictor(bundle)
    return predictor.predict(predictor.feeds_from_rows([dict(r) for r in ROWS])).outputs


# --- KServe's REST client ------------------------------------------------------------------------------

def run(work: Callable[..., Coroutine[Any, Any, Any]], protocol: str, *args: Any) -> Any:
    """One call through kserve.InferenceRESTClient (async only), with a client of its own."""
    async def go() -> Any:
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol=protocol, timeout=30)) as client:
            return await work(client, *args)

    return asyncio.run(go())


def v2_request(request_id: str = "req-v2") -> Any:
    """One input per column: FP64 data for the FP32 columns, INT64 for one, BYTES for the category."""
    return kserve.InferRequest(model_name=MODEL, request_id=request_id, infer_inputs=[
        kserve.InferInput("age", [len(ROWS)], "FP64", [r["age"] for r in ROWS]),
        kserve.InferInput("income", [len(ROWS)], "FP64", [r["income"] for r in ROWS]),
        kserve.InferInput("city", [len(ROWS)], "BYTES", [r["city"] for r in ROWS]),
    ])


def v2_outputs(response: Any) -> dict[str, Any]:
    return {o.name: o for o in response.outputs}


def assert_matches(labels: list[str], probabilities: Any, reference: dict[str, np.ndarray]) -> None:
    assert labels == reference["label"].tolist()
    np.testing.assert_allclose(np.asarray(probabilities, dtype=np.float64).reshape(len(ROWS), -1),
                               reference["probabilities"].astype(np.float64), rtol=0, atol=1e-6)


# --- conformance: every check runs against both runtimes -------------------------------------------------

def test_v2_server_and_model_health(server: LiveServer) -> None:
    async def work(client: Any) -> tuple[bool, bool, bool, bool]:
        return (await client.is_server_live(server.base), await client.is_server_ready(server.base),
                await client.is_model_ready(server.base, MODEL), await client.is_model_ready(server.base, "other"))

    assert run(work, "v2") == (True, True, True, False)


def test_v1_model_status(server: LiveServer) -> None:
    async def work(client: Any) -> bool:
        return await client.is_model_ready(server.base, MODEL)

    assert run(work, "v1") is True
    assert httpx.get(f"{server.base}/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True}


def test_v2_model_metadata(server: LiveServer) -> None:
    meta = httpx.get(f"{server.base}/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL
    assert meta["inputs"] == [{"name": "age", "datatype": "FP32", "shape": [-1, 1]},
                              {"name": "income", "datatype": "FP32", "shape": [-1, 1]},
                              {"name": "city", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]


@pytest.mark.parametrize("shape", ["objects", "lists"])
def test_v1_predict(server: LiveServer, reference: dict[str, np.ndarray], shape: str) -> None:
    instances = ROWS if shape == "objects" else [[r[c] for c in COLUMNS] for r in ROWS]

    async def work(client: Any) -> dict[str, Any]:
        return await client.infer(server.base, {"instances": instances, "id": "req-v1"}, model_name=MODEL)

    body = run(work, "v1")
    predictions = body["predictions"]
    assert [sorted(p) for p in predictions] == [["label", "probabilities"]] * len(ROWS)
    assert_matches([p["label"] for p in predictions], [p["probabilities"] for p in predictions], reference)
    assert body["ids"] == [f"req-v1-{i}" for i in range(len(ROWS))]


def test_v2_infer_one_input_per_column(server: LiveServer, reference: dict[str, np.ndarray]) -> None:
    async def work(client: Any) -> Any:
        return await client.infer(server.base, v2_request("req-v2"), model_name=MODEL)

    response = run(work, "v2")
    assert response.id == "req-v2"
    assert response.model_name == MODEL
    outputs = v2_outputs(response)
    assert sorted(outputs) == ["label", "probabilities"]
    label, probabilities = outputs["label"], outputs["probabilities"]
    assert (label.datatype, label.shape) == ("BYTES", [len(ROWS)])
    assert (probabilities.datatype, probabilities.shape) == ("FP32", [len(ROWS), 2])
    assert_matches(list(label.data), probabilities.data, reference)


def test_v2_infer_single_bytes_tensor(server: LiveServer, reference: dict[str, np.ndarray]) -> None:
    """One [N, n_columns] tensor in schema order: mixing numbers and strings makes it BYTES."""
    request = kserve.InferRequest(model_name=MODEL, request_id="req-single", infer_inputs=[
        kserve.InferInput("input", [len(ROWS), len(COLUMNS)], "BYTES", [[r[c] for c in COLUMNS] for r in ROWS])])

    async def work(client: Any) -> Any:
        return await client.infer(server.base, request, model_name=MODEL)

    response = run(work, "v2")
    assert response.id == "req-single"
    outputs = v2_outputs(response)
    assert_matches(list(outputs["label"].data), outputs["probabilities"].data, reference)


def test_v2_id_is_generated_when_absent(server: LiveServer) -> None:
    body = {"inputs": [{"name": c, "shape": [1], "datatype": "BYTES" if c == "city" else "FP64", "data": [ROW[c]]}
                       for c in COLUMNS]}
    response = httpx.post(f"{server.base}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["id"], str) and response.json()["id"]


def test_client_surfaces_a_bad_request_as_4xx(server: LiveServer) -> None:
    async def work(client: Any) -> Any:
        return await client.infer(server.base, {"instances": [ROW | {"zip": 1}]}, model_name=MODEL)

    with pytest.raises(httpx.HTTPStatusError) as caught:
        run(work, "v1")
    assert caught.value.response.status_code == 400
    assert "instances[0].zip" in str(caught.value)


def _v2(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {"inputs": list(inputs)}


def _col(name: str, data: list[Any], datatype: str = "FP64") -> dict[str, Any]:
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


GOOD_V2 = [_col("age", [41.0]), _col("income", [50], "INT64"), _col("city", ["a"], "BYTES")]
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"

BAD = [
    # (id, path, body, status, field)
    ("v1-unknown-column", V1, {"instances": [ROW | {"zip": 1}]}, 400, "instances[0].zip"),
    ("v1-missing-column", V1, {"instances": [{"age": 1.0, "income": 2.0}]}, 400, "instances[0].city"),
    ("v1-string-for-number", V1, {"instances": [ROW | {"age": "old"}]}, 400, "instances[].age[0]"),
    ("v1-list-for-category", V1, {"instances": [ROW | {"city": ["a"]}]}, 400, "instances[].city[0]"),
    ("v1-wrong-list-length", V1, {"instances": [[1.0, 2.0]]}, 400, "instances[0]"),
    ("v1-no-instances", V1, {"rows": [ROW]}, 400, "instances"),
    ("v1-id-not-string", V1, {"instances": [ROW], "id": 5}, 400, "id"),
    ("v1-batch-over-limit", V1, {"instances": [ROW] * 1025}, 413, "instances"),
    ("v2-unknown-input", V2, _v2(*GOOD_V2, _col("zip", [1.0])), 400, "inputs[3].name"),
    ("v2-missing-input", V2, _v2(*GOOD_V2[:2]), 400, "inputs.city"),
    ("v2-bytes-for-number", V2, _v2(_col("age", ["41"], "BYTES"), *GOOD_V2[1:]), 400, "inputs[0].data"),
    ("v2-string-in-numbers", V2, _v2(_col("age", ["old"]), *GOOD_V2[1:]), 400, "inputs[0].data[0]"),
    ("v2-unknown-datatype", V2, _v2(_col("age", [41.0], "FLOAT"), *GOOD_V2[1:]), 400, "inputs[0].datatype"),
    ("v2-missing-datatype", V2, _v2({"name": "age", "shape": [1], "data": [41.0]}, *GOOD_V2[1:]), 400,
     "inputs[0].datatype"),
    ("v2-data-not-list", V2, _v2({"name": "age", "shape": [1], "datatype": "FP64", "data": 41.0}, *GOOD_V2[1:]),
     400, "inputs[0].data"),
    ("v2-shape-mismatch", V2, _v2({**GOOD_V2[0], "shape": [3]}, *GOOD_V2[1:]), 400, "inputs[0].shape"),
    ("v2-id-not-string", V2, {**_v2(*GOOD_V2), "id": 5}, 400, "id"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_request_names_the_field(server: LiveServer, path: str, body: dict[str, Any], status: int,
                                     field: str) -> None:
    response = httpx.post(server.base + path, json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["field"] == field, answer
    assert answer["error"].startswith(f"{field}: "), answer


@pytest.mark.parametrize("path", [V1.replace(MODEL, "other"), V2.replace(MODEL, "other")])
def test_unknown_model_is_404(server: LiveServer, path: str) -> None:
    response = httpx.post(server.base + path, json={"instances": [ROW]} if "v1" in path else _v2(*GOOD_V2))
    assert response.status_code == 404, response.text
    assert "other" in response.json()["error"]


# --- the two runtimes against each other ----------------------------------------------------------------

def test_both_runtimes_answer_the_same(pool: Pool) -> None:
    answers: dict[str, tuple[list[str], np.ndarray]] = {}
    for runtime in RUNTIMES:
        url = pool.get(runtime).base

        async def v1(client: Any, url: str = url) -> dict[str, Any]:
            return await client.infer(url, {"instances": ROWS}, model_name=MODEL)

        async def v2(client: Any, url: str = url) -> Any:
            return await client.infer(url, v2_request(), model_name=MODEL)

        predictions = run(v1, "v1")["predictions"]
        outputs = v2_outputs(run(v2, "v2"))
        v1_probabilities = np.asarray([p["probabilities"] for p in predictions], dtype=np.float64)
        v2_probabilities = np.asarray(outputs["probabilities"].data, dtype=np.float64).reshape(len(ROWS), -1)
        assert [p["label"] for p in predictions] == list(outputs["label"].data), runtime
        np.testing.assert_allclose(v1_probabilities, v2_probabilities, rtol=0, atol=1e-6, err_msg=runtime)
        answers[runtime] = ([p["label"] for p in predictions], v1_probabilities)
    (labels_a, probs_a), (labels_b, probs_b) = answers["mlops"], answers["kserve"]
    assert labels_a == labels_b
    np.testing.assert_allclose(probs_a, probs_b, rtol=0, atol=1e-6)


# --- versioned V2 routes, the server's extensions, the traffic route's move ----------------------------------

@pytest.fixture(scope="module")
def versioned(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our app serving version 7 (champion) and 8 (A/B challenger at 0 %) on a real uvicorn on loopback. A
    bundle directory has no registry version, so this server is built here rather than by `mlops serve`."""
    import threading

    import uvicorn

    from mlops.core.predlog import PredictionLog
    from mlops.core.refs import CHALLENGER
    from mlops.serve.app import Server
    from mlops.serve.routing import Arm

    log = PredictionLog(tmp_path_factory.mktemp("versioned") / "log.sqlite")
    app = Server(Predictor(bundle), log, version="7", challenger=Arm(Predictor(bundle), "8", CHALLENGER)).app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.parametrize(("version", "variant"), [("7", "champion"), ("8", "challenger")])
def test_v2_versioned_routes_through_kserves_client(versioned: str, reference: dict[str, np.ndarray],
                                                    version: str, variant: str) -> None:
    """KServe's client builds `/v2/models/{model_name}/...`: a model name of `toy/versions/V` reaches the
    versioned routes, and its InferResponse parser reads their answers."""
    versioned_name = f"{MODEL}/versions/{version}"

    async def work(client: Any) -> tuple[bool, Any, dict[str, str]]:
        headers: dict[str, str] = {}
        ready = await client.is_model_ready(versioned, versioned_name)
        answer = await client.infer(versioned, v2_request(f"req-{version}"), model_name=versioned_name,
                                    response_headers=headers)
        return ready, answer, headers

    ready, answer, headers = run(work, "v2")
    assert ready is True
    assert answer.model_name == MODEL and answer.id == f"req-{version}"  # its parser drops model_version:
    assert headers["x-model-variant"] == variant  # the version, not the A/B split (0 %), chose the arm
    raw = httpx.post(f"{versioned}/v2/models/{versioned_name}/infer", json={"inputs": [
        {"name": c, "shape": [1], "datatype": "BYTES" if c == "city" else "FP64", "data": [ROW[c]]} for c in COLUMNS]},
        timeout=30)
    assert raw.status_code == 200 and raw.json()["model_version"] == version
    outputs = v2_outputs(answer)
    assert_matches(list(outputs["label"].data), outputs["probabilities"].data, reference)
    meta = httpx.get(f"{versioned}/v2/models/{MODEL}/versions/{version}", timeout=30).json()
    assert meta["versions"] == [version] and [i["name"] for i in meta["inputs"]] == COLUMNS


def test_v2_version_not_served_is_a_404_naming_it(versioned: str) -> None:
    async def work(client: Any) -> tuple[bool, Exception | None]:
        ready = await client.is_model_ready(versioned, f"{MODEL}/versions/6")
        try:
            await client.infer(versioned, v2_request(), model_name=f"{MODEL}/versions/6")
        except httpx.HTTPStatusError as exc:
            return ready, exc
        return ready, None

    ready, refused = run(work, "v2")
    assert ready is False  # V2: a 4xx readiness is "not ready"
    assert isinstance(refused, httpx.HTTPStatusError) and refused.response.status_code == 404
    body = refused.response.json()
    assert body["field"] == "version" and "'6'" in body["error"] and "7, 8" in body["error"]
    assert httpx.get(f"{versioned}/v2/models/{MODEL}", timeout=30).json()["versions"] == ["7", "8"]


def test_server_metadata_lists_the_extensions_served(versioned: str) -> None:
    metadata = httpx.get(f"{versioned}/v2", timeout=30).json()
    assert metadata["extensions"] == ["model_repository", "binary_tensor_data"]
    loaded = httpx.post(f"{versioned}/v2/repository/models/{MODEL}/load", timeout=30)
    assert loaded.status_code == 200 and loaded.json()["load"] is True


def test_traffic_route_moved_and_its_old_path_is_deprecated(versioned: str) -> None:
    new = httpx.post(f"{versioned}/mlops/v1/models/{MODEL}/traffic", json={"percent": 0}, timeout=30)
    old = httpx.post(f"{versioned}/v2/repository/models/{MODEL}/traffic", json={"percent": 0}, timeout=30)
    assert new.status_code == old.status_code == 200 and new.json() == old.json()
    assert "deprecation" not in new.headers
    assert old.headers["deprecation"].startswith("@")
    assert f"</mlops/v1/models/{MODEL}/traffic>" in old.headers["link"]
