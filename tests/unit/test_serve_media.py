"""Serving an image + text model, real ONNX Runtime, Pillow and tokenizers, through both runtimes in-process:
our ASGI app and KServe's stock ModelServer app over `kserve_runtime.BundleModel`. V1 instances and V2 BYTES or
UINT8 tensors are answered; bad images and texts are a 4xx naming the input, never a 500; the log keeps texts
and image digests, never pixels; batching, A/B and shadow work with images and texts."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from mlops.core.errors import MlopsError
from mlops.core.predlog import SHADOW, PredictionLog, read_predictions
from mlops.core.refs import CHALLENGER
from mlops.package.predictor import DESCRIPTORS, RAW_TEXT, Predictor, embedding_projection
from mlops.serve import kserve_runtime
from mlops.serve.app import Server
from mlops.serve.batching import MicroBatcher
from mlops.serve.openapi import EXAMPLE_PNG
from mlops.serve.routing import Arm, check_compatible, feeds_for
from tests.media_fixtures import (
    IMAGE,
    MAX_CHARS,
    NAME,
    NUMBER,
    TEXT,
    b64,
    build_media_bundle,
    image_png,
    instance,
)
from tests.serve_fixtures import HAS_KSERVE, kserve_app

V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"
TEXTS = ["great coffee, fresh and strong", "awful packaging arrived broken", "my dog loves these treats",
         "stale chips", "fast delivery good quality", "never again"]
OTHER_CORPUS = ["a completely different vocabulary", "zebra quartz jukebox", "fresh strong coffee beans",
                "broken glass everywhere", "five stars from me"]
RUNTIMES = ["mlops", "kserve"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_media_bundle(tmp_path_factory.mktemp("media") / "bundle")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another version: other weights and a tokenizer trained on other texts (another vocabulary)."""
    return build_media_bundle(tmp_path_factory.mktemp("media-other") / "bundle", weights_seed=5,
                              texts=OTHER_CORPUS)


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor(bundle, max_batch=16)


def instances(n: int = 3) -> list[dict[str, Any]]:
    return [instance(seed=i, text=TEXTS[i % len(TEXTS)], age=None if i == 2 else 30.0 + 5 * i) for i in range(n)]


def v2_body(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    n = len(rows)
    return {"inputs": [
        {"name": IMAGE, "shape": [n], "datatype": "BYTES", "data": [r[IMAGE]["b64"] for r in rows]},
        {"name": TEXT, "shape": [n, 1], "datatype": "BYTES", "data": [r[TEXT] for r in rows]},
        {"name": NUMBER, "shape": [n], "datatype": "FP32", "data": [r[NUMBER] for r in rows]},
    ]} | extra


def pixels(seed: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image_png(seed, size, mode))))


def runtime_client(runtime: str, bundle: Path, tmp_path: Path, **kwargs: Any) -> TestClient:
    if runtime == "kserve":
        if not HAS_KSERVE:
            pytest.skip("kserve is not installed (pip install -e '.[serve]')")
        return TestClient(kserve_app(bundle))
    log = PredictionLog(tmp_path / "log.sqlite")
    return TestClient(Server(Predictor(bundle, max_batch=16), log, version="3", **kwargs).app())


@pytest.fixture(params=RUNTIMES)
def client(request: pytest.FixtureRequest, bundle: Path, tmp_path: Path) -> Iterator[TestClient]:
    with runtime_client(request.param, bundle, tmp_path) as c:
        c.runtime = request.param  # type: ignore[attr-defined]
        yield c


def expected(predictor: Predictor, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return predictor.predict(predictor.feeds_from_rows(rows)).instances()


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["probabilities"] for g in got], [w["probabilities"] for w in want], atol=1e-6)


def v2_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A V2 answer's outputs as V1-like rows."""
    outputs = {o["name"]: o for o in body["outputs"]}
    n = outputs["label"]["shape"][0]
    probabilities = np.asarray(outputs["probabilities"]["data"], dtype=float).reshape(n, -1)
    return [{"label": outputs["label"]["data"][i], "probabilities": probabilities[i].tolist()} for i in range(n)]


# --- answers --------------------------------------------------------------------------------------------


def test_v1_instances_with_an_image_and_a_text_are_answered(client: TestClient, predictor: Predictor) -> None:
    rows = instances(3)
    as_lists = [[r[IMAGE], r[TEXT], r[NUMBER]] for r in rows]  # schema order: image, review, age
    plain_b64 = [r | {IMAGE: r[IMAGE]["b64"]} for r in rows]  # the base64 text alone is an image too

    for body in ({"instances": rows}, {"instances": as_lists}, {"instances": plain_b64}):
        response = client.post(V1, json=body)
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert_same(got, expected(predictor, rows))
        assert all(set(p) == {"label", "probabilities"} for p in got)  # never the embedding
    assert len({tuple(p["probabilities"]) for p in got}) == 3  # the image and the text move the answer


def test_v2_bytes_tensors_are_answered_as_v1_instances(client: TestClient, predictor: Predictor) -> None:
    rows = instances(3)

    response = client.post(V2, json=v2_body(rows, id="req-1"))

    assert response.status_code == 200, response.text
    body = response.json()
    assert {o["name"] for o in body["outputs"]} == {"label", "probabilities"}
    assert_same(v2_outputs(body), expected(predictor, rows))


def test_v2_uint8_pixels_are_answered_as_the_encoded_image(client: TestClient, predictor: Predictor) -> None:
    rows = [instance(seed=3, text=TEXTS[0]), instance(seed=4, text=TEXTS[1])]
    grey = np.stack([pixels(3), pixels(4)])  # [2, 8, 8]: one channel may be left out

    for data, shape in ((grey.reshape(-1).tolist(), [2, 8, 8]), (grey[..., None].tolist(), [2, 8, 8, 1])):
        body = v2_body(rows)
        body["inputs"][0] = {"name": IMAGE, "shape": shape, "datatype": "UINT8", "data": data}
        response = client.post(V2, json=body)
        assert response.status_code == 200, response.text
        assert_same(v2_outputs(response.json()), expected(predictor, rows))

    # pixels of another size are resized as a decoded file of that size is
    big = pixels(9, (20, 12))
    body = v2_body(rows[:1])
    body["inputs"][0] = {"name": IMAGE, "shape": [1, 20, 12, 1], "datatype": "UINT8",
                         "data": big.reshape(-1).tolist()}
    response = client.post(V2, json=body)
    assert response.status_code == 200, response.text
    same_file = rows[0] | {IMAGE: {"b64": b64(image_png(9, (20, 12)))}}
    assert_same(v2_outputs(response.json()), expected(predictor, [same_file]))


def test_an_rgb_or_transparent_file_is_converted_to_the_models_channels(client: TestClient,
                                                                        predictor: Predictor) -> None:
    rows = [instance(seed=1) | {IMAGE: {"b64": b64(image_png(1, (8, 8), mode))}} for mode in ("RGB", "RGBA", "P")]

    response = client.post(V1, json={"instances": rows})

    assert response.status_code == 200, response.text
    assert_same(response.json()["predictions"], expected(predictor, rows))


def test_the_documented_example_image_is_one_the_model_takes(client: TestClient) -> None:
    response = client.post(V1, json={"instances": [instance() | {IMAGE: EXAMPLE_PNG}]})

    assert response.status_code == 200, response.text


def test_model_metadata_lists_image_and_text_inputs(client: TestClient) -> None:
    response = client.get(f"/v2/models/{NAME}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["inputs"] == [{"name": IMAGE, "datatype": "BYTES", "shape": [-1, 1]},
                              {"name": TEXT, "datatype": "BYTES", "shape": [-1, 1]},
                              {"name": NUMBER, "datatype": "FP32", "shape": [-1, 1]}]
    assert body["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]


# --- bad requests ---------------------------------------------------------------------------------------

PNG = image_png(0)
BIG_FILE = image_png(1, (200, 200))  # ~40 kB of noise: over the bundle's 20 kB


def _many_pixels() -> bytes:
    """A 300x300 blank image: a few hundred bytes, but over the bundle's 256x256 pixels."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (300, 300), 7).save(out, format="PNG")
    return out.getvalue()


def _corrupt_dds() -> bytes:
    """A DDS file whose pixel format flags Pillow does not know: its plugin raises NotImplementedError."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="DDS")
    data = bytearray(out.getvalue())
    data[80:84] = (0x40000000).to_bytes(4, "little")  # the DDS_PIXELFORMAT's flags
    return bytes(data)


def v1_with(**values: Any) -> dict[str, Any]:
    return {"instances": [instance() | values]}


def v2_with(k: int, tensor: dict[str, Any]) -> dict[str, Any]:
    body = v2_body([instance()])
    body["inputs"][k] = tensor
    return body


def image_tensor(data: list[Any], shape: list[int], datatype: str = "UINT8") -> dict[str, Any]:
    return {"name": IMAGE, "shape": shape, "datatype": datatype, "data": data}


BAD: list[tuple[str, str, Any, int, str]] = [
    # (id, path, body, status, what the field or message must name)
    ("v1-not-an-image", V1, v1_with(image={"b64": b64(b"just some text, no image")}), 400, "image"),
    ("v1-truncated-png", V1, v1_with(image={"b64": b64(PNG[:60])}), 400, "image"),
    ("v1-corrupt-dds", V1, v1_with(image={"b64": b64(_corrupt_dds())}), 400, "image"),
    ("v1-empty-image", V1, v1_with(image={"b64": ""}), 400, "image"),
    ("v1-not-base64", V1, v1_with(image={"b64": "***not base64***"}), 400, "image"),
    ("v1-b64-not-a-string", V1, v1_with(image={"b64": 5}), 400, "image"),
    ("v1-image-object-of-another-shape", V1, v1_with(image={"url": "http://x/y.png"}), 400, "image"),
    ("v1-image-null", V1, v1_with(image=None), 400, "image"),
    ("v1-image-number", V1, v1_with(image=3), 400, "image"),
    ("v1-image-over-max-bytes", V1, v1_with(image={"b64": b64(BIG_FILE)}), 413, "image"),
    ("v1-image-over-max-pixels", V1, "many-pixels", 413, "image"),
    ("v1-text-lone-surrogate", V1, "lone-surrogate", 400, "review"),
    ("v1-text-empty", V1, v1_with(review=""), 400, "review"),
    ("v1-text-blank", V1, v1_with(review=" \n\t "), 400, "review"),
    ("v1-text-over-max-chars", V1, v1_with(review="a" * (MAX_CHARS + 1)), 413, "review"),
    ("v1-text-number", V1, v1_with(review=5), 400, "review"),
    ("v1-text-null", V1, v1_with(review=None), 400, "review"),
    ("v1-text-list", V1, v1_with(review=["a"]), 400, "review"),
    ("v2-bytes-not-an-image", V2, v2_with(0, image_tensor([b64(b"GIF89a broken")], [1], "BYTES")), 400, "image"),
    ("v2-bytes-image-over-max-bytes", V2, v2_with(0, image_tensor([b64(BIG_FILE)], [1], "BYTES")), 413, "image"),
    ("v2-image-as-fp32", V2, v2_with(0, image_tensor([1.0], [1], "FP32")), 400, "image"),
    ("v2-pixels-three-channels", V2, v2_with(0, image_tensor([0] * 8 * 8 * 3, [1, 8, 8, 3])), 400, "image"),
    ("v2-pixels-over-255", V2, v2_with(0, image_tensor([256] * 64, [1, 8, 8])), 400, "image"),
    ("v2-pixels-negative", V2, v2_with(0, image_tensor([-1] * 64, [1, 8, 8])), 400, "image"),
    ("v2-pixels-floats", V2, v2_with(0, image_tensor([0.5] * 64, [1, 8, 8])), 400, "image"),
    ("v2-pixels-wrong-count", V2, v2_with(0, image_tensor([0] * 63, [1, 8, 8])), 400, "inputs[0].shape"),
    ("v2-pixels-flat-shape", V2, v2_with(0, image_tensor([0] * 64, [1, 64])), 400, "inputs[0].shape"),
    ("v2-pixels-zero-side", V2, v2_with(0, image_tensor([], [1, 0, 8])), 400, "inputs[0].shape"),
    ("v2-pixels-over-max-pixels", V2, v2_with(0, image_tensor([0], [1, 300, 300])), 413, "inputs[0].shape"),
    ("v2-pixels-over-batch", V2, v2_with(0, image_tensor([0], [17, 8, 8])), 413, "inputs[0].shape"),
    ("v2-text-as-int64", V2, v2_with(1, {"name": TEXT, "shape": [1], "datatype": "INT64", "data": [3]}), 400,
     "review"),
    ("v2-text-empty", V2, v2_with(1, {"name": TEXT, "shape": [1], "datatype": "BYTES", "data": [""]}), 400,
     "review"),
    ("v2-text-over-max-chars", V2, v2_with(1, {"name": TEXT, "shape": [1], "datatype": "BYTES",
                                               "data": ["b" * (MAX_CHARS + 1)]}), 413, "review"),
]


def _body(body: Any) -> bytes:
    if body == "many-pixels":
        return json.dumps(v1_with(image={"b64": b64(_many_pixels())})).encode()
    if body == "lone-surrogate":  # JSON may escape a surrogate that no UTF-8 can hold
        return json.dumps(v1_with(review="x")).replace('"review": "x"', '"review": "bad \\ud800 text"').encode()
    return json.dumps(body).encode()


@pytest.mark.parametrize(("path", "body", "status", "named"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_image_or_text_is_a_4xx_naming_the_input(client: TestClient, path: str, body: Any, status: int,
                                                       named: str) -> None:
    response = client.post(path, content=_body(body), headers={"content-type": "application/json"})

    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error", "field"} and error["error"].startswith(f"{error['field']}: ")
    if body == "lone-surrogate" and client.runtime == "kserve":  # type: ignore[attr-defined]
        named = "body"  # kserve parses a V1 body itself (orjson), which refuses it whole before the model sees it
    assert named in error["error"], error


def test_kserve_binary_bytes_of_an_image_are_the_encoded_file(bundle: Path, predictor: Predictor) -> None:
    """The V2 binary extension hands a BYTES element over as bytes: an image's are its file, never text."""
    if not HAS_KSERVE:
        pytest.skip("kserve is not installed")
    kserve = kserve_runtime.kserve
    model = kserve_runtime.BundleModel(bundle)
    model.load()
    rows = instances(2)
    files = [base64.b64decode(r[IMAGE]["b64"]) for r in rows]
    request = kserve.InferRequest(model_name=NAME, infer_inputs=[
        kserve.InferInput(IMAGE, [2], "BYTES", np.array(files, dtype=object)),
        kserve.InferInput(TEXT, [2], "BYTES", np.array([r[TEXT].encode() for r in rows], dtype=object)),
        kserve.InferInput(NUMBER, [2], "FP32", np.array([r[NUMBER] for r in rows], dtype=np.float32))])

    answer = model.predict(request)

    outputs = {o.name: o for o in answer.outputs}
    assert list(outputs["label"].data) == [p["label"] for p in expected(predictor, rows)]
    bad = kserve.InferRequest(model_name=NAME, infer_inputs=[
        kserve.InferInput(IMAGE, [1], "BYTES", np.array([files[0]], dtype=object)),
        kserve.InferInput(TEXT, [1], "BYTES", np.array([b"\xff\xfe not utf-8"], dtype=object)),
        kserve.InferInput(NUMBER, [1], "FP32", np.array([1.0], dtype=np.float32))])
    with pytest.raises(kserve_runtime.BundleRequestError) as caught:
        model.predict(bad)
    assert caught.value.error.status == 400 and caught.value.error.field.startswith("inputs[1].data")


# --- the log --------------------------------------------------------------------------------------------


def _logged_inputs(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for r in read_predictions(path):
        inputs, outputs = r["inputs"], r["outputs"]
        out[r["id"]] = {"inputs": json.loads(inputs) if isinstance(inputs, str) else inputs,
                        "outputs": json.loads(outputs) if isinstance(outputs, str) else outputs}
    return out


def test_the_log_keeps_texts_descriptors_and_embeddings_never_pixels(bundle: Path, tmp_path: Path) -> None:
    rows = instances(2)
    with runtime_client("mlops", bundle, tmp_path) as client:
        first = client.post(V1, json={"id": "a", "instances": rows})
        assert first.status_code == 200
        assert client.post(V2, json=v2_body(rows[:1], id="b")).status_code == 200
    assert "embedding" not in first.text  # logged, never answered

    logged = _logged_inputs(tmp_path / "log.sqlite")
    assert set(logged) == {"a-0", "a-1", "b"}
    for pid, row in (("a-0", rows[0]), ("a-1", rows[1]), ("b", rows[0])):
        inputs = logged[pid]["inputs"]
        assert inputs[TEXT] == row[TEXT] and inputs[NUMBER] == row[NUMBER]
        assert set(inputs[IMAGE]) == {"sha1", "shape"} and inputs[IMAGE]["shape"] == [8, 8, 1]
        described = inputs[DESCRIPTORS]
        assert described[f"{TEXT}.chars"] == len(row[TEXT])
        assert described[f"{TEXT}.words"] == len(row[TEXT].split())
        assert described[f"{TEXT}.script"] == "latin"
        assert described[f"{IMAGE}.width"] == 8 and described[f"{IMAGE}.height"] == 8
        assert 0 <= described[f"{IMAGE}.brightness"] <= 255
        embedding = logged[pid]["outputs"]["embedding"]
        assert len(embedding) == 8 and all(isinstance(v, float) for v in embedding)  # 8 wide: not projected
    assert logged["a-0"]["inputs"] == logged["b"]["inputs"]  # the same image: the same digest and descriptors
    assert logged["a-0"]["outputs"]["embedding"] == logged["b"]["outputs"]["embedding"]
    assert logged["a-0"]["outputs"]["embedding"] != logged["a-1"]["outputs"]["embedding"]
    db = sqlite3.connect(tmp_path / "log.sqlite")
    dump = "\n".join(db.iterdump())
    db.close()
    assert rows[0][IMAGE]["b64"][:40] not in dump  # neither the file nor its pixels


def test_the_bundles_payload_policy_keeps_image_bytes_and_drops_texts(tmp_path: Path) -> None:
    kept = build_media_bundle(tmp_path / "kept", payloads={"image_sample": 1.0, "text_sample": 0.0,
                                                           "embedding_dims": 4})
    rows = instances(2)
    with runtime_client("mlops", kept, tmp_path) as client:
        assert client.post(V1, json={"id": "a", "instances": rows}).status_code == 200
    logged = _logged_inputs(tmp_path / "log.sqlite")
    for pid, row in (("a-0", rows[0]), ("a-1", rows[1])):
        inputs = logged[pid]["inputs"]
        assert inputs[IMAGE]["b64"] == row[IMAGE]["b64"]  # the bytes as sent
        assert inputs[TEXT] is None  # not kept, yet described
        assert inputs[DESCRIPTORS][f"{TEXT}.chars"] == len(row[TEXT])
        assert len(logged[pid]["outputs"]["embedding"]) == 4  # projected from 8

    small = build_media_bundle(tmp_path / "small", payloads={"image_sample": 1.0, "max_bytes": 10})
    with runtime_client("mlops", small, tmp_path / "small-log") as client:
        assert client.post(V1, json={"id": "s", "instances": rows[:1]}).status_code == 200
    inputs = _logged_inputs(tmp_path / "small-log" / "log.sqlite")["s"]["inputs"]
    assert "b64" not in inputs[IMAGE] and inputs[TEXT] is None  # both over max_bytes


def test_the_projection_keeps_distances_and_is_the_same_for_every_process() -> None:
    assert embedding_projection(8, 32) is None
    a, b = embedding_projection(128, 32), embedding_projection(128, 32)
    assert a is not None and b is not None and np.array_equal(a, b)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 128)).astype(np.float32)
    full = np.linalg.norm(x[:100] - x[100:], axis=1)
    projected = np.linalg.norm(x[:100] @ a - x[100:] @ a, axis=1)
    assert 0.7 < float(np.median(projected / full)) < 1.3


# --- batching, A/B, shadow ------------------------------------------------------------------------------


async def _post_all(server: Server, requests: list[tuple[str, dict[str, Any]]],
                    headers: list[dict[str, str]] | None = None) -> list[httpx.Response]:
    app = server.app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            got = await asyncio.gather(*(client.post(path, json=body, headers=(headers or [{}] * len(requests))[k])
                                         for k, (path, body) in enumerate(requests)))
        if server.shadow is not None:
            await asyncio.to_thread(server.shadow.join)
        return list(got)


class CountingPredictor(Predictor):
    def __init__(self, bundle: Path, **kwargs: Any) -> None:
        super().__init__(bundle, **kwargs)
        self.calls: list[int] = []

    def predict(self, feeds: dict[str, np.ndarray], embedding: bool = False) -> Any:
        self.calls.append(len(feeds[IMAGE]))
        assert feeds[IMAGE].shape[1:] == (8, 8, 1) and feeds[TEXT].shape[1:] == (16,)
        assert len(feeds[TEXT + RAW_TEXT]) == len(feeds[IMAGE])
        return super().predict(feeds, embedding)


def test_concurrent_image_and_text_requests_batch_and_answer_as_alone(bundle: Path, predictor: Predictor,
                                                                      tmp_path: Path) -> None:
    counting = CountingPredictor(bundle, max_batch=16)
    server = Server(counting, PredictionLog(tmp_path / "log.sqlite"), version="3", batch_max=16, batch_wait_ms=50)
    data = [instance(seed=i, text=TEXTS[i % len(TEXTS)], age=float(i)) for i in range(12)]
    requests = [(V1, {"id": f"r{i}", "instances": [row]}) if i % 2 else (V2, v2_body([row], id=f"r{i}"))
                for i, row in enumerate(data)]

    got = asyncio.run(_post_all(server, requests))

    for i, r in enumerate(got):
        assert r.status_code == 200, r.text
        answer = r.json()["predictions"] if i % 2 else v2_outputs(r.json())
        assert_same(answer, expected(predictor, [data[i]]))
    assert sum(counting.calls) == 12 and max(counting.calls) > 1  # requests shared model calls
    logged = read_predictions(tmp_path / "log.sqlite")
    assert sorted(r["id"] for r in logged) == sorted(f"r{i}" for i in range(12))


def test_ab_and_shadow_each_read_the_texts_with_their_own_tokenizer(bundle: Path, other: Path,
                                                                   tmp_path: Path) -> None:
    champion, challenger, shadow = Predictor(bundle), Predictor(other), Predictor(other)
    assert champion.tokenizers[TEXT].get_vocab() != challenger.tokenizers[TEXT].get_vocab()
    log_path = tmp_path / "log.sqlite"
    server = Server(champion, PredictionLog(log_path), version="3", batch_max=8, batch_wait_ms=20,
                    challenger=Arm(challenger, "4", CHALLENGER), ab_percent=50, ab_key_header="X-User",
                    shadow=Arm(shadow, "5", SHADOW))
    data = [instance(seed=i, text=TEXTS[i % len(TEXTS)], age=float(20 + i)) for i in range(16)]
    requests = [(V1, {"id": f"q{i}", "instances": [row]}) for i, row in enumerate(data)]
    headers = [{"X-User": f"user-{i}"} for i in range(len(data))]

    got = asyncio.run(_post_all(server, requests, headers))

    models = {"champion": champion, "challenger": challenger}
    variants = [r.headers["x-model-variant"] for r in got]
    assert set(variants) == {"champion", "challenger"}
    for i, r in enumerate(got):
        assert r.status_code == 200, r.text
        assert_same(r.json()["predictions"], expected(models[variants[i]], [data[i]]))
    shadowed = {r["id"]: r for r in read_predictions(log_path) if r["variant"] == SHADOW}
    assert sorted(shadowed) == sorted(f"q{i}" for i in range(16))
    for i, row in enumerate(data):  # the shadow's answers are its own model's, its own tokenizer's
        outputs = shadowed[f"q{i}"]["outputs"]
        outputs = json.loads(outputs) if isinstance(outputs, str) else outputs
        assert_same([outputs], expected(shadow, [row]))


def test_a_batch_runs_on_the_model_that_checked_its_feeds(bundle: Path, other: Path) -> None:
    """A version swapped in while requests wait: each still runs on the model whose tokenizer made its ids."""
    old, new = Predictor(bundle), Predictor(other)
    rows = [instance(seed=i, text=TEXTS[i]) for i in range(4)]

    async def main() -> list[Any]:
        batcher = MicroBatcher(old, max_batch=8, max_wait_ms=20)
        waiting = [batcher.predict(old.feeds_from_rows([rows[0]]), old),
                   batcher.predict(new.feeds_from_rows([rows[1]]), new),
                   batcher.predict(old.feeds_from_rows([rows[2]]), old),
                   batcher.predict(new.feeds_from_rows([rows[3]]), new)]
        batcher.predictor = new  # the swap
        try:
            return list(await asyncio.gather(*waiting))
        finally:
            await batcher.close()

    got = asyncio.run(main())
    for k, (model, row) in enumerate(zip([old, new, old, new], rows, strict=True)):
        assert_same(got[k].instances(), expected(model, [row]))


def test_a_model_of_another_image_size_or_text_limit_is_not_compatible(bundle: Path, other: Path,
                                                                      tmp_path: Path) -> None:
    champion = Predictor(bundle)
    check_compatible(champion, Predictor(other), "--shadow")  # another tokenizer is fine: each tokenizes

    bigger = Predictor(build_media_bundle(tmp_path / "bigger", size=(16, 16)))
    with pytest.raises(MlopsError, match=r"--ab model 'reviews' takes inputs .*size', \(16, 16\)"):
        check_compatible(champion, bigger, "--ab")
    stricter = Predictor(build_media_bundle(tmp_path / "stricter", max_chars=50))
    with pytest.raises(MlopsError, match="max_chars', 50"):
        check_compatible(champion, stricter, "--shadow")
    server = Server(champion, None, challenger=Arm(Predictor(other), "2", CHALLENGER), ab_percent=10)
    with pytest.raises(MlopsError, match="both must accept the same requests"):
        server.swap(CHALLENGER, bigger, "9")


def test_the_shadows_feeds_are_its_own_token_ids(bundle: Path, other: Path) -> None:
    champion, shadow = Predictor(bundle), Predictor(other)
    feeds = champion.feeds_from_rows(instances(3))

    mine = feeds_for(shadow, feeds, champion)

    assert mine[IMAGE] is feeds[IMAGE] and mine[NUMBER] is feeds[NUMBER]  # shared, not copied
    np.testing.assert_array_equal(mine[TEXT], shadow.feeds_from_rows(instances(3))[TEXT])
    assert not np.array_equal(mine[TEXT], feeds[TEXT])
