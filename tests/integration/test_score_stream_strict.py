"""`mlops stream` against the real local redis-server meets a request's rules on categories: a number where a
category belongs is dead-lettered naming the field, an unseen category is scored as missing, counted and named on
its output record (data.categories.unseen: impute), and a category with the training's spaces is trimmed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops.core.errors import MlopsError
from mlops.score.stream import StreamConfig, consume
from tests.net import REDIS_URL, drop_stream, redis_client
from tests.serve_fixtures import build_bundle, training_frame

pytestmark = pytest.mark.integration

ROW = {"age": 41.0, "income": 50.0, "city": "a"}


@pytest.fixture
def stream() -> Iterator[tuple[Any, str]]:
    client = redis_client()
    name = f"mlops-test-{uuid.uuid4().hex[:12]}"
    try:
        yield client, name
    finally:
        drop_stream(client, name)
        client.close()


def test_stream_rows_meet_the_category_rules(stream: tuple[Any, str], tmp_path: Path) -> None:
    r, name = stream
    frame = training_frame()
    frame["city"] = frame["city"].replace({"c": "  gold "})
    bundle = build_bundle(tmp_path / "bundle", frame=frame, data={"categories": {"unseen": "impute"}})
    sent = {"number": r.xadd(name, {"json": json.dumps(ROW | {"city": 3})}),
            "unseen": r.xadd(name, {"age": "41", "income": "50", "city": "platinum"}),
            "spaced": r.xadd(name, {"json": json.dumps(ROW | {"city": "gold "})}),
            "plain": r.xadd(name, {"json": json.dumps(ROW | {"city": "gold"})})}
    config = StreamConfig(url=REDIS_URL, stream=name, group="g", consumer="c", output_stream=f"{name}:predictions",
                          dead_letter=f"{name}:dead", log=tmp_path / "p.sqlite", block_ms=100, max_messages=4,
                          idle_exit_s=5)

    result = consume(config, bundle, None, install_signals=False)

    assert (result.predicted, result.dead, result.unseen) == (3, 1, 1)
    outputs = {fields[b"source_id"]: fields for _, fields in r.xrange(f"{name}:predictions")}
    assert outputs[sent["unseen"]][b"imputed"] == b"city"
    assert b"imputed" not in outputs[sent["plain"]]
    assert outputs[sent["spaced"]][b"probabilities"] == outputs[sent["plain"]][b"probabilities"]
    (_, dead), = r.xrange(f"{name}:dead")
    assert dead[b"source_id"] == sent["number"] and dead[b"field"] == b"city"
    assert b"expected a string category for 'city', got the number 3" in dead[b"error"]


def test_poison_messages_are_dead_lettered_and_the_consumer_goes_on(stream: tuple[Any, str], tmp_path: Path) -> None:
    r, name = stream
    sent = {"key": r.xadd(name, {"json": '{"\\ud800": 1}'}),  # JSON's escape of a lone surrogate
            "value": r.xadd(name, {"json": json.dumps(ROW | {"city": "\ud800"})}),
            "deep": r.xadd(name, {"json": "[" * 100_000 + "]" * 100_000}),
            "deep value": r.xadd(name, {"json": json.dumps(ROW)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"}),
            "plain": r.xadd(name, {"json": json.dumps(ROW)})}
    config = StreamConfig(url=REDIS_URL, stream=name, group="g", consumer="c", output_stream=f"{name}:predictions",
                          dead_letter=f"{name}:dead", log=tmp_path / "p.sqlite", block_ms=100, max_messages=5,
                          idle_exit_s=5)

    result = consume(config, build_bundle(tmp_path / "bundle"), None, install_signals=False)

    assert (result.handled, result.predicted, result.dead) == (5, 1, 4)
    dead = {fields[b"source_id"]: fields for _, fields in r.xrange(f"{name}:dead")}
    assert dead[sent["key"]][b"field"] == b"json" and b"a key holds a lone UTF-16 surrogate" in dead[sent["key"]][b"error"]
    assert dead[sent["value"]][b"field"] == b"city" and b"lone UTF-16 surrogate" in dead[sent["value"]][b"error"]
    for deep in ("deep", "deep value"):
        assert dead[sent[deep]][b"field"] == b"json" and dead[sent[deep]][b"error"] == b"invalid JSON: nested too deeply"
    assert r.xpending(name, "g")["pending"] == 0


def test_a_database_redis_has_not_is_refused_naming_the_source(tmp_path: Path) -> None:
    url = REDIS_URL.rsplit("/", 1)[0] + "/99"  # a default redis-server has 16
    config = StreamConfig(url=url, stream="s", group="g", consumer="c", output_stream="s:predictions",
                          dead_letter="s:dead", log=tmp_path / "p.sqlite", block_ms=100, max_messages=1, idle_exit_s=1)

    with pytest.raises(MlopsError, match=r"--source redis://.*/99 --stream s: Redis refused the consumer: DB index"):
        consume(config, build_bundle(tmp_path / "bundle"), None, install_signals=False)
