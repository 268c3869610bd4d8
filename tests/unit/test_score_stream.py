"""Stream messages are read as rows with the server's naming rules; the log skips what it already holds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mlops.core.errors import MlopsError
from mlops.core.predlog import IdempotentLog, prediction_rows, read_predictions
from mlops.package.predictor import Predictor
from mlops.score.stream import BadMessage, StreamConfig, decode_message
from tests.serve_fixtures import build_bundle


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(build_bundle(tmp_path_factory.mktemp("score-stream") / "bundle"))


def test_a_message_of_text_fields_reads_like_a_csv_row(predictor: Predictor) -> None:
    row = decode_message({b"age": b"41", b"income": b"", b"city": b"a"}, predictor)

    assert row == {"age": 41, "income": None, "city": "a"}


def test_a_json_message_keeps_json_types(predictor: Predictor) -> None:
    row = decode_message({b"json": b'{"age": "41", "income": null, "city": 7}'}, predictor)

    assert row == {"age": "41", "income": None, "city": 7}  # judged later: "41" is refused as in a request


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({b"age": b"1", b"income": b"2"}, "city", "missing column"),
    ({b"age": b"1", b"income": b"2", b"city": b"a", b"town": b"b"}, "town", "unknown column"),
    ({b"age": b"\xff", b"income": b"2", b"city": b"a"}, "age", "not UTF-8"),
    ({b"json": b"{not json"}, "json", "invalid JSON"),
    ({b"json": b'{"age": NaN, "income": 1, "city": "a"}'}, "json", "NaN is not valid JSON"),
    ({b"json": b"[1, 2, 3]"}, "json", "must be a JSON object"),
    ({b"json": b'{"age": 1, "income": 1, "city": "a"}', b"age": b"1"}, "age", "unknown field next to 'json'"),
    ({b"json": b'{"age": 1, "income": 1}'}, "city", "missing column"),
    ({b"json": b'{"\\ud800": 1}'}, "json", "a key holds a lone UTF-16 surrogate"),
    ({b"json": b'{"age": 1, "income": 1, "city": ["\\udfff"]}'}, "city[0]", "lone UTF-16 surrogate"),
    ({b"json": b"[" * 100_000 + b"]" * 100_000}, "json", "nested too deeply"),
])
def test_a_bad_message_names_its_field(fields: dict[bytes, bytes], field: str, message: str,
                                       predictor: Predictor) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_message(fields, predictor)

    assert caught.value.field == field and message in caught.value.message


def test_the_log_writes_each_prediction_id_once(tmp_path: Path) -> None:
    log = IdempotentLog(tmp_path / "p.sqlite")
    first = prediction_rows(["s:1-0", "s:2-0"], "toy", "3", "stream", [{"a": 1}, {"a": 2}],
                            [{"label": "yes"}, {"label": "no"}], 1.0)
    again = prediction_rows(["s:2-0", "s:3-0"], "toy", "3", "stream", [{"a": 2}, {"a": 3}],
                            [{"label": "no"}, {"label": "no"}], 1.0)
    served = prediction_rows(["s:3-0"], "toy", "3", "champion", [{"a": 3}], [{"label": "no"}], 1.0)

    skipped = [log.write(first), log.write(again), log.write(served), log.write(first)]
    log.close()

    rows = read_predictions(tmp_path / "p.sqlite")
    assert skipped == [0, 1, 0, 2]
    assert sorted((r["id"], r["variant"]) for r in rows) == [
        ("s:1-0", "stream"), ("s:2-0", "stream"), ("s:3-0", "champion"), ("s:3-0", "stream")]


def _args(**kw: object) -> argparse.Namespace:
    base = dict(source="redis://127.0.0.1:6379/0", stream="in", group="g", consumer=None, output_stream=None,
                dead_letter=None, log=None, batch=64, block_ms=1000, claim_idle_ms=60_000, max_messages=None,
                idle_exit_s=None)
    return argparse.Namespace(**(base | kw))


def test_stream_names_default_from_the_input_stream() -> None:
    config = StreamConfig.from_args(_args())
    assert StreamConfig.from_args(_args(source="redis://h:6379/0?socket_timeout=5&client_name=c")).url.endswith("c")

    assert (config.output_stream, config.dead_letter) == ("in:predictions", "in:dead")
    assert config.consumer.endswith(f"-{__import__('os').getpid()}")


@pytest.mark.parametrize(("kw", "message"), [
    ({"batch": 0}, "--batch 0"), ({"max_messages": 0}, "--max-messages 0"), ({"idle_exit_s": -1.0}, "--idle-exit-s"),
    ({"source": "http://x"}, "expected a Redis URL"), ({"claim_idle_ms": -1}, "--claim-idle-ms -1"),
    ({"log": "redis://:secret@127.0.0.1:6379/0"}, r"--log redis://:\*\*\*@127.0.0.1:6379/0: .*a Redis stream cannot"),
    ({"log": "mysql://u@h/db"}, "unknown scheme 'mysql://'"),
    ({"source": "redis://127.0.0.1:abc/0"}, "--source redis://127.0.0.1:abc: the port 'abc' is not a number"),
    ({"source": "redis://:secret@127.0.0.1:6379/abc"}, r"--source 'redis://:\*\*\*@127.0.0.1:6379/abc': the path is "
                                                         "the database number, e.g. /0, not 'abc'"),
    ({"stream": ""}, "--stream '': expected the name"),
    # options redis-py raised a TypeError or a ValueError for at the first command: refused by name, up front
    ({"source": "redis://127.0.0.1:6379/0?stream=x"}, r"--source 'redis://127.0.0.1:6379/0\?stream=x': the stream "
                                                        r"to read is given by --stream \(here in\), not by the URL: "
                                                        r"drop \?stream=x"),
    ({"source": "redis://127.0.0.1:6379/0?foo=1"}, "'foo' is no option of a Redis connection URL: drop it"),
    ({"source": "unix:///run/redis.sock?foo=1"}, "'foo' is no option of a Redis connection URL"),
    ({"source": "redis://127.0.0.1:6379/0?db=x"}, "Invalid value for 'db'"),
    ({"source": "redis://127.0.0.1:6379/0?protocol=9"}, "protocol must be either 2 or 3"),
    ({"source": "redis://127.0.0.1:6379/0?decode_responses=1"}, "reads each message as bytes"),
    ({"dead_letter": "in"}, r"--dead-letter in is the input stream \(--stream in\)"),
    ({"output_stream": "in"}, r"--output-stream in is the input stream \(--stream in\)"),
])
def test_bad_stream_flags_say_what_is_expected(kw: dict[str, object], message: str) -> None:
    with pytest.raises(MlopsError, match=message):
        StreamConfig.from_args(_args(**kw))


@pytest.mark.parametrize(("given", "kept"), [
    ("postgresql://mlops@db:5432/logs", "postgresql://mlops@db:5432/logs"),  # a URL stays a URL, // and all
    ("sqlite:///logs/p.sqlite", Path("logs/p.sqlite")), ("p.sqlite", Path("p.sqlite")),
])
def test_the_stream_log_is_a_sqlite_file_or_a_postgresql_url(given: str, kept: str | Path) -> None:
    assert StreamConfig.from_args(_args(log=given)).log == kept


def test_the_recipes_log_is_the_streams_default_so_the_monitor_reads_what_it_writes() -> None:
    shared = "postgresql://mlops@db/logs"

    assert StreamConfig.from_args(_args(), recipe_log=shared).log == shared
    assert StreamConfig.from_args(_args(log="mine.sqlite"), recipe_log=shared).log == Path("mine.sqlite")
    assert StreamConfig.from_args(_args()).log is None  # the model's default log, named once the model is known
    with pytest.raises(MlopsError, match="the recipe's monitor.log redis://127.0.0.1:6379/0: "):
        StreamConfig.from_args(_args(), recipe_log="redis://127.0.0.1:6379/0")
