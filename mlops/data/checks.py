"""The recipe against the data it names: the file exists and reads, every column the recipe names is in it.

Run by `mlops validate` (and before every run) so that a misspelt column surfaces in a second at its file
and line, not after minutes of training.
"""

from __future__ import annotations

from mlops.core.errors import MlopsError, Problem
from mlops.data.sources import column_names, data_path
from mlops.recipe.compose import Composed
from mlops.recipe.schema import Recipe
from mlops.recipe.suggest import closest


def data_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    """Every problem at once, each at the key (and file:line) that named the missing file or column."""
    data = recipe.data
    if data.path is not None:
        path = data_path(data, composed.path)
        where = str(composed.origin("data.path"))
        if not path.is_file():
            return [Problem("data.path", f"file not found: {path}", where)]
        if data.format is None and path.suffix.lower() not in (".csv", ".parquet", ".pq"):
            return [Problem("data.path", f"cannot tell the format of '{path.name}'", where, "set data.format")]
    try:
        columns = column_names(data, composed.path)
    except MlopsError as exc:
        return [Problem("data", str(exc), str(composed.origin("data")))]
    problems = []
    if data.target not in columns:
        problems.append(_unknown_column("data.target", data.target, columns, composed))
    for key in ("features", "drop", "categorical"):
        for name in getattr(data, key) or []:
            if name not in columns:
                problems.append(_unknown_column(f"data.{key}", name, columns, composed))
    if data.features is not None and data.target in data.features:
        problems.append(Problem("data.features", "the target column cannot be a feature", str(composed.origin("data.features"))))
    ev = recipe.evaluate
    named = [(f"evaluate.slices.{i}.column", s.column) for i, s in enumerate(ev.slices)]
    named += [(f"evaluate.fairness.sensitive.{i}", c) for i, c in enumerate(ev.fairness.sensitive if ev.fairness else [])]
    named += [(f"evaluate.expectations.columns.{c}", c) for c in ev.expectations.columns]
    for key, name in named:
        if name not in columns:
            problems.append(_unknown_column(key, name, columns, composed))
    return problems


def _unknown_column(key: str, name: str, columns: list[str], composed: Composed) -> Problem:
    suggestion = closest(name, columns)
    hint = f"did you mean '{suggestion}'?" if suggestion else f"columns: {', '.join(columns[:12])}"
    return Problem(key, f"column '{name}' is not in the data", str(composed.origin(key)), hint)


