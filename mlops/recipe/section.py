"""The base of every recipe section: unknown keys are errors, values are frozen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class Section(BaseModel):
    # defer_build: a section's validator is built when it is first used, not when its class is defined. A
    # recipe is validated as a whole (one validator holding every section), so the hundred classes need not
    # each build their own: about 80 ms less for every command that reads a recipe (validate, plan, run)
    # allow_inf_nan: `model.lr=1e400` reads as inf, and no recipe number means anything as inf or nan (an
    # unbounded value is written null)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True,
                              allow_inf_nan=False)


def field_errors(model: str, problems: list[tuple[tuple[str, ...], str, Any]]) -> ValidationError:
    """Cross-field rules' failures, each reported at the field the user should change (not at the section),
    so the recipe loader points at its file and line."""
    return ValidationError.from_exception_data(model, [
        InitErrorDetails(type=PydanticCustomError("cross_field", message), loc=loc, input=value)
        for loc, message, value in problems])
