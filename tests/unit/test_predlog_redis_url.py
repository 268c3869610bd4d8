"""`--log redis://...`: which store it names, the stream it writes, its password kept out of messages, and the
readers' refusal (a stream is read through `mlops collect`, never directly)."""

from __future__ import annotations

import pytest

from mlops.cli.collect import cmd_collect, http_address
from mlops.cli.parser import build_parser
from mlops.core.errors import MlopsError
from mlops.core.predlog_redis import DEFAULT_STREAM, connect, entry, entry_row, stream_url
from mlops.core.predlog_store import is_log_url, log_name, log_store, log_target, open_reader


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "rediss://:pw@cache:6380/2?stream=s", "REDIS://h/1"])
def test_a_redis_url_names_the_redis_store_as_given(url: str) -> None:
    assert log_store(url) == ("redis", url)
    assert is_log_url(url)
    assert log_target(url) == url  # never Path(url), which would squash its //


@pytest.mark.parametrize(("url", "address", "stream"), [
    ("redis://cache:6379/0", "redis://cache:6379/0", DEFAULT_STREAM),
    ("redis://cache:6379/3?stream=shop:preds", "redis://cache:6379/3", "shop:preds"),
    ("redis://cache/0?stream=a&health_check_interval=5", "redis://cache/0?health_check_interval=5", "a"),
])
def test_the_stream_comes_from_the_query_and_is_kept_from_the_client(url: str, address: str, stream: str) -> None:
    assert stream_url(url) == (address, stream)


@pytest.mark.parametrize(("url", "message"), [
    ("redis://cache/0?stream=", "one non-empty stream"),
    ("redis://cache/0?stream=a&stream=b", "one non-empty stream"),
    ("redis://cache/logs", "the database number"),
    ("redis:///0", "expected redis://"),
    ("redis://cache:abc/0", "prediction log redis://cache:abc: the port 'abc' is not a number from 0 to 65535"),
    ("redis://:s3cret@cache:99999/0", "the port '99999' is not a number from 0 to 65535"),
])
def test_a_malformed_redis_url_is_refused_with_the_expected_form(url: str, message: str) -> None:
    with pytest.raises(MlopsError, match=message):
        stream_url(url)


def test_an_option_redis_py_cannot_read_is_refused_naming_the_log() -> None:
    with pytest.raises(MlopsError, match=r"prediction log 'redis://cache/0\?db=x': Invalid value for 'db'"):
        connect("redis://cache/0?db=x")  # refused before any connection
    # an option it does not know was a TypeError at the first command
    with pytest.raises(MlopsError, match=r"prediction log 'redis://:\*\*\*@cache/0\?stream=a&foo=1': 'foo' is no "
                                         r"option of a Redis connection URL: drop it \(expected redis://"):
        connect("redis://:s3cret@cache/0?stream=a&foo=1")


def test_the_password_is_redacted_in_names_and_errors() -> None:
    assert log_name("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert log_name("redis://user:s3cret@cache/0?stream=x") == "redis://user:***@cache/0?stream=x"
    with pytest.raises(MlopsError) as err:
        stream_url("redis://:s3cret@cache/x")
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize("argv", [
    ["collect", "redis://cache/0?password=s3cret&foo=1", "--log", "x.sqlite"],  # an option redis-py does not know
    ["collect", "redis://cache/0?db=x&password=s3cret", "--log", "x.sqlite"],  # an option's value it cannot read
    ["collect", "redis://cache/logs?password=s3cret", "--log", "x.sqlite"],  # a path that is no database number
])
def test_a_password_in_the_query_is_redacted_in_errors(argv: list[str]) -> None:
    """redis-py reads `?password=`: the option checks' errors printed it as written."""
    with pytest.raises(MlopsError, match=r"password=\*\*\*") as err:
        cmd_collect(build_parser().parse_args(argv))
    assert "s3cret" not in str(err.value)
    assert log_name("redis://cache/0?password=s3cret") == "redis://cache/0?password=***"


def test_a_stream_has_no_reader_and_the_refusal_says_how_to_read_it() -> None:
    with pytest.raises(MlopsError, match=r"mlops collect redis://:\*\*\*@cache:6379/0 --log STORE") as err:
        open_reader("redis://:s3cret@cache:6379/0")
    assert "s3cret" not in str(err.value)


def test_an_entry_round_trips_a_row_and_rejects_what_is_not_one() -> None:
    row = ("p1", 1733300000.123456, "toy", None, "shadow", '{"a": 1}', '{"label": "x"}', 0.25)
    fields = {k.encode(): v.encode() for k, v in entry("predictions", row).items()}  # as redis-py returns them
    assert entry_row(fields) == ("predictions", row)
    with pytest.raises(ValueError, match="no table"):
        entry_row({b"table": b"users", b"row": b"[]"})
    with pytest.raises(ValueError, match="5 values"):
        entry_row({b"table": b"feedback", b"row": b'["p1", 1.0]'})
    for row, column in ((b'["", 1.0, null, null, null]', "id"), (b'["p1", "noon", null, null, null]', "ts"),
                        (b'["p1", 1.0, null, "high", null]', "value"), (b'["p1", true, null, null, null]', "ts")):
        with pytest.raises(ValueError, match=f"row's {column} is"):
            entry_row({b"table": b"feedback", b"row": row})
    assert entry_row({b"table": b"feedback", b"row": b'["p1", 1, "yes", 0.5, null]'})[1] == ("p1", 1, "yes", 0.5, None)


@pytest.mark.parametrize(("argv", "message"), [
    (["collect", "--log", "x.sqlite"], "either a stream URL"),
    (["collect", "redis://h/0", "--http", "8081", "--log", "x.sqlite"], "either a stream URL"),
    (["collect", "--http", "host:port", "--log", "x.sqlite"], r"expected \[HOST:\]PORT"),
    (["collect", "redis://h/0", "--log", "x.sqlite", "--batch", "0"], "a batch holds 1 entry or more"),
    (["collect", "redis://h/0", "--log", "x.sqlite", "--claim-idle", "-1"], "0 or more"),
    (["collect", "redis://h/0", "--log", "x.sqlite", "--claim-idle", "nan"], "--claim-idle nan: .* 0 or more"),
    (["collect", "redis://h/0", "--log", "x.sqlite", "--claim-idle", "inf"], "--claim-idle inf: .* 0 or more"),
    (["collect", "--http", "8081", "--once", "--log", "x.sqlite"], "with --http .* drop --once"),
    (["collect", "redis://h:abc/0", "--log", "x.sqlite"], "prediction log redis://h:abc: the port 'abc'"),
])
def test_collect_takes_exactly_one_source(argv: list[str], message: str) -> None:
    with pytest.raises(MlopsError, match=message):
        cmd_collect(build_parser().parse_args(argv))


def test_an_http_address_defaults_to_loopback() -> None:
    assert http_address("8081") == ("127.0.0.1", 8081)
    assert http_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert http_address("[::1]:9000") == ("::1", 9000)
