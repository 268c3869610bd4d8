"""Batch and stream scoring of an image + text model, with real ONNX Runtime, Pillow and tokenizers: images as
Parquet bytes, base64 or file paths (relative to the input file, or absolute), texts in a column or a message
field; every row is scored as the server would answer it, or reported with the column at fault."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops.core.predlog import read_predictions
from mlops.package.predictor import Predictor
from mlops.score.batch import score_local
from mlops.score.rows import output_fields
from mlops.score.source import open_input
from mlops.score.stream import BadMessage, StreamConfig, consume, decode_message
from tests.media_fixtures import IMAGE, MAX_CHARS, NAME, NUMBER, TEXT, b64, build_media_bundle, image_png
from tests.net import REDIS_URL, drop_stream, redis_client

TEXTS = ["great coffee, fresh and strong", "awful packaging arrived broken", "my dog loves these treats",
         "NA", "stale chips", "fast delivery good quality"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_media_bundle(tmp_path_factory.mktemp("score-media") / "bundle")


@pytest.fixture(scope="module")
def predictor(bundle: Path) -> Predictor:
    return Predictor(bundle)


def answer(predictor: Predictor, image: bytes, text: str, age: float | None) -> dict[str, Any]:
    """What the server answers for this row."""
    row = {IMAGE: {"b64": b64(image)}, TEXT: text, NUMBER: age}
    return predictor.predict(predictor.feeds_from_rows([row])).instances()[0]


def assert_scored(out: pd.DataFrame, i: int, expected: dict[str, Any]) -> None:
    assert out["error"][i] is None, out["error"][i]
    assert out["label"][i] == expected["label"]
    np.testing.assert_allclose(out["probabilities"][i], expected["probabilities"], atol=1e-6)


def test_no_embedding_column_in_the_output(predictor: Predictor) -> None:
    assert [f[0] for f in output_fields(predictor.meta)] == ["label", "probabilities"]


def test_parquet_of_image_bytes_and_texts_scores_every_row_or_names_its_column(
        bundle: Path, predictor: Predictor, tmp_path: Path) -> None:
    images = [image_png(i) for i in range(8)]
    images[2] = b"\x89PNG\r\n\x1a\n but then nothing"  # a corrupt file
    images[5] = image_png(9, (200, 200))  # over the bundle's 20 kB
    texts = [*TEXTS[:4], "", "x" * (MAX_CHARS + 1), TEXTS[5], None]
    texts_bytes = [t.encode() if t is not None else None for t in texts]
    texts_bytes[6] = b"\xff\xfe not UTF-8"
    ages = [30.0, None, 50.0, 41.0, 20.0, 33.0, 44.0, 55.0]
    table = pa.table({"key": [f"k{i}" for i in range(8)], IMAGE: pa.array(images, pa.binary()),
                      TEXT: pa.array(texts_bytes, pa.binary()), NUMBER: pa.array(ages, pa.float64())})
    pq.write_table(table, tmp_path / "in.parquet")

    result = score_local(open_input(tmp_path / "in.parquet"), bundle, "2", tmp_path / "out.parquet", chunk_rows=3,
                         id_column="key", progress=False)
    out = pd.read_parquet(tmp_path / "out.parquet")

    assert out["id"].tolist() == [f"k{i}" for i in range(8)] and "embedding" not in out
    errors = dict(zip(out["row"], out["error"], strict=True))
    assert errors[2].startswith(f"{IMAGE}: not a readable image")
    assert errors[4] == f"{TEXT}: the text is empty (value b'')"  # a binary column: UTF-8 bytes are its texts
    assert errors[5].startswith(f"{IMAGE}: the image is") and "over the limit of 20,000" in errors[5]
    assert errors[5].endswith(f"; {TEXT}: the text has {MAX_CHARS + 1} characters, over the limit of {MAX_CHARS}"
                              f" (value b'{'x' * 35}...)")
    assert errors[6] == f"{TEXT}: text must be UTF-8 (value b'\\xff\\xfe not UTF-8')"
    assert errors[7] == f"{TEXT}: expected a text string, got NoneType"
    for i in (0, 1, 3):  # "NA" is a text like any other
        assert_scored(out, i, answer(predictor, images[i], texts[i], ages[i]))
    assert (result.rows, result.scored, result.failed) == (8, 3, 5)
    assert result.errors_by_column == {IMAGE: 2, TEXT: 3}


def test_csv_of_image_paths_reads_them_relative_to_the_file_or_absolute(bundle: Path, predictor: Predictor,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(image_png(i))
    (tmp_path / "img" / "notes.png").write_text("not an image, whatever its name")
    (tmp_path / "img" / "big.png").write_bytes(image_png(9, (200, 200)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "abs.jpg").write_bytes(image_png(7))  # a PNG named .jpg: Pillow reads what it is
    frame = pd.DataFrame({
        IMAGE: ["img/0.png", "img/1.png", str(elsewhere / "abs.jpg"), "img/missing.png", "img/notes.png",
                "img/big.png", b64(image_png(3)), "img/2.png"],
        TEXT: [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3], TEXTS[4], TEXTS[5], "NA", "  "],
        NUMBER: ["40", "", "NA", "41", "42", "43", "44", "45"],
    })
    data = tmp_path / "data"
    data.mkdir()
    (data / "img").symlink_to(tmp_path / "img")  # relative paths are the input file's directory's
    frame.to_csv(data / "in.csv", index=False)

    result = score_local(open_input(data / "in.csv"), bundle, None, tmp_path / "out.parquet", progress=False)
    out = pd.read_parquet(tmp_path / "out.parquet")

    assert_scored(out, 0, answer(predictor, image_png(0), TEXTS[0], 40.0))
    assert_scored(out, 1, answer(predictor, image_png(1), TEXTS[1], None))
    assert_scored(out, 2, answer(predictor, image_png(7), TEXTS[2], None))
    assert_scored(out, 6, answer(predictor, image_png(3), "NA", 44.0))  # base64 in a CSV cell
    assert out["error"][3] == f"{IMAGE}: image file not found: {data / 'img' / 'missing.png'}"
    assert out["error"][4].startswith(f"{IMAGE}: not a readable image") and out["error"][4].endswith(
        "(file img/notes.png)")
    assert out["error"][5].startswith(f"{IMAGE}: the image is") and out["error"][5].endswith("(file img/big.png)")
    assert out["error"][7] == f"{TEXT}: the text is empty (value '  ')"
    assert result.errors_by_column == {IMAGE: 3, TEXT: 1}


# --- streams ------------------------------------------------------------------------------------------------


def test_a_message_holds_an_image_as_bytes_base64_or_b64_json_and_a_text_as_it_is(predictor: Predictor) -> None:
    png = image_png(1)
    for image in (png, b64(png).encode(), json.dumps({"b64": b64(png)}).encode()):
        row = decode_message({IMAGE.encode(): image, TEXT.encode(): b"NA", NUMBER.encode(): b"41"}, predictor)
        assert row[TEXT] == "NA" and row[NUMBER] == 41  # a text's "NA" is no missing value
        feeds = predictor.feeds_from_rows([row])
        assert feeds[IMAGE].shape == (1, 8, 8, 1)

    with pytest.raises(BadMessage) as caught:
        decode_message({IMAGE.encode(): png, TEXT.encode(): b"\xff bad", NUMBER.encode(): b"1"}, predictor)
    assert caught.value.field == TEXT and "not UTF-8" in caught.value.message
    with pytest.raises(BadMessage) as caught:
        decode_message({IMAGE.encode(): b'{"b64": ', TEXT.encode(): b"ok", NUMBER.encode(): b"1"}, predictor)
    assert caught.value.field == IMAGE and "invalid JSON" in caught.value.message


@pytest.fixture
def redis_stream() -> Iterator[tuple[Any, str]]:
    client = redis_client()
    name = f"mlops-test-media-{uuid.uuid4().hex[:12]}"
    yield client, name
    drop_stream(client, name)
    client.close()


def test_a_stream_of_images_and_texts_is_scored_logged_and_dead_lettered(bundle: Path, predictor: Predictor,
                                                                          redis_stream: tuple[Any, str],
                                                                          tmp_path: Path) -> None:
    r, stream = redis_stream
    png = [image_png(i) for i in range(4)]
    messages = [
        {IMAGE: png[0], TEXT: TEXTS[0], NUMBER: "40"},                                  # raw bytes
        {IMAGE: b64(png[1]), TEXT: TEXTS[1], NUMBER: ""},                               # base64
        {"json": json.dumps({IMAGE: {"b64": b64(png[2])}, TEXT: TEXTS[2], NUMBER: 3})},  # a V1 instance
        {IMAGE: b"GIF89a broken", TEXT: TEXTS[3], NUMBER: "1"},                         # not an image
        {IMAGE: png[3], TEXT: "", NUMBER: "1"},                                         # empty text
        {IMAGE: png[3], TEXT: b"\xff\xfe", NUMBER: "1"},                                # not UTF-8
        {"json": json.dumps({IMAGE: {"b64": b64(png[3])}, TEXT: "y" * (MAX_CHARS + 1), NUMBER: 1})},
    ]
    ids = [r.xadd(stream, m).decode() for m in messages]
    config = StreamConfig(url=REDIS_URL, stream=stream, group="g", consumer="c1",
                          output_stream=f"{stream}:predictions", dead_letter=f"{stream}:dead", log=tmp_path / "log.sqlite", batch=16, block_ms=100,
                          max_messages=len(messages))

    result = consume(config, bundle, "2", install_signals=False)

    assert (result.handled, result.predicted, result.dead) == (7, 3, 4)
    outputs = {f[b"source_id"].decode(): f for _, f in r.xrange(f"{stream}:predictions")}
    expected = [answer(predictor, png[0], TEXTS[0], 40.0), answer(predictor, png[1], TEXTS[1], None),
                answer(predictor, png[2], TEXTS[2], 3.0)]
    for k in range(3):
        assert outputs[ids[k]][b"label"].decode() == expected[k]["label"]
        np.testing.assert_allclose(json.loads(outputs[ids[k]][b"probabilities"]), expected[k]["probabilities"],
                                   atol=1e-6)
        assert b"embedding" not in outputs[ids[k]]
    dead = {f[b"source_id"].decode(): f for _, f in r.xrange(f"{stream}:dead")}
    assert {k: (dead[ids[k]][b"field"].decode()) for k in range(3, 7)} == {3: IMAGE, 4: TEXT, 5: TEXT, 6: TEXT}
    assert b"not a readable image" in dead[ids[3]][b"error"] and b"empty" in dead[ids[4]][b"error"]
    assert b"over the limit" in dead[ids[6]][b"error"]
    replay = json.loads(dead[ids[5]][b"payload"])  # binary values travel as {"b64": ...}: it can be sent again
    assert replay[IMAGE] == {"b64": b64(png[3])} and replay[TEXT] == {"b64": b64(b"\xff\xfe")}
    logged = {row["id"]: row for row in read_predictions(tmp_path / "log.sqlite")}
    assert sorted(logged) == sorted(f"{stream}:{i}" for i in ids[:3])
    first = logged[f"{stream}:{ids[0]}"]["inputs"]
    first = json.loads(first) if isinstance(first, str) else first
    assert first[TEXT] == TEXTS[0] and first[NUMBER] == 40.0 and set(first[IMAGE]) == {"sha1", "shape"}
    assert all(logged[p]["model"] == NAME for p in logged)
