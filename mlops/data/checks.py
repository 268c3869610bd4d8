"""The recipe against the data it names: the file (or image folder) exists and reads, every column the recipe
names is in it, and a sample of its images decodes.

Run by `mlops validate` (and before every run) so that a misspelt column surfaces in a second at its file
and line, not after minutes of training.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mlops.core.errors import MlopsError, Problem
from mlops.data.columns import MEDIA_KINDS, column_kind, image_spec, is_missing
from mlops.data.descriptors import DESCRIPTOR_NAMES, SEPARATOR
from mlops.data.media import TABULAR, ImageSpec, MediaError, decode_image
from mlops.data.sources import column_names, data_path, file_format, image_file, sample_rows
from mlops.recipe.compose import Composed
from mlops.recipe.schema import Recipe
from mlops.recipe.suggest import closest

if TYPE_CHECKING:
    from pathlib import Path

SAMPLE_ROWS = 50  # images decoded by validate, at most...
SAMPLE_SECONDS = 2.0  # ...and for at most this long: validate stays a matter of seconds
SHOWN_IMAGES = 5


def data_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    """Every problem at once, each at the key (and file:line) that named the missing file or column."""
    data = recipe.data
    if data.path is not None:
        path = data_path(data, composed.path)
        where = str(composed.origin("data.path"))
        folder = data.format == "image_folder" or (data.format is None and path.is_dir())
        if folder and not path.is_dir():
            return [Problem("data.path", f"image folder not found: {path}", where)]
        if not folder and not path.is_file():
            return [Problem("data.path", f"file not found: {path}", where)]
        if data.format is None and not folder and path.suffix.lower() not in (".csv", ".parquet", ".pq"):
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
    problems += _declared_column_problems(recipe, columns, composed)
    ev = recipe.evaluate
    named = [(f"evaluate.slices.{i}.column", s.column) for i, s in enumerate(ev.slices)]
    named += [(f"evaluate.fairness.sensitive.{i}", c) for i, c in enumerate(ev.fairness.sensitive if ev.fairness else [])]
    named += [(f"evaluate.expectations.columns.{c}", c) for c in ev.expectations.columns]
    for key, name in named:
        if name not in columns and not (key.startswith("evaluate.slices") and is_descriptor(name, columns)):
            problems.append(_unknown_column(key, name, columns, composed))
    if data.path is not None and not problems:
        problems += image_sample_problems(recipe, composed)
    return problems


def is_descriptor(name: str, columns: list[str]) -> bool:
    """`review.chars`, `image.brightness`: a descriptor of a column the data has (its kind is known later)."""
    base, sep, descriptor = name.rpartition(SEPARATOR)
    return bool(sep) and base in columns and descriptor in DESCRIPTOR_NAMES


def _declared_column_problems(recipe: Recipe, columns: list[str], composed: Composed) -> list[Problem]:
    data = recipe.data
    problems = []
    for name, column in data.columns.items():
        key = f"data.columns.{name}"
        if name not in columns:
            problems.append(_unknown_column(key, name, columns, composed))
        elif name in (data.categorical or []) and column.kind != "categorical":
            problems.append(Problem(key, f"column '{name}' is declared {column.kind} here and categorical in "
                                    "data.categorical", str(composed.origin(key)), "keep one of the two"))
        elif name == TABULAR and column.kind in MEDIA_KINDS:
            problems.append(Problem(key, f"an {column.kind} column cannot be named '{TABULAR}': the network's "
                                    "scalar input takes that name", str(composed.origin(key)),
                                    "rename the column"))
        elif name == data.target and column.kind in MEDIA_KINDS:
            problems.append(Problem(key, f"the target column cannot be an {column.kind} column",
                                    str(composed.origin(key))))
    return problems


def image_sample_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    """Decode the first rows' images (an image folder's: rows spread over it), at most SAMPLE_ROWS of them or
    for SAMPLE_SECONDS: an unreadable image is reported at data.path, naming its file and row. Without Pillow
    (a light install: validate only) nothing is decoded."""
    data = recipe.data
    where = str(composed.origin("data.path"))
    try:
        frame, base = sample_rows(data, composed.path, SAMPLE_ROWS)
    except MlopsError as exc:
        return [Problem("data.path", str(exc), where)]
    target = data.target
    names = [str(c) for c in frame.columns if c != target and c not in set(data.drop)
             and (data.features is None or c in data.features)]
    images = [c for c in names if column_kind(data, c, frame[c]) == "image"]
    if not images:
        return []
    try:
        import PIL  # noqa: F401  (only to know whether images can be decoded here)
    except ImportError:
        return []
    folder = file_format(data, data_path(data, composed.path)) == "image_folder"
    bad: list[str] = []
    deadline = time.monotonic() + SAMPLE_SECONDS
    decoded = 0
    for row, values in zip(frame.index.tolist(), frame[images].itertuples(index=False), strict=True):
        for name, value in zip(images, values, strict=True):
            if is_missing(value):
                continue  # check_data refuses a missing image, with every such row
            message = _decode_problem(value, base, image_spec(data, name))
            decoded += 1
            if message:
                shown = (f"image {image_file(base, value)}" if isinstance(value, str)
                         else f"the image in column '{name}'")
                bad.append(f"{shown} (row {row}{'' if folder else f', column {name!r}'}): {message}")
        if decoded >= SAMPLE_ROWS or time.monotonic() > deadline:
            break
    problems = [Problem("data.path", text, where) for text in bad[:SHOWN_IMAGES]]
    if len(bad) > SHOWN_IMAGES:
        more = len(bad) - SHOWN_IMAGES
        problems.append(Problem("data.path", f"... {more} more unreadable images among the {decoded} sampled",
                                where))
    return problems


def _decode_problem(value: object, base: Path, spec: ImageSpec) -> str | None:
    """Why one sampled image cannot be decoded, or None."""
    try:
        if isinstance(value, str):
            raw = image_file(base, value).read_bytes()
        elif isinstance(value, bytes | bytearray):
            raw = bytes(value)
        else:
            return f"expected an image file path or encoded bytes, got {type(value).__name__}"
        decode_image(raw, spec)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    except MediaError as exc:
        return str(exc)
    return None


def _unknown_column(key: str, name: str, columns: list[str], composed: Composed) -> Problem:
    suggestion = closest(name, columns)
    hint = f"did you mean '{suggestion}'?" if suggestion else f"columns: {', '.join(columns[:12])}"
    return Problem(key, f"column '{name}' is not in the data", str(composed.origin(key)), hint)
