"""Throwaway PostgreSQL databases for the tests that need a real server.

Needs PostgreSQL on 127.0.0.1:5432 with trust auth for user `postgres` (or $MLOPS_TEST_POSTGRES_DSN, e.g. a CI
service container) and psycopg2 (the dev extra). Without them a test is skipped, except in CI (`CI=true`), where
it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import pytest

# where to create the throwaway database (override for a CI service container)
PG_ADMIN_DSN = os.environ.get("MLOPS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(reason: str) -> NoReturn:
    """Skip the test for want of PostgreSQL (or a driver); fail it when CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL is required here)")
    pytest.skip(reason)


@contextmanager
def throwaway_database(prefix: str) -> Iterator[tuple[Any, str]]:
    """A fresh, empty database named PREFIX_<12 hex digits>: yields the admin connection's info (a psycopg2
    ConnectionInfo: user, host, port) and the database's name; dropped on exit."""
    try:
        import psycopg2
    except ImportError:
        unavailable("psycopg2 is not installed (pip install psycopg2-binary, part of the dev extra)")
    try:
        admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL is unreachable at {PG_ADMIN_DSN}: {str(exc).strip()}")
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield admin.info, name
    finally:
        with admin.cursor() as cur:
            # FORCE (PostgreSQL 13+) ends connections a dying server may still hold
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def throwaway_url(prefix: str, scheme: str = "postgresql") -> Iterator[str]:
    """`throwaway_database`'s database as a URL, SCHEME://USER@HOST:PORT/NAME; dropped on exit."""
    with throwaway_database(prefix) as (info, name):
        yield f"{scheme}://{info.user}@{info.host}:{info.port}/{name}"
