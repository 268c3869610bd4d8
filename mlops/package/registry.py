"""The MLflow model registry: register a bundle, move aliases, resolve `NAME@ALIAS` to a bundle.

MLflow 3 has no stages; aliases are the lifecycle: `challenger` for a new version, `champion` for
the one in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.refs import CHALLENGER, CHAMPION


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


# --- champion history ----------------------------------------------------------------------------------------
# MLflow aliases keep no history, so every champion change is recorded as a registered-model tag of its own,
# `mlops.champion.history.<seq>` = {"seq", "action", "version", "previous", "at", "by", "reason"} (one tag per
# change: no tag ever grows past the store's limit). Replaying the tags gives the lineage of champions, a
# stack: a promotion pushes, a rollback pops back to the version it restored.

HISTORY_TAG = "mlops.champion.history."


def champion_history(client: Any, model_name: str) -> list[dict[str, Any]]:
    """Every recorded champion change of `model_name`, oldest first."""
    import json

    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(model_name).tags
    except MlflowException as exc:
        raise MlopsError(f"no registered model '{model_name}': {exc.message}") from None
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_TAG)]
    return sorted(entries, key=lambda e: int(e["seq"]))


def champion_lineage(history: list[dict[str, Any]]) -> list[str]:
    """The champions in force, oldest first, the current one last (a promotion pushes, a rollback pops)."""
    stack: list[str] = []
    for e in history:
        if not stack and e.get("previous"):
            stack.append(str(e["previous"]))
        if e["action"] == "rollback":
            while stack and stack[-1] != str(e["version"]):
                stack.pop()
            if not stack:
                stack.append(str(e["version"]))
        elif not stack or stack[-1] != str(e["version"]):
            stack.append(str(e["version"]))
    return stack


def current_champion(client: Any, model_name: str) -> str | None:
    version = client.get_registered_model(model_name).aliases.get(CHAMPION)
    return str(version) if version is not None else None


def _actor() -> str:
    import getpass
    import os
    import socket

    who = os.environ.get("MLOPS_ACTOR")
    if who:
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record_champion_change(client: Any, model_name: str, action: str, version: str, previous: str | None,
                           reason: str, by: str | None = None) -> dict[str, Any]:
    """Append one entry to the champion history and tag the new champion's version with it."""
    import json
    from datetime import UTC, datetime

    history = champion_history(client, model_name)
    entry = {"seq": (int(history[-1]["seq"]) + 1) if history else 1, "action": action, "version": str(version),
             "previous": previous, "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": by or _actor(),
             "reason": reason}
    client.set_registered_model_tag(model_name, f"{HISTORY_TAG}{entry['seq']:06d}", json.dumps(entry))
    client.set_model_version_tag(model_name, str(version), "mlops.champion_since", entry["at"])
    return entry


def promote_champion(client: Any, model_name: str, version: str, reason: str,
                     by: str | None = None) -> dict[str, Any]:
    """Move `champion` to `version` and record who, when and why. Promoting the champion itself is refused."""
    client.get_model_version(model_name, str(version))  # an unknown version fails here, before anything moves
    previous = current_champion(client, model_name)
    if previous == str(version):
        raise MlopsError(f"{model_name} version {version} is already the champion: nothing to promote")
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return record_champion_change(client, model_name, "promote", str(version), previous, reason, by)


def rollback_champion(client: Any, model_name: str, reason: str, by: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the champion before the current one, from the recorded history."""
    current = current_champion(client, model_name)
    lineage = champion_lineage(champion_history(client, model_name))
    if lineage and lineage[-1] == current:
        lineage.pop()
    if not lineage:
        raise MlopsError(f"{model_name} has no earlier champion on record (champion is version {current or '-'}): "
                         f"choose one with `mlops promote {model_name}/VERSION`")
    target = lineage[-1]
    client.set_registered_model_alias(model_name, CHAMPION, target)
    return record_champion_change(client, model_name, "rollback", target, current, reason, by)
