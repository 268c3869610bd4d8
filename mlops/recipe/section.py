"""The base of every recipe section: unknown keys are errors, values are frozen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def field_errors(model: str, problems: list[tuple[tuple[str, ...], str, Any]]) -> ValidationError:
    """Cross-field rules' failures, each reported at the field the user should change (not at the section),
    so the recipe loader points at its file and line."""
    return ValidationError.from_exception_data(model, [
        InitErrorDetails(type=PydanticCustomError("cross_field", message), loc=loc, input=value)
        for loc, message, value in problems])
