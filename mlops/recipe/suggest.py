"""Did-you-mean: what the schema allows at a dotted position of a recipe, and the closest key to a typo."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from mlops.recipe.schema import Recipe


def _unwrap(t: Any) -> list[Any]:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return [u for a in typing.get_args(t) for u in _unwrap(a)]
    if typing.get_origin(t) is typing.Annotated:
        return _unwrap(typing.get_args(t)[0])
    return [t]


def schema_types(path: str) -> list[Any]:
    """The types the schema allows at dotted `path` ('' is the recipe), through unions, list items
    (`evaluate.gates.1`) and mapping values (`monitor.drift.features.mean_area`); [] where it allows nothing."""
    found: list[Any] = [Recipe]
    for part in [p for p in path.split(".") if p]:
        step: list[Any] = []
        for t in found:
            if isinstance(t, type) and issubclass(t, BaseModel):
                fields = [f for name, f in t.model_fields.items() if part in (name, f.alias)]
                step += [u for f in fields for u in _unwrap(f.annotation)]
            elif typing.get_origin(t) is list and part.isdigit():
                step += _unwrap(typing.get_args(t)[0])
            elif typing.get_origin(t) is dict:
                step += _unwrap(typing.get_args(t)[1]) if typing.get_args(t) else [Any]
            elif t is Any:  # free-form values (model.params.x): any key below them
                step.append(Any)
        found = step
    return found


def model_at(path: str) -> type[BaseModel] | None:
    """The first pydantic model the schema allows at dotted `path`; None under a mapping or list itself, or a
    free-form dict (`model.params`), where any key goes."""
    return next((t for t in schema_types(path) if isinstance(t, type) and issubclass(t, BaseModel)), None)


def keys_at(path: str) -> list[str]:
    """The valid keys under dotted `path` (aliases as users write them, e.g. `_target_`)."""
    model = model_at(path)
    return [] if model is None else [f.alias or name for name, f in model.model_fields.items()]


def schema_accepts(parent: str, leaf: str) -> bool:
    """Whether the schema has a place for key `leaf` under dotted `parent`: a model's field, or a mapping's key."""
    return leaf in keys_at(parent) or any(t is Any or typing.get_origin(t) is dict for t in schema_types(parent))


def closest(word: str, choices: list[str]) -> str | None:
    """The likeliest intended choice: one the word abbreviates (`val/acc` -> `val/accuracy`), else the
    most similar spelling."""
    prefixed = sorted((c for c in choices if c.startswith(word) and c != word), key=len)
    if prefixed and len(word) >= 3:
        return prefixed[0]
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return matches[0] if matches else None


def unknown_part(key: str) -> tuple[str, str]:
    """(parent, segment) of the first segment of dotted `key` the schema has no place for: in
    `monitor.windw.size` the typo is `windw` under `monitor`, not `size` under a section that does not exist;
    in `evaluate.expectations.columns.age.mni` it is `mni`, `age` being any column's name."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if not schema_types(f"{parent}.{part}" if parent else part):
            return parent, part
    parent, _, leaf = key.rpartition(".")
    return parent, leaf
