"""`mlops promote` and `mlops rollback`: move the `champion` alias, record who/when/why in the registry's
champion history, and render the manifests for the model now in charge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.refs import ModelRef, resolve_version
from mlops.core.registry import registry_client
from mlops.deploy.generate import deploy_recipe
from mlops.package.registry import promote_champion, rollback_champion
from mlops.recipe import load_recipe


def _model_name(name: str) -> str:
    if "@" in name or "/" in name:
        raise MlopsError(f"'{name}': give the registered model's NAME (e.g. quickstart), not a version reference")
    return name


def promote(ref: str | ModelRef, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """Make the version `ref` names (`NAME/VERSION`, or `NAME@ALIAS` such as `quickstart@challenger`) the
    champion, recorded with who, when and why."""
    ref = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
    if ref.kind == "directory":
        raise MlopsError(f"'{ref.text}' is a bundle directory: promote a registered NAME/VERSION or NAME@ALIAS")
    client = registry_client()
    mv = resolve_version(client, ref)
    why = reason or (f"promoted from alias {ref.alias}" if ref.alias else f"promoted version {mv.version} by hand")
    return promote_champion(client, mv.name, mv.version, why, by)


def rollback(name: str, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the previous champion on record."""
    return rollback_champion(registry_client(), _model_name(name), reason or "rolled back by hand", by)


def recipe_of_version(name: str, version: str) -> str | None:
    """The recipe file that registered `version`, when it is still where it was (run tag `mlops.recipe`)."""
    client = registry_client()
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None
    path = client.get_run(run_id).data.tags.get("mlops.recipe")
    return path if path and Path(path).is_file() else None


def render_for(recipe: str | None, name: str, version: str, out: Path | None, crd: Path | None,
               apply: bool) -> dict[str, Any] | None:
    """Render (and apply) the InferenceService of `name/version` from `recipe`, or from the recipe that
    registered it; None when neither is at hand."""
    recipe = recipe or recipe_of_version(name, version)
    if recipe is None:
        return None
    loaded = load_recipe(recipe)
    return deploy_recipe(loaded, f"{name}/{version}", out=out, crd=crd, targets=["kserve"], apply=apply)
