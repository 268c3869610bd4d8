"""Which MLflow store a run talks to. Importing this module does not import MLflow."""

from __future__ import annotations

import os
from pathlib import Path

from mlops.recipe.schema import Recipe


def mlops_home() -> Path:
    """Where the framework writes by default: `.mlops/` under the working directory, or $MLOPS_HOME."""
    return Path(os.environ.get("MLOPS_HOME") or Path.cwd() / ".mlops").resolve()


def tracking_uri(recipe: Recipe | None = None) -> str:
    """The recipe's URI, else MLFLOW_TRACKING_URI, else an absolute sqlite store under .mlops/.

    Always absolute: MLflow's own default is relative to whatever the current directory happens to be.
    """
    if recipe is not None and recipe.tracking.uri:
        return recipe.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = mlops_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root() -> str:
    return (mlops_home() / "artifacts").as_uri()


def experiment_id(client: object, name: str, uri: str) -> str:
    """Get or create the experiment; a local store keeps its artifacts under .mlops/artifacts."""
    from mlflow import MlflowClient

    assert isinstance(client, MlflowClient)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    local = uri.startswith("sqlite:") or uri.startswith("file:")
    return client.create_experiment(name, artifact_location=f"{artifact_root()}/{name}" if local else None)
