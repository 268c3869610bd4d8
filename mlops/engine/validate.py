"""A recipe checked as `mlops validate` checks it: the schema, then what it names (its data's files and columns,
its classes, the metrics its gates and monitors read), every problem at its file and line, before anything runs.

The data file is read once, in part when it is large (a note says so on stderr): its rows tell the task of an
'auto' recipe, its classes and the values its gates' slices name. Warnings (an empty column; what a file read in
part cannot settle) go to stderr and do not fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlops.core.errors import MlopsError, Problem, RecipeError
from mlops.data.checks import (
    DataRows,
    builtin_class_problems,
    data_problems,
    image_sample_problems,
    read_rows,
    row_problems,
    rows_task,
)
from mlops.data.columns import Column
from mlops.data.expectations import category_whitespace
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.recipe.checks import semantic_problems
from mlops.recipe.compose import Composed
from mlops.recipe.schema import Recipe
from mlops.recipe.suggest import closest


def load_validated(path: str | Path, overrides: list[str] | None = None) -> LoadedRecipe:
    """Compose, validate and check a recipe against what it names. Raises RecipeError with every problem."""
    loaded = load_recipe(path, overrides)
    recipe, composed = loaded.recipe, loaded.composed
    problems = data_problems(recipe, composed)
    warnings: list[Problem] = []
    task = None
    if recipe.data.path is not None and not problems:
        try:
            rows = read_rows(recipe, composed)
        except MlopsError as exc:
            problems.append(Problem("data.path", str(exc), str(composed.origin("data.path"))))
        else:
            if rows.sampled:
                print(f"note: validate {rows.sampled}: what only every row can tell is checked when a run loads it",
                      file=sys.stderr)
            found, warnings = row_problems(recipe, composed, rows)
            warnings += [Problem("data.path", w, str(composed.origin("data.path")))
                         for w in category_whitespace(rows.frame, recipe.data)]
            problems += found
            if not rows.broken:
                task = None if found else rows_task(recipe, rows)  # a task read off rows in error could mislead
                slices, unsure = slice_value_problems(recipe, composed, rows)
                problems += slices + image_sample_problems(recipe, composed, rows)
                warnings += unsure
    if recipe.data.dataset is not None and not problems:
        problems += builtin_class_problems(recipe, composed)
    problems += semantic_problems(recipe, composed, task)
    for warning in warnings:
        print(f"warning: {warning.render()}", file=sys.stderr)
    if problems:
        raise RecipeError(composed.display, problems)
    return loaded


# as in mlops.evaluate.slices (which imports numpy and pandas; a test compares them)
MAX_VALUES = 20  # a numeric column with more distinct values than this is binned even without `bins`
MISSING = "(missing)"


def value_slices(column: Column) -> list[str]:
    """Every slice label of a light column sliced by value, in order, as `slice_labels` lists them: values as
    `category_strings` writes them (1.0 as '1'), numbers in numeric order, missing last."""
    labels = set()
    for v in column.values:
        if v is None:
            labels.add(MISSING)
        elif isinstance(v, float) and v.is_integer():
            labels.add(str(int(v)))
        else:
            labels.add(str(v) or MISSING)
    values = sorted(labels - {MISSING}, key=float if column.numeric else None)
    return values + ([MISSING] if MISSING in labels else [])


def slice_value_problems(recipe: Recipe, composed: Composed, rows: DataRows) -> tuple[list[Problem], list[Problem]]:
    """A gate's `slice: column=value` must name a slice the column has, labelled as the evaluation labels it
    (`slice_labels`): (problems, warnings when the file was read in part). Quantile bins depend on the test
    rows, so a gate on one is left to the run."""
    declared = {s.column: s for s in recipe.evaluate.slices}
    problems = []
    for i, gate in enumerate(recipe.evaluate.gates):
        column, eq, value = (gate.slice or "").partition("=")
        cfg = declared.get(column)
        if not eq or gate.vs is not None or cfg is None or column not in rows.frame.columns:
            continue  # not a value slice, or one the recipe checks refuse already (or a descriptor's)
        series = rows.frame[column]
        if isinstance(series, Column) and cfg.bins is None:  # a CSV read without pandas: one slice per value
            if series.numeric and len(set(series.present())) > MAX_VALUES:
                continue  # quantile bins
            order = value_slices(series)
        else:
            # imported here, not at the top: slices pull pandas and the Predictor's numpy, which a CSV or a built-in
            # set never needs for a value slice, and `mlops validate` must start fast (see test_light_imports)
            import pandas as pd

            from mlops.evaluate.slices import slice_labels

            if isinstance(series, Column):  # bin edges on a light column: labelled as the evaluation labels them
                series = pd.Series(series.tolist(), name=column, dtype=None if series.dtype != "int" else "int64")
            quantiles = isinstance(cfg.bins, int) or (cfg.bins is None and pd.api.types.is_numeric_dtype(series)
                                                       and series.nunique() > MAX_VALUES)
            if quantiles:
                continue
            order = slice_labels(series, cfg.bins, column=column)[1]
        if value not in order:  # named by a did-you-mean at most, as every message about the file's rows
            hint = closest(value, order)
            key = f"evaluate.gates.{i}.slice"
            problems.append(Problem(key, f"no row has {column} = '{value}' ({len(order)} slices)",
                                    str(composed.origin(key)), f"did you mean '{column}={hint}'?" if hint else
                                    "a value as the evaluation labels it: 1.0 as '1', bins as '[lo, hi)'"))
    if rows.sampled:
        return [], [Problem(p.key, f"{p.message} in the rows read", p.where, p.hint) for p in problems]
    return problems, []
