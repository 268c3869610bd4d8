"""A recipe checked as `mlops validate` checks it: the schema, then what it names (its data's files and columns,
its classes, the metrics its gates and monitors read), every problem at its file and line, before anything runs."""

from __future__ import annotations

from pathlib import Path

from mlops.core.errors import RecipeError
from mlops.data.checks import data_problems
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.recipe.checks import semantic_problems


def load_validated(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Compose, validate and check a recipe against what it names. Raises RecipeError with every problem."""
    loaded = load_recipe(path, overrides)
    problems = data_problems(loaded.recipe, loaded.composed) + semantic_problems(loaded.recipe, loaded.composed)
    if problems:
        raise RecipeError(loaded.composed.display, problems)
    return loaded
