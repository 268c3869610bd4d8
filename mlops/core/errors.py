"""Errors a user can cause. The CLI prints them without a traceback and exits 2; bugs raise as bugs."""

from __future__ import annotations

from dataclasses import dataclass


class MlopsError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, pointed at where it was set."""

    key: str  # dotted key, e.g. "trainer.max_epoch"
    message: str  # what was expected
    where: str  # "recipes/q.yaml:12" or "command-line override 'x=1'"
    hint: str = ""  # "did you mean 'max_epochs'?"

    def render(self) -> str:
        text = f"{self.where}: {self.key}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class RecipeError(MlopsError):
    """A recipe that does not validate: every problem with its file, line and key."""

    def __init__(self, recipe: str, problems: list[Problem]):
        self.recipe = recipe
        self.problems = problems
        lines = [f"recipe {recipe} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  {p.render()}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(MlopsError):
    """Data that cannot be used as the recipe says."""


class ParityError(MlopsError):
    """The exported ONNX model disagrees with the trained model: never ship it."""


class ExpectationError(DataError):
    """Data that breaks an expectation declared in the recipe: the run stops before training."""


class GateError(MlopsError):
    """A model that failed its promotion gates. It is registered (tagged gates=failed) but gets no alias."""

    exit_code = 3
