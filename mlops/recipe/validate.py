"""Turn pydantic's errors into problems that name the file, line and key that caused them."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import ValidationError

from mlops.core.errors import Problem, RecipeError
from mlops.recipe import schema
from mlops.recipe.compose import Composed, nearest_key
from mlops.recipe.schema import Recipe
from mlops.recipe.suggest import closest, keys_at


def validate(composed: Composed) -> Recipe:
    """Validate a composed recipe; every problem at once, each at its origin."""
    try:
        return Recipe.model_validate(composed.config)
    except ValidationError as exc:
        problems = [problem_from_error(composed, e) for e in exc.errors(include_url=False)]
        raise RecipeError(composed.display, _dedupe(problems)) from None


def problem_from_error(composed: Composed, error: Any) -> Problem:
    loc = [str(p) for p in error["loc"] if not _is_union_tag(p)]
    key = ".".join(loc)
    kind = error["type"]
    where = str(composed.origin(key))
    if kind == "extra_forbidden":
        parent, _, leaf = key.rpartition(".")
        # an override that adds a key (`+gate=x`) composes, so it is refused here and not in Hydra: the same
        # suggestions, groups included; a file's key is no group choice, so only the schema's keys are offered
        set_by_override = composed.origin(key).override is not None
        suggestion = nearest_key(composed.path, parent, leaf) if set_by_override else closest(leaf, keys_at(parent))
        valid = ", ".join(keys_at(parent))
        hint = f"did you mean '{suggestion}'?" if suggestion else f"valid keys: {valid}"
        return Problem(key, "unknown key", where, hint)
    if kind == "missing":
        return Problem(key, "required key is missing", where)
    # pydantic's wording, minus its internals: "Value error, " prefixes and class names
    message = re.sub(r" or instance of \w+", "", error["msg"].removeprefix("Value error, "))
    if "input" in error and kind not in ("model_type",) and not isinstance(error["input"], dict):
        message += f", got {error['input']!r}"
    hint = ""
    if kind == "literal_error" and isinstance(error.get("input"), str):
        expected = [x.strip(" '") for x in str(error.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")]
        suggestion = closest(error["input"], [e for e in expected if e])
        hint = f"did you mean '{suggestion}'?" if suggestion else ""
    return Problem(key, message, where, hint)


SCALAR_TAGS = {"int", "str", "float", "bool", "none"}


@cache
def _model_names() -> frozenset[str]:
    from pydantic import BaseModel


    return frozenset(n for n, v in vars(schema).items() if isinstance(v, type) and issubclass(v, BaseModel))


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the union member it tried into loc ("int", "list[int]", "literal['auto']", a model's
    class name, or a discriminator value such as "float"): none of them is a key the user wrote."""
    return isinstance(part, str) and ("[" in part or part in SCALAR_TAGS or part in _model_names())


def _dedupe(problems: list[Problem]) -> list[Problem]:
    # A union (devices: int | 'auto' | list) fails once per member: keep the first failure per key.
    seen: dict[str, Problem] = {}
    for p in problems:
        seen.setdefault(p.key, p)
    return list(seen.values())
