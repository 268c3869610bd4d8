"""The production loop's state on PostgreSQL: shared plumbing for the stores that follow the prediction log.

When the log a command reads is a postgresql:// URL, the loop's state (audit trail, monitor state) lives in the
same database, in its own `mlops_*` tables, and PostgreSQL advisory locks take the place of `flock`. The
connection and URL redaction are the prediction log's (`predlog_pg`), so messages read the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlops.core.predlog_pg import connect, redacted
from mlops.core.predlog_store import log_store

__all__ = ["advisory_key", "connect", "ensure_schema", "is_postgres", "redacted", "xact_lock"]

# creating the state tables: one process at a time (CREATE TABLE IF NOT EXISTS is not atomic under a race);
# distinct from predlog_pg's keys (0x6D6C6F7073_0001/2)
STATE_SCHEMA_LOCK = 0x6D6C6F7073_0010


def is_postgres(target: str | None) -> bool:
    """Whether a log target (a path or URL) is a PostgreSQL log, whose database then holds the loop's state."""
    return bool(target) and log_store(str(target))[0] == "postgresql"  # the log's own reading: any case


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key for a name (e.g. ("audit",) or ("monitor", model)): the same in
    every process and host, unlike Python's salted hash()."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def ensure_schema(db: Any, present_sql: str, schema_sql: str) -> None:
    """Create a store's tables if missing, under an advisory lock; tables already there are left alone."""
    with db.cursor() as cur:
        cur.execute(present_sql)
        if not cur.fetchone()[0]:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (STATE_SCHEMA_LOCK,))
            cur.execute(schema_sql)
    db.commit()


@contextmanager
def xact_lock(db: Any, key: int) -> Iterator[Any]:
    """A transaction holding an exclusive advisory lock on KEY: committed on success, rolled back on error; the
    lock ends with the transaction, so a crashed process never leaves it held."""
    try:
        with db.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        yield db
        db.commit()
    except BaseException:
        db.rollback()
        raise
