"""The prediction log as a Redis stream: servers append, `mlops collect URL --log STORE` lands it in a store.

`mlops serve --log redis://HOST:PORT/DB[?stream=NAME]` (default stream `mlops:predictions`) selects it. One
writer thread per process (`QueuedLog`) sends each group of requests as one pipeline of XADDs, one entry per row
with the fields `table` (predictions or feedback) and `row` (the row's values in the table's column order, as a
JSON array); the group's futures resolve once Redis has acknowledged every XADD, so a 200 means "in the stream"
(Redis's own persistence, AOF with appendfsync, decides what survives a Redis crash). A failed pipeline fails
the group's futures (the server answers 503) and the next group reconnects.

Nothing reads the stream directly: `mlops.collect.stream.collect_stream` lands it in a SQLite or PostgreSQL log,
and that store is what monitor, errors and the other readers open (`open_reader` refuses a redis:// URL).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import Future
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mlops.core.errors import MlopsError
from mlops.core.predlog import ARCHIVED_COLUMNS, LogLimits, QueuedLog, Rows
from mlops.core.predlog_pg import LogWriteError, redacted

SCHEMES = ("redis", "rediss")
DEFAULT_STREAM = "mlops:predictions"
CONNECT_TIMEOUT_S = 10
_URL_HELP = "redis://[:PASSWORD@]HOST[:PORT]/DB[?stream=NAME]"


def check_url(url: str, what: str, expected: str = _URL_HELP) -> None:
    """Refuse, naming `what` (a flag, or "prediction log"), a redis:// URL that redis-py would answer with a bare
    ValueError (a port that is no number, an option's value it cannot read) or TypeError (an option it does not
    know, at the first command), or read otherwise than written (a path that is no database number: it quietly
    uses database 0). A unix:// URL's options are checked too; its path is its socket's."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        _check_options(url, what, expected)
    if scheme not in SCHEMES:
        return
    try:
        parts.port  # noqa: B018 - parsed on access: a port that is no number, or past 65535, raises here
    except ValueError:  # named by its host, not the URL: redacted() itself reads the port
        port = parts.netloc.rpartition(":")[2]
        raise MlopsError(f"{what} {parts.scheme}://{parts.hostname}:{port}: the port {port!r} is not a number "
                         f"from 0 to 65535 (expected {expected})") from None
    path = parts.path.strip("/")
    if path and not path.isdecimal():
        raise MlopsError(f"{what} {redacted(url)!r}: the path is the database number, e.g. /0, not {path!r} "
                         f"(expected {expected})")
    _check_options(url, what, expected)


def _check_options(url: str, what: str, expected: str) -> None:
    """The URL's query options (but `stream=`, ours) as redis-py reads them: it builds a connection (no I/O yet)
    from a pool of its own, so an option it cannot take fails here, by name, and not at the first command."""
    options = [(k, v) for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if k != "stream"]
    if not options:
        return
    try:
        import redis
    except ImportError:  # connect() says what to install
        return
    try:
        # the query replaced as text: urlunsplit drops the `//` of a URL with no host (unix:///run/redis.sock)
        pool = redis.ConnectionPool.from_url(f"{url.partition('?')[0]}?{urlencode(options)}")
        pool.make_connection()
        pool.disconnect()
    except TypeError as exc:  # "...__init__() got an unexpected keyword argument 'x'"
        unknown = re.search(r"argument '([^']+)'", str(exc))
        name = unknown.group(1) if unknown else str(exc)
        raise MlopsError(f"{what} {redacted(url)!r}: {name!r} is no option of a Redis connection URL: drop it "
                         f"(expected {expected})") from None
    except (ValueError, redis.RedisError) as exc:  # a value redis-py cannot read (?db=x, ?protocol=9)
        raise MlopsError(f"{what} {redacted(url)!r}: {exc} (expected {expected})") from None


def stream_url(url: str) -> tuple[str, str]:
    """The connection URL (without `stream=`, which redis-py would refuse as an unknown option) and the stream."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise MlopsError(f"prediction log {redacted(url)!r}: expected {_URL_HELP}")
    check_url(url, "prediction log")
    query = parse_qsl(parts.query, keep_blank_values=True)
    streams = [v for k, v in query if k == "stream"]
    if len(streams) > 1 or (streams and not streams[0]):
        raise MlopsError(f"prediction log {redacted(url)!r}: give one non-empty stream=NAME ({_URL_HELP})")
    rest = urlencode([(k, v) for k, v in query if k != "stream"])
    return urlunsplit(parts._replace(query=rest)), streams[0] if streams else DEFAULT_STREAM


def connect(url: str, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A redis-py client of the stream's server, checked with a PING; an unreachable one is the user's to fix."""
    try:
        import redis  # here: only a log on Redis needs the client
    except ImportError:
        raise MlopsError(f"the prediction log {redacted(url)} is on Redis, which needs the redis package: "
                         "pip install redis") from None
    address, _ = stream_url(url)  # its options checked
    client = redis.Redis.from_url(address, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise MlopsError(f"cannot open the prediction log {redacted(url)}: {exc} (expected {_URL_HELP} of a "
                         "reachable server)") from None
    return client


def entry(table: str, row: tuple[Any, ...]) -> dict[str, str]:
    """One row as a stream entry's fields."""
    return {"table": table, "row": json.dumps(list(row))}


def entry_row(fields: dict[Any, Any]) -> tuple[str, tuple[Any, ...]]:
    """A stream entry's table and row; one that is not an entry of the log raises ValueError."""
    decoded = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
               for k, v in fields.items()}
    table = decoded.get("table")
    if table not in ARCHIVED_COLUMNS:
        raise ValueError(f"no table {table!r} in the prediction log")
    row = json.loads(decoded["row"])
    if not isinstance(row, list) or len(row) != len(ARCHIVED_COLUMNS[table]):
        raise ValueError(f"a {table} row has {len(ARCHIVED_COLUMNS[table])} values")
    # each value of the column's type: a value the store refuses would fail its whole batch at every redelivery
    for name, value, kinds in zip(ARCHIVED_COLUMNS[table], row, _KINDS[table], strict=True):
        if not isinstance(value, kinds) or isinstance(value, bool) or (name == "id" and not value):
            raise ValueError(f"a {table} row's {name} is {value!r}")
    return table, tuple(row)


_NUMBER = (int, float)
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_KINDS: dict[str, tuple[tuple[type, ...], ...]] = {  # in ARCHIVED_COLUMNS' order
    "predictions": (_TEXT, _NUMBER, _TEXT, _OPTIONAL_TEXT, _TEXT, _TEXT, _TEXT, _NUMBER),
    "feedback": (_TEXT, _NUMBER, _OPTIONAL_TEXT, (int, float, type(None)), _OPTIONAL_TEXT),
}


class RedisPredictionLog(QueuedLog):
    """The prediction log's writer on a Redis stream: `submit(table, rows)` returns a future resolved once Redis
    acknowledged the rows' XADDs (or failed: the server answers 503). The same interface as SQLite's
    `PredictionLog`; `path` is the URL."""

    # what the server's metrics read from SQLite's writer; nothing of the kind here
    wal_truncations = 0
    wal_truncations_busy = 0
    wal_truncate_seconds = 0.0

    def __init__(self, url: str, max_group: int = 512, limits: LogLimits | None = None) -> None:
        self.path = url
        self.max_group = max_group
        self.limits = limits or LogLimits()  # retention is the collector's store's concern (and the stream's MAXLEN)
        _, self.stream = stream_url(url)
        self._client: Any = connect(url)  # a wrong URL fails here, at startup, not at the first request
        self._start_writer("prediction-log-redis")

    def _writer(self) -> None:
        stopping = False
        while not stopping:
            stopping, records, built = self._group(self._queue.get())  # what waits joins this pipeline
            if not records:
                continue
            entries = [entry(table, row) for (table, _, _), rows in zip(records, built, strict=True)
                       if not isinstance(rows, BaseException) for row in rows]
            self._settle(records, built, self._send(entries))
        if self._client is not None:
            self._client.close()

    def _send(self, entries: list[dict[str, str]]) -> LogWriteError | None:
        """XADD a group's entries in one pipeline (one round trip); the error that kept them out, or None once
        Redis acknowledged them all. A failure drops the connection: the next group connects again."""
        import redis  # connect() imported it already: only the exception types are needed here

        if not entries:
            return None
        try:
            if self._client is None:
                self._client = connect(self.path)
            pipe = self._client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
            pipe.execute()  # raises on the first failed command
            return None
        # a value Redis cannot take (a str that is no UTF-8) fails the group, not the writer (predlog.UNWRITABLE)
        except (redis.RedisError, MlopsError, OSError, ValueError) as exc:  # every waiting request answers 503
            if self._client is not None:
                try:
                    self._client.close()
                except redis.RedisError:
                    pass
            self._client = None
            error = LogWriteError(f"{type(exc).__name__}: {str(exc).strip()}")
            error.__cause__ = exc
            return error

    def sizes(self) -> dict[str, int]:
        """Bytes on disk by part: none that this process can see (Redis's INFO tells them)."""
        return {}

    def submit(self, table: str, rows: Rows) -> Future[None]:
        if table not in ARCHIVED_COLUMNS:
            raise ValueError(f"no table {table!r} in the prediction log")
        return super().submit(table, rows)
