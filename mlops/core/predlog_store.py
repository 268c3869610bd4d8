"""Which store a prediction log lives in, and opening it: `--log` (and a recipe's log) names a SQLite file or a
PostgreSQL database, or a Redis stream.

- a plain path, or `sqlite:///PATH` (read as SQLAlchemy, MLflow and Optuna read it: three slashes then a relative
  path, four for an absolute one): the embedded SQLite log (`mlops.core.predlog`), the default;
- `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (or `postgres://`): one log shared by every replica
  (`mlops.core.predlog_pg`);
- `redis://[:PASSWORD@]HOST[:PORT]/DB[?stream=NAME]` (or `rediss://`): a stream that servers append to
  (`mlops.core.predlog_redis`). Write-only: `mlops collect URL --log STORE` lands it in a SQLite or PostgreSQL
  log, which is what the readers open (`open_reader` refuses a stream and says so).

Any other URL is refused, never taken for a path (a path `postgresql://...` once became a folder `postgresql:`).
Its own module, apart from both stores: the PostgreSQL one builds on the SQLite one's rows and reader filters.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.predlog import IdempotentLog, LogLimits, LogReader, PredictionLog
from mlops.core.predlog_pg import PgIdempotentLog, PgLogReader, PgPredictionLog, redacted
from mlops.core.predlog_redis import RedisPredictionLog

LOG_URL_SCHEMES = ("sqlite", "postgresql", "postgres", "redis", "rediss")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):/")  # two letters at least: C:/ is a path (a drive)
_LOG_URL_HELP = ("a path, sqlite:///PATH (sqlite:////ABSOLUTE/PATH), or postgresql://USER[:PASSWORD]@HOST[:PORT]"
                 "/DATABASE, or a stream redis://HOST[:PORT]/DB[?stream=NAME]")


def log_store(target: str | Path) -> tuple[str, Any]:
    """Which store `target` names: ("sqlite", Path), ("postgresql", URL) or ("redis", URL). Any other URL
    raises."""
    text = str(target)
    match = _URL.match(text)
    if match is None:
        return "sqlite", Path(target)
    scheme = match.group(1).lower()
    if scheme not in LOG_URL_SCHEMES:
        raise MlopsError(f"prediction log {log_name(text)!r}: unknown scheme '{scheme}://' (the log is "
                         f"{_LOG_URL_HELP})")
    if not text[match.end():].startswith("/"):  # postgres:/host: a slash short, or a URL that went through Path()
        raise MlopsError(f"prediction log {log_name(text)!r}: a URL takes '{scheme}://' (the log is {_LOG_URL_HELP})")
    if scheme in ("redis", "rediss"):
        return "redis", text
    if scheme != "sqlite":
        return "postgresql", text
    path = text[match.end() + 1:]
    if not path.startswith("/") or len(path) < 2:
        raise MlopsError(f"prediction log {text!r}: expected sqlite:///PATH (sqlite:////ABSOLUTE/PATH): no host, "
                         "then the file")
    return "sqlite", Path(path[1:])


def open_log(target: str | Path, max_group: int = 512, limits: LogLimits | None = None
             ) -> PredictionLog | PgPredictionLog | RedisPredictionLog:
    """The log's writer for `target`: SQLite's `PredictionLog`, PostgreSQL's or a Redis stream's, the same
    interface."""
    store, where = log_store(target)
    if store == "sqlite":
        return PredictionLog(where, max_group=max_group, limits=limits)
    if store == "redis":
        return RedisPredictionLog(where, max_group=max_group, limits=limits)
    return PgPredictionLog(where, max_group=max_group, limits=limits)


def idempotent_target(target: str | Path, source: str = "--log") -> str | Path:
    """`target` as `log_target` gives it, for a writer that skips rows the log already holds (`mlops stream`'s):
    that writer looks ids up, which a Redis stream cannot answer, so a stream is refused, saying why (and where
    it came from: `source`)."""
    store, where = log_store(target)
    if store == "redis":
        raise MlopsError(f"{source} {log_name(where)}: `mlops stream` logs a redelivered message once by looking its "
                         "id up in the log, which a Redis stream cannot answer: give a SQLite PATH or "
                         "postgresql://USER@HOST/DATABASE (the log the servers share)")
    return where


def open_idempotent_log(target: str | Path) -> IdempotentLog | PgIdempotentLog:
    """The writer that skips a row whose (id, variant) the log at `target` already holds: SQLite's or
    PostgreSQL's."""
    where = idempotent_target(target)
    return IdempotentLog(where) if isinstance(where, Path) else PgIdempotentLog(where)


def open_reader(target: str | Path, timeout: float = 30.0, archive: bool = True) -> LogReader | PgLogReader:
    """The log's reader for `target`: SQLite's `LogReader` or PostgreSQL's, the same methods and answers. A Redis
    stream has no reader: it raises, pointing at `mlops collect`."""
    store, where = log_store(target)
    if store == "redis":
        raise MlopsError(f"the prediction log {log_name(where)} is a Redis stream, which is not read directly: land "
                         f"it in a store with `mlops collect {log_name(where)} --log STORE` (a SQLite PATH or "
                         "postgresql://...) and give that store as --log")
    if store == "sqlite":
        return LogReader(where, timeout=timeout, archive=archive)
    return PgLogReader(where, timeout=timeout, archive=archive)


def is_log_url(target: str | Path) -> bool:
    """Whether `target` is a database URL rather than a file (no `is_file()` check applies to it)."""
    return log_store(target)[0] != "sqlite"


def log_target(target: str | Path, resolve: bool = False) -> str | Path:
    """A `--log` value as the code carries it: the URL as given, or the file's Path (absolute with `resolve`,
    for a key that must not depend on the working directory). Never `Path(url)`, which squashes its `//`."""
    store, where = log_store(target)
    if store == "sqlite":
        return where.resolve() if resolve else where
    return where


def log_name(target: str | Path) -> str:
    """`target` as messages show it: a URL without its password (in its user part or its query)."""
    text = str(target)
    return redacted(text) if _URL.match(text) else text


def known_keys(target: str | Path, table: str, ids: list[str]) -> set[tuple[Any, ...]]:
    """Which rows of `table` with one of `ids` the log at `target` already holds, by the key a redelivered row
    repeats: (id, variant) for predictions (a shadow row shares its id with the answered one), (id, ts) for
    feedback (an id may be labelled again later, with a new time). What `mlops collect` skips."""
    column = {"predictions": "variant", "feedback": "ts"}[table]
    wanted = sorted(set(ids))
    found: set[tuple[Any, ...]] = set()
    with open_reader(target) as reader:
        for start in range(0, len(wanted), 500):  # within SQLite's limit on bound parameters
            part = wanted[start:start + 500]
            if isinstance(reader, PgLogReader):
                rows = reader._rows(f"SELECT id, {column} FROM {table} WHERE id = ANY(%s)", (part,))
            else:
                rows = reader.db.execute(f"SELECT id, {column} FROM {table} WHERE id IN "
                                         f"({','.join('?' * len(part))})", part).fetchall()
            found.update((r[0], r[1]) for r in rows)
    return found


def known_ids(target: str | Path, ids: list[str]) -> set[str]:
    """Which of `ids` have a prediction in the log at `target`."""
    with open_reader(target) as reader:
        return reader.known_ids(ids)


def record_feedback(target: str | Path, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Record the rows whose id has a prediction in the log at `target` (through the same writer as the server);
    rows with an unknown id are counted and left out.

    A Redis stream cannot be searched for ids: every row is appended to the stream unchecked (`checked` is
    False in the result, `matched` counts all rows); the store it is collected into holds them all."""
    store, where = log_store(target)
    if store == "redis":
        log = open_log(where)
        try:
            if rows:
                log.submit("feedback", rows).result(timeout=60)
        finally:
            log.close()
        return {"log": log_name(where), "rows": len(rows), "matched": len(rows), "unknown": 0, "unknown_ids": [],
                "checked": False}
    if store == "sqlite" and not where.is_file():
        raise MlopsError(f"no prediction log at {where} (give --log PATH, or --model NAME for the default)")
    found = known_ids(where, [r[0] for r in rows])  # PostgreSQL: a missing log fails here, with its own message
    matched = [r for r in rows if r[0] in found]
    unknown = [r[0] for r in rows if r[0] not in found]
    if matched:
        log = open_log(where)
        try:
            log.submit("feedback", matched).result(timeout=60)
        finally:
            log.close()
    return {"log": log_name(where), "rows": len(rows), "matched": len(matched), "unknown": len(unknown),
            "unknown_ids": unknown[:5], "checked": True}


def log_exists(target: str | Path) -> bool:
    """Whether there is a log to read at `target`: a SQLite file until the first server writes it may not exist
    yet; a database URL always names one (its reader says what is wrong: unreachable, no tables)."""
    store, where = log_store(target)
    return store != "sqlite" or where.is_file()
