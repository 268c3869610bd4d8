"""Which MLflow store a process talks to, and the one way to get a client for it.

Importing this module does not import MLflow: `mlops validate` and `plan` stay light.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlops.core.workspace import workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient


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
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(uri, registry_uri=uri)


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:"))


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """Get or create the experiment; an embedded store keeps its artifacts under the workspace."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = f"{workspace().artifacts.as_uri()}/{name}" if is_local_store(uri) else None
    return str(client.create_experiment(name, artifact_location=location))
