"""Did-you-mean: the valid keys at a dotted position of the schema, and the closest one to a typo."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from mlops.recipe.schema import Recipe


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return []


def model_at(path: str) -> type[BaseModel] | None:
    """The pydantic model found by walking dotted `path` from the Recipe root ('' is the root)."""

    model: type[BaseModel] = Recipe
    for part in [p for p in path.split(".") if p]:
        field = model.model_fields.get(part)
        models = _models_in(field.annotation) if field else []
        if not models:
            return None
        model = models[0]
    return model


def keys_at(path: str) -> list[str]:
    """The valid keys under dotted `path` (aliases as users write them, e.g. `_target_`)."""
    model = model_at(path)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def closest(word: str, choices: list[str]) -> str | None:
    """The likeliest intended choice: one the word abbreviates (`val/acc` -> `val/accuracy`), else the
    most similar spelling."""
    prefixed = sorted((c for c in choices if c.startswith(word) and c != word), key=len)
    if prefixed and len(word) >= 3:
        return prefixed[0]
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return matches[0] if matches else None


def unknown_part(key: str) -> tuple[str, str]:
    """(parent, leaf) of the first segment of dotted `key` the schema does not know: in `monitor.windw.size`
    the typo is `windw` under `monitor`, not `size` under a `monitor.windw` that does not exist."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        valid = keys_at(parent)
        if not valid or part not in valid:
            return parent, part
    parent, _, leaf = key.rpartition(".")
    return parent, leaf
