"""Start the server: resolve the model reference to a bundle, open the log, run uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlops.errors import MlopsError
from mlops.tracking.store import mlops_home


def resolve_bundle(ref: str) -> tuple[Path, str | None]:
    """A bundle directory, or `NAME@ALIAS` / `NAME/VERSION` from the MLflow registry (downloaded once)."""
    path = Path(ref)
    if path.is_dir():
        return path, None
    if "@" not in ref and "/" not in ref:
        raise MlopsError(f"'{ref}' is neither a bundle directory nor a model reference (NAME@ALIAS, NAME/VERSION)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    from mlops.package.registry import download_bundle, resolve_model
    from mlops.tracking.store import tracking_uri

    client = MlflowClient(tracking_uri())
    name, version = resolve_model(client, ref)
    return download_bundle(client, name, version, mlops_home() / "bundles"), version


def default_log_path(model: str) -> Path:
    return mlops_home() / "predictions" / f"{model}.sqlite"


def build_server(ref: str, log_path: str | None = None, max_batch: int = 1024, max_body: int | None = None) -> Any:
    from mlops.serve.app import DEFAULT_MAX_BODY, Server
    from mlops.serve.log import PredictionLog
    from mlops.serve.predictor import Predictor

    bundle, version = resolve_bundle(ref)
    predictor = Predictor(bundle, max_batch=max_batch)
    log = PredictionLog(log_path or default_log_path(predictor.name))
    return Server(predictor, log, version=version, token=os.environ.get("MLOPS_SERVE_TOKEN") or None,
                  max_body=max_body or DEFAULT_MAX_BODY)


def serve(ref: str, host: str, port: int, log_path: str | None, max_batch: int) -> None:
    import uvicorn

    server = build_server(ref, log_path, max_batch)
    print(f"mlops serve: model '{server.predictor.name}' version {server.version or '-'} from {server.predictor.path}",
          flush=True)
    print(f"mlops serve: http://{host}:{port}/v2/models/{server.predictor.name}/infer  (log {server.log.path})",
          flush=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning", access_log=False)
