"""Expectations declared in the recipe (`evaluate.expectations`), checked on the loaded rows before training,
and what every image and text column must be for a network to take it (`check_media`); and the warning
`mlops validate` prints about categories that differ only by invisible whitespace (`category_whitespace`).

A violation names the column, the rule and the rows at fault (their 0-based positions in the data file,
first ones shown), so the user can find them without re-running anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlops.core.errors import DataError, ExpectationError
from mlops.data.columns import column_kinds, image_spec, is_missing, text_column, text_values
from mlops.data.media import MediaError, decode_image, image_header
from mlops.data.schema import feature_columns
from mlops.recipe.schema import ColumnExpectation, DataConfig, ExpectationsConfig

if TYPE_CHECKING:
    import pandas as pd

SHOWN_ROWS = 10
SHOWN_VALUES = 5


def violations(frame: pd.DataFrame, cfg: ExpectationsConfig) -> list[dict[str, Any]]:
    """Every broken expectation: {column, rule, message, rows (all offending row positions)}."""
    found: list[dict[str, Any]] = []
    n = len(frame)
    if cfg.min_rows is not None and n < cfg.min_rows:
        found.append({"column": None, "rule": "min_rows", "message": f"{n} rows, expected at least {cfg.min_rows}",
                      "rows": []})
    if cfg.max_rows is not None and n > cfg.max_rows:
        found.append({"column": None, "rule": "max_rows", "message": f"{n} rows, expected at most {cfg.max_rows}",
                      "rows": []})
    for column, rule in cfg.columns.items():
        if column not in frame.columns:
            found.append({"column": column, "rule": "exists", "message": "column is not in the data", "rows": []})
            continue
        found += _column_violations(column, frame[column], rule)
    return found


def _column_violations(column: str, values: pd.Series, rule: ColumnExpectation) -> list[dict[str, Any]]:
    import numpy as np
    import pandas as pd
    found = []
    missing = values.isna().to_numpy()
    if rule.max_missing is not None and len(values) and missing.mean() > rule.max_missing:
        found.append({"column": column, "rule": "max_missing", "rows": np.flatnonzero(missing).tolist(),
                      "message": f"{missing.mean():.1%} missing, expected at most {rule.max_missing:.1%}"})
    present = ~missing
    if rule.min is not None or rule.max is not None:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        not_numeric = present & np.isnan(numbers)
        if not_numeric.any():
            found.append({"column": column, "rule": "numeric", "rows": np.flatnonzero(not_numeric).tolist(),
                          "message": "values that are not numbers, where a range is expected"})
        for bound, op, name in ((rule.min, np.less, "min"), (rule.max, np.greater, "max")):
            if bound is None:
                continue
            with np.errstate(invalid="ignore"):
                bad = present & ~np.isnan(numbers) & op(numbers, bound)
            if bad.any():
                worst = numbers[bad].min() if name == "min" else numbers[bad].max()
                found.append({"column": column, "rule": name, "rows": np.flatnonzero(bad).tolist(),
                              "message": f"values {'below' if name == 'min' else 'above'} {bound:g} "
                                         f"(worst {worst:g})"})
    if rule.allowed is not None:
        allowed = {_norm(v) for v in rule.allowed}
        bad = present & ~values.map(lambda v: _norm(v) in allowed).to_numpy(dtype=bool)
        if bad.any():
            # quoted, so that whitespace shows: 'gold ' is not 'gold'
            unexpected = sorted({str(v) for v in values[bad].tolist()})[:SHOWN_VALUES]
            found.append({"column": column, "rule": "allowed", "rows": np.flatnonzero(bad).tolist(),
                          "message": f"values outside {sorted(map(str, rule.allowed))}: "
                                     f"{', '.join(map(repr, unexpected))}"})
    if rule.min_chars is not None or rule.max_chars is not None or rule.allow_empty is not None:
        found += _text_violations(column, values, rule)
    if rule.modes is not None or rule.min_size is not None:
        found += _image_violations(column, values, rule)
    return found


def _text_violations(column: str, values: pd.Series, rule: ColumnExpectation) -> list[dict[str, Any]]:
    import numpy as np
    found = []
    texts = text_values(values)
    lengths = np.asarray([len(t) for t in texts], dtype=np.int64)
    blank = np.asarray([not t.strip() for t in texts], dtype=bool)
    if rule.allow_empty is False and blank.any():
        found.append({"column": column, "rule": "allow_empty", "rows": np.flatnonzero(blank).tolist(),
                      "message": "empty (missing or blank) texts"})
    if rule.min_chars is not None and (bad := ~blank & (lengths < rule.min_chars)).any():
        found.append({"column": column, "rule": "min_chars", "rows": np.flatnonzero(bad).tolist(),
                      "message": f"texts shorter than {rule.min_chars} characters (shortest {lengths[bad].min()})"})
    if rule.max_chars is not None and (bad := lengths > rule.max_chars).any():
        found.append({"column": column, "rule": "max_chars", "rows": np.flatnonzero(bad).tolist(),
                      "message": f"texts longer than {rule.max_chars} characters (longest {lengths[bad].max()})"})
    return found


def _image_violations(column: str, values: pd.Series, rule: ColumnExpectation) -> list[dict[str, Any]]:
    """Modes and sizes as stored, read from each image's header; a value that is no readable image breaks
    the expectation too (a missing one is max_missing's)."""
    unreadable, wrong_mode, small = [], [], []
    modes_seen: set[str] = set()
    smallest = None
    for row, v in enumerate(values.tolist()):
        if is_missing(v):
            continue
        try:
            if not isinstance(v, bytes | bytearray):
                raise MediaError(f"not encoded image bytes ({type(v).__name__})")
            width, height, mode = image_header(bytes(v))
        except MediaError:
            unreadable.append(row)
            continue
        if rule.modes is not None and mode not in rule.modes:
            wrong_mode.append(row)
            modes_seen.add(mode)
        if rule.min_size is not None and (height < rule.min_size[0] or width < rule.min_size[1]):
            small.append(row)
            smallest = min(smallest or (height, width), (height, width))
    found = []
    if unreadable:
        found.append({"column": column, "rule": "image", "rows": unreadable, "message": "values that are not "
                      "readable images"})
    if wrong_mode:
        found.append({"column": column, "rule": "modes", "rows": wrong_mode, "message": f"images in mode(s) "
                      f"{', '.join(sorted(modes_seen))}, expected {', '.join(rule.modes or [])}"})
    if small:
        assert rule.min_size is not None and smallest is not None
        found.append({"column": column, "rule": "min_size", "rows": small, "message": f"images smaller than "
                      f"{rule.min_size[0]}x{rule.min_size[1]} (height x width; smallest "
                      f"{smallest[0]}x{smallest[1]})"})
    return found


def _norm(v: Any) -> Any:
    """1, 1.0 and "1" are the same category: the data file decides the type, the YAML another."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def check_expectations(frame: pd.DataFrame, cfg: ExpectationsConfig, source: str) -> dict[str, Any]:
    """Raise ExpectationError listing every violation; return a summary of what was checked otherwise."""
    found = violations(frame, cfg)
    if found:
        lines = [f"data {source} breaks {len(found)} expectation{'s' if len(found) != 1 else ''} "
                 "(evaluate.expectations); the run stopped before training:"]
        for v in found:
            where = f"column '{v['column']}'" if v["column"] else "table"
            rows = v["rows"]
            shown = ", ".join(map(str, rows[:SHOWN_ROWS])) + (f", ... ({len(rows)} rows)" if len(rows) > SHOWN_ROWS else "")
            lines.append(f"  {where}: {v['rule']}: {v['message']}" + (f"; rows (0-based) {shown}" if rows else ""))
        raise ExpectationError("\n".join(lines))
    return {"rows": len(frame), "checked": len(cfg.columns) + (cfg.min_rows is not None) + (cfg.max_rows is not None)}


def category_whitespace(frame: pd.DataFrame, data: DataConfig) -> list[str]:
    """One warning per categorical feature whose strings have leading or trailing whitespace, the values quoted
    (invisible otherwise): with data.categories.trim the model reads them trimmed, without it a request must
    repeat the same whitespace to get the same answer."""
    features = set(feature_columns(data, frame))
    trim = data.categories.trim
    warnings = []
    for name, kind in column_kinds(data, frame).items():
        if kind != "categorical" or name not in features:
            continue
        spaced = list(dict.fromkeys(v for v in frame[name].tolist() if isinstance(v, str) and v != v.strip()))
        if not spaced:
            continue
        shown = ", ".join(map(repr, spaced[:SHOWN_VALUES])) + (f", ... ({len(spaced)} in all)"
                                                               if len(spaced) > SHOWN_VALUES else "")
        consequence = ("data.categories.trim strips it in training and serving alike" if trim else
                       "data.categories.trim is off: a request without the same whitespace is another category")
        warnings.append(f"column '{name}': categories with leading or trailing whitespace: {shown} ({consequence})")
    return warnings


def check_media(frame: pd.DataFrame, data: DataConfig, source: str,
                image_files: dict[str, list[str | None]] | None = None) -> dict[str, int]:
    """What a network needs of every image and text column, checked on all rows before training: each image
    present and decodable within its column's limits (the same decode as training and serving), each text
    within max_chars and not empty unless its TextColumn allows it. Raises DataError naming the column, the
    rows (0-based, in the data file's order) and, for images read from files, each file; returns the rows
    checked per column otherwise."""
    image_files = image_files or {}
    features = set(feature_columns(data, frame))
    problems: list[str] = []
    checked: dict[str, int] = {}
    for name, kind in column_kinds(data, frame).items():
        if name not in features:
            continue
        if kind == "image":
            problems += _image_problems(name, frame[name], data, image_files.get(name))
        elif kind == "text":
            problems += _text_problems(name, frame[name], data)
        else:
            continue
        checked[name] = len(frame)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise DataError(f"data {source} holds inputs the model cannot take; the run stopped before training "
                        f"(rows counted from 0, in the data's order):\n{lines}")
    return checked


def _image_problems(name: str, values: pd.Series, data: DataConfig,
                    files: list[str | None] | None) -> list[str]:
    spec = image_spec(data, name)
    bad: list[str] = []
    n_bad = 0
    for row, v in enumerate(values.tolist()):
        try:
            if is_missing(v):
                raise MediaError("no image (missing value)")
            if not isinstance(v, bytes | bytearray):
                raise MediaError(f"not encoded image bytes ({type(v).__name__})")
            decode_image(bytes(v), spec)
        except MediaError as exc:
            n_bad += 1
            if len(bad) < SHOWN_ROWS:
                file = files[row] if files is not None and row < len(files) else None
                bad.append(f"column '{name}', row {row}{f' ({file})' if file else ''}: {exc}")
    if n_bad > SHOWN_ROWS:
        bad.append(f"column '{name}': ... ({n_bad} images in all)")
    return bad


def _text_problems(name: str, values: pd.Series, data: DataConfig) -> list[str]:
    column = text_column(data, name)
    texts = text_values(values)
    problems = []
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty and not column.allow_empty:
        problems.append(f"column '{name}': empty (missing or blank) text in {_rows(empty)} (set "
                        f"data.columns.{name}.allow_empty: true to train on them)")
    long = [i for i, t in enumerate(texts) if len(t) > column.max_chars]
    if long:
        problems.append(f"column '{name}': texts over max_chars ({column.max_chars:,}) in {_rows(long)}")
    return problems


def _rows(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:SHOWN_ROWS]))
    more = f", ... ({len(rows)} rows)" if len(rows) > SHOWN_ROWS else ""
    return f"row{'s' if len(rows) != 1 else ''} {shown}{more}"
