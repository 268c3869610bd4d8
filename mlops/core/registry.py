"""Which MLflow store a process talks to, the one way to get a client for it, and the lock that makes what
several processes do to one store safe (creating it, registering a model).

Importing this module does not import MLflow: `mlops validate` and `plan` stay light.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlops.core.workspace import workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

_ready: set[str] = set()  # the stores this process has seen created and migrated


def tracking_uri(configured: str | None = None) -> str:
    """`configured` (a recipe's `tracking.uri`), else MLFLOW_TRACKING_URI, else sqlite under the workspace.

    Always absolute: MLflow's own default is relative to whatever the current directory happens to be.
    """
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    ws = workspace()
    ws.root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{ws.mlflow_db}"


def registry_client(uri: str | None = None) -> MlflowClient:
    """A client whose tracking AND registry store is `uri` (default: `tracking_uri()`).

    Both are named on purpose: a client left to default its registry takes the process-wide URI that
    `mlflow.set_registry_uri` last set, which is another store whenever one process has used two.

    Its calls are not wrapped in `mlops.core.retry`: against a tracking server MLflow's REST client already
    retries refused or reset connections and 408/429/5xx answers with backoff (urllib3, up to
    MLFLOW_HTTP_REQUEST_MAX_RETRIES = 7 by default, about 4 minutes), and never a 4xx (a wrong name, a missing
    version). A second loop around it would multiply those waits.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if uri in _ready or not uri.startswith(("sqlite:", "postgresql")):  # a tracking server creates its own store
        return MlflowClient(uri, registry_uri=uri)
    # MLflow creates (migrates) a database store when a client first opens it: two processes doing that at
    # once both fail, and can leave the store half-migrated for good
    with store_lock(uri, "init"):
        client = MlflowClient(uri, registry_uri=uri)
        client.search_registered_models(max_results=1)  # the registry's store is opened lazily
    _ready.add(uri)
    return client


@contextmanager
def store_lock(uri: str, purpose: str) -> Iterator[None]:
    """Hold the store's exclusive lock for `purpose` (`init`, `register`) across processes: an advisory lock
    in a PostgreSQL store, a file lock beside a sqlite one, else (a tracking server) a file lock in the
    workspace, which serialises the processes of one machine only."""
    if uri.startswith("postgresql"):
        with _advisory_lock(uri, purpose):
            yield
        return
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        db = Path(make_url(uri).database or "mlflow.db").resolve()
        path = db.with_name(f"{db.name}.{purpose}.lock")
    else:
        path = workspace().root / f"mlflow-{purpose}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies holding it
        yield
    finally:
        os.close(fd)


@contextmanager
def _advisory_lock(uri: str, purpose: str) -> Iterator[None]:
    """A transaction-scoped advisory lock: PostgreSQL releases it at commit, or when the connection drops."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(f"mlops.store.{purpose}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield
    finally:
        engine.dispose()


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment; an embedded store keeps its artifacts under the workspace."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    from mlflow.exceptions import MlflowException

    location = f"{workspace().artifacts.as_uri()}/{name}" if is_local_store(uri) else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # another process created it since we looked
        return str(client.get_experiment_by_name(name).experiment_id)
