"""Recipes: Hydra composition, the pydantic schema, and errors that point at file:line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mlops.core.errors import RecipeError
from mlops.recipe.compose import Composed, compose
from mlops.recipe.schema import Recipe
from mlops.recipe.validate import validate


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with where it came from, for every later phase."""

    recipe: Recipe
    composed: Composed

    @property
    def path(self) -> Path:
        return self.composed.path

    @property
    def overrides(self) -> list[str]:
        return self.composed.overrides

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe with defaults filled in: what a run actually used."""
        return self.recipe.model_dump(mode="json", by_alias=True)

    @cached_property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()

    @cached_property
    def model_hash(self) -> str:
        """The hash of what determines the model: everything but the sections that act on a model once it
        exists (`evaluate`, `deploy`, `monitor`, `improve`). A new gate, threshold, rollout step or alert
        re-decides on the cached model instead of re-exporting it or starting a new sweep study."""
        resolved = self.resolved()
        for section in ("evaluate", "deploy", "monitor", "improve"):
            resolved.pop(section, None)
        return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.resolved(), sort_keys=False)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Compose a recipe with Hydra and validate it against the schema. Raises RecipeError naming file, line
    and key. What the recipe's data, classes and metrics say is checked by `mlops.engine.validate`."""
    composed = compose(path, overrides)
    return LoadedRecipe(validate(composed), composed)


__all__ = ["LoadedRecipe", "Recipe", "RecipeError", "load_recipe"]
