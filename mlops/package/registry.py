"""The MLflow model registry: register a bundle, move aliases, resolve `NAME@ALIAS` to a bundle.

MLflow 3 has no stages; aliases are the lifecycle: `challenger` for a new version, `champion` for
the one in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops.errors import MlopsError

CHAMPION, CHALLENGER = "champion", "challenger"


def register_bundle(client: Any, uri: str, run_id: str, model_name: str, bundle_dir: Path,
                    tags: dict[str, str], set_aliases: bool = True) -> dict[str, Any]:
    """Register the bundle's ONNX model (the run already holds the bundle) and, unless it failed its gates,
    set aliases: `challenger`, and `champion` when there is none yet. Returns version and aliases."""
    import mlflow
    import mlflow.onnx
    import onnx

    mlflow.set_tracking_uri(uri)  # the fluent API below would otherwise use MLflow's cwd-relative default
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        # explicit pip_requirements: inferring them costs seconds and would drag torch in
        info = mlflow.onnx.log_model(onnx.load(str(bundle_dir / "model.onnx")), name="model",
                                     pip_requirements=["onnxruntime"], registered_model_name=model_name)
    version = str(info.registered_model_version)
    for key, value in (tags | {"bundle_uri": f"runs:/{run_id}/bundle", "run_id": run_id}).items():
        client.set_model_version_tag(model_name, version, key, value)
    aliases = promote_version(client, model_name, version) if set_aliases else []
    return {"model_name": model_name, "model_version": version, "aliases": aliases}


def promote_version(client: Any, model_name: str, version: str) -> list[str]:
    """A new eligible version becomes the challenger, and the champion when there is none yet."""
    aliases = [CHALLENGER]
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    # On the SQL store search_model_versions() returns empty aliases: read them from the registered model
    if CHAMPION not in client.get_registered_model(model_name).aliases:
        client.set_registered_model_alias(model_name, CHAMPION, version)
        aliases.append(CHAMPION)
    return sorted(aliases)


def aliases_of(client: Any, model_name: str, version: str) -> list[str]:
    return sorted(a for a, v in client.get_registered_model(model_name).aliases.items() if str(v) == str(version))


def resolve_model(client: Any, ref: str) -> tuple[str, str]:
    """`NAME@ALIAS` or `NAME/VERSION` -> (name, version)."""
    from mlflow.exceptions import MlflowException

    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        if "/" in ref:
            name, version = ref.split("/", 1)
            return name, str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise MlopsError(f"no registered model '{ref}': {exc.message}") from None
    raise MlopsError(f"'{ref}' is not a model reference: use NAME@ALIAS, NAME/VERSION or a bundle directory")


def download_bundle(client: Any, model_name: str, version: str, dest: Path) -> Path:
    run_id = client.get_model_version(model_name, version).run_id
    target = dest / model_name / version
    if not (target / "bundle" / "bundle.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(run_id, "bundle", str(target))
    return target / "bundle"
