"""What the improvement loop does to the MLflow registry: move aliases, tag versions and runs.

A small adapter over `MlflowClient`, so the decision logic is tested against an in-memory twin and MLflow
stays out of the unit tests; integration and e2e tests run it on a real store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from mlops.core.refs import CHAMPION
from mlops.core.registry import registry_client
from mlops.package.registry import promote_champion

TAG = "mlops.improve."


class Registry(Protocol):
    def aliases(self, model: str) -> dict[str, str]: ...

    def set_alias(self, model: str, alias: str, version: str) -> None: ...

    def delete_alias(self, model: str, alias: str) -> None: ...

    def promote(self, model: str, version: str, reason: str, by: str) -> None: ...

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None: ...

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None: ...

    def log_file(self, run_id: str, path: Path, folder: str) -> None: ...

    def version_for(self, model: str, fingerprint: str) -> tuple[str, str] | None: ...


def tag_values(tags: dict[str, Any]) -> dict[str, str]:
    """Tags under `mlops.improve.`, values as text within MLflow's limit."""
    out = {}
    for k, v in tags.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        out[k if k.startswith(TAG) else TAG + k] = text[:5000]
    return out


class MlflowRegistry:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = registry_client(uri)

    def aliases(self, model: str) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:  # on the SQL store search_model_versions() returns no aliases: only the registered model has them
            return {k: str(v) for k, v in self.client.get_registered_model(model).aliases.items()}
        except MlflowException:
            return {}

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model, alias, version)

    def delete_alias(self, model: str, alias: str) -> None:
        self.client.delete_registered_model_alias(model, alias)

    def promote(self, model: str, version: str, reason: str, by: str) -> None:
        """Move `champion` to `version` through the registry's champion history (so that `mlops rollback` knows
        where to go back to)."""
        if self.aliases(model).get(CHAMPION) == version:
            return
        promote_champion(self.client, model, version, reason, by)

    def tag_version(self, model: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(model, version, k, v)

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def log_file(self, run_id: str, path: Path, folder: str) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def version_for(self, model: str, fingerprint: str) -> tuple[str, str] | None:
        """The newest version trained on data with this fingerprint: (version, run id)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{model}' and tags.data_fingerprint='{fingerprint}'")
        except MlflowException:
            return None
        if not found:
            return None
        newest = max(found, key=lambda m: int(m.version))
        return str(newest.version), str(newest.run_id)
