"""The recipe against the data it names: the file (or image folder) exists and reads, every column the recipe
names is in it, a sample of its images decodes, and its rows are what a run needs (every line has the
header's fields, the target has two classes or more and no missing value, the fairness positive label is one of
them, there are rows enough for the split).

Run by `mlops validate` (and before every run) so that a misspelt column surfaces in a second at its file
and line, not after minutes of training. A large file is read in part (READ_BYTES of it) and said so: what
only every row can tell is then a warning, checked in full when the run loads the file.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops.core.errors import DataError, MlopsError, Problem
from mlops.core.workspace import ALLOW_OUTSIDE_DATA, data_outside_project
from mlops.data.columns import (
    LIGHT_BYTES,
    MEDIA_KINDS,
    Column,
    Table,
    Unsure,
    column_kind,
    image_spec,
    is_missing,
)
from mlops.data.columns import read_table as read_light_table
from mlops.data.descriptors import DESCRIPTOR_NAMES, SEPARATOR
from mlops.data.media import TABULAR, ImageSpec, MediaError, decode_image
from mlops.data.schema import MAX_CLASSES, feature_columns, infer_task, label_names
from mlops.data.sources import (
    BUILTIN_CLASSES,
    column_names,
    data_path,
    file_format,
    image_file,
    image_folder_frame,
)
from mlops.recipe.compose import Composed
from mlops.recipe.schema import Recipe, SplitConfig
from mlops.recipe.suggest import closest

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

SAMPLE_ROWS = 50  # images decoded by validate, at most...
SAMPLE_SECONDS = 2.0  # ...and for at most this long: validate stays a matter of seconds
SHOWN_IMAGES = 5
READ_BYTES = 16 * 2**20  # validate reads at most this much of a data file's rows: about a second
SHOWN_ROWS = 5


def data_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    """Every problem at once, each at the key (and file:line) that named the missing file or column."""
    data = recipe.data
    if data.path is not None:
        path = data_path(data, composed.path)
        # never read: a recipe file may come from an untrusted pull request (a path on the command line is the
        # operator's own)
        root = None if _path_overridden(composed) else data_outside_project(path, composed.path)
        if root is not None:
            return [Problem("data.path", f"{path} is outside the project {root}", _path_where(composed),
                            f"move the data into the project, or allow it with {ALLOW_OUTSIDE_DATA}=1")]
        folder = data.format == "image_folder" or (data.format is None and path.is_dir())
        if folder and not path.is_dir():
            return [Problem("data.path", f"image folder not found: {path}", _path_where(composed))]
        if not folder and not path.is_file():
            return [Problem("data.path", f"file not found: {path}", _path_where(composed))]
        if data.format is None and not folder and path.suffix.lower() not in (".csv", ".parquet", ".pq"):
            return [Problem("data.path", f"cannot tell the format of '{path.name}'", _path_where(composed), "set data.format")]
    try:
        columns = column_names(data, composed.path)
    except MlopsError as exc:
        key = "data" if data.path is None else "data.path"
        return [Problem(key, str(exc), str(composed.origin(key)))]
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


def image_sample_problems(recipe: Recipe, composed: Composed, rows: DataRows) -> list[Problem]:
    """Decode the first rows' images (an image folder's: rows spread over it), at most SAMPLE_ROWS of them or
    for SAMPLE_SECONDS: an unreadable image is reported at data.path, naming its file and row. Without Pillow
    (a light install: validate only) nothing is decoded."""
    data = recipe.data
    path = data_path(data, composed.path)
    folder = file_format(data, path) == "image_folder"
    step = max(1, len(rows.frame) // SAMPLE_ROWS) if folder else 1
    index = list(range(0, len(rows.frame), step))[:SAMPLE_ROWS]
    frame = rows.frame.take(index)  # a read frame's index is 0..n-1: positions are row numbers
    base = path if folder else path.parent  # where relative image paths start
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
    bad: list[str] = []
    deadline = time.monotonic() + SAMPLE_SECONDS
    decoded = 0
    for row, values in zip(index, zip(*(frame[c].tolist() for c in images), strict=True), strict=True):
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
    if not bad:
        return []
    where = _path_where(composed)
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


@dataclass(frozen=True)
class DataRows:
    """The rows `mlops validate` read of a file data source: every one, or the first ones of a large file."""

    frame: pd.DataFrame | Table  # a Table: a CSV file read without pandas (`mlops.data.columns.read_table`)
    sampled: str = ""  # what was read of a file too large to read whole ("" when every row was read)
    broken: list[str] = field(default_factory=list)  # what is wrong with the file itself: ragged lines, no rows


def read_rows(recipe: Recipe, composed: Composed) -> DataRows:
    """At most READ_BYTES of the data file's rows (an image folder: its listing), and what reading them found
    wrong with the file. Raises DataError when it cannot be read at all."""
    data = recipe.data
    path = data_path(data, composed.path)
    fmt = file_format(data, path)
    if fmt == "image_folder":
        return DataRows(image_folder_frame(path))
    try:
        return _read_csv(path, compared_columns(recipe)) if fmt == "csv" else _read_parquet(path)
    except MlopsError:
        raise
    except Exception as exc:  # a corrupt or mislabelled file is the user's to fix
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None


def compared_columns(recipe: Recipe) -> set[str]:
    """The columns validate compares by value (the target's classes, a gate's slice values)."""
    sliced = {(g.slice or "").partition("=")[0] for g in recipe.evaluate.gates}
    return {recipe.data.target, *sliced}


def _read_csv(path: Path, exact: Collection[str] = ()) -> DataRows:
    """The first READ_BYTES of a CSV file, cut after a whole line. Every record is counted against the header
    with the csv module first: pandas fills a short line with missing values and takes a long first line's
    extra field as the index, silently, where a run would later train on shifted columns."""
    with path.open("rb") as f:
        head = f.read(READ_BYTES + 1)
    whole = len(head) <= READ_BYTES
    if not whole:
        head = head[: head.rfind(b"\n") + 1]
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(head), encoding="utf-8", errors="replace", newline=""))
    header = next(reader, [])
    records, ragged = 0, []
    for fields in reader:
        if fields:  # a blank line: pandas skips it too
            records += 1
            if len(fields) != len(header):
                ragged.append((reader.line_num, len(fields)))
    if not whole and records:  # the cut may have fallen inside the last record (a quoted field's line break)
        records -= 1
        ragged = [r for r in ragged if r[0] < reader.line_num]
    if ragged:
        lines = ", ".join(f"line {line} has {n}" for line, n in ragged[:SHOWN_ROWS])
        more = f" ({len(ragged)} such lines{'' if whole else ' in the part read'})" if len(ragged) > SHOWN_ROWS else ""
        return DataRows(Table({}, 0), broken=[f"{path.name}: the header has {len(header)} fields but {lines}{more}"])
    if whole and not records:
        return DataRows(Table({}, 0), broken=[f"{path.name} has a header but no rows"])
    nrows = None if whole else records
    try:
        if len(head) > LIGHT_BYTES:
            raise Unsure("pandas reads a large file faster")
        frame: pd.DataFrame | Table = read_light_table(head, nrows, exact)
    except Unsure:
        # imported here: only a large file, or one the light reader cannot vouch for (quoting oddities, another
        # encoding), pays for pandas, and `mlops validate` must start fast (see test_light_imports)
        import pandas as pd

        frame = pd.read_csv(io.BytesIO(head), nrows=nrows)
    return DataRows(frame, "" if whole else f"read the first {records:,} rows ({READ_BYTES // 2**20} MiB) of {path.name}")


def _read_parquet(path: Path) -> DataRows:
    """A Parquet file's rows, or its first ones: as many as READ_BYTES of its (uncompressed) row groups hold."""
    import pandas as pd
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    meta = file.metadata
    if meta.num_rows == 0:
        return DataRows(pd.DataFrame(), broken=[f"{path.name} has columns but no rows"])
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size <= READ_BYTES:
        return DataRows(file.read().to_pandas())
    n = max(1, meta.num_rows * READ_BYTES // size)
    first = next(file.iter_batches(batch_size=n))
    return DataRows(first.to_pandas(), f"read the first {first.num_rows:,} of {meta.num_rows:,} rows of {path.name}")


def rows_task(recipe: Recipe, rows: DataRows) -> str | None:
    """The task the recipe declares, or the one its rows say when every row was read (None: not known)."""
    if recipe.data.task != "auto":
        return recipe.data.task
    if rows.sampled or rows.broken:
        return None
    return target_task(rows.frame[recipe.data.target], "auto")


def target_task(target: pd.Series | Column, declared: str) -> str:
    """`infer_task` of the target's present values, for a pandas column or a light one (the same rules)."""
    if not isinstance(target, Column):
        return infer_task(target.dropna(), declared)
    if declared != "auto":
        return declared
    n = len(set(target.present()))
    if target.dtype == "float" and n > MAX_CLASSES:
        return "regression"
    if not target.numeric or (target.dtype == "int" and n <= MAX_CLASSES):
        return "binary" if n == 2 else "multiclass"
    return "regression"


def target_labels(target: pd.Series | Column) -> list[str]:
    """`label_names` for a pandas column or a light one."""
    if not isinstance(target, Column):
        return label_names(target)
    return [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in sorted(set(target.present()))]


def _missing_rows(series: pd.Series | Column) -> list[int]:
    if isinstance(series, Column):
        return [i for i, v in enumerate(series.values) if v is None]
    return series.isna().to_numpy().nonzero()[0].tolist()


def _class_sizes(target: pd.Series | Column) -> list[int]:
    """How many rows each class has (the target has no missing value)."""
    if isinstance(target, Column):
        sizes: dict[Any, int] = {}
        for v in target.values:
            sizes[v] = sizes.get(v, 0) + 1
        return list(sizes.values())
    return [int(c) for c in target.astype(str).value_counts().tolist()]


def row_problems(recipe: Recipe, composed: Composed, rows: DataRows) -> tuple[list[Problem], list[Problem]]:
    """What the rows say against the recipe: (problems, warnings). What only every row can tell (a class that
    does not occur, a single class, too few rows) is a warning when the file was read in part."""
    data = recipe.data
    if rows.broken:
        return [Problem("data.path", text, _path_where(composed)) for text in rows.broken], []
    frame, n = rows.frame, len(rows.frame)
    sure: list[Problem] = []  # problems when every row was read, else warnings
    warnings = [Problem("data.path", f"column '{name}' is empty: all its {n:,} values are missing"
                        f"{_in_sample(rows)}", _path_where(composed), "drop it (data.drop) or fill it in")
                for name in feature_columns(data, frame) if len(_missing_rows(frame[name])) == n]
    target = frame[data.target]
    missing = _missing_rows(target)
    if missing:
        shown = ", ".join(str(i) for i in missing[:SHOWN_ROWS]) + (", ..." if len(missing) > SHOWN_ROWS else "")
        sure.append(Problem("data.target", f"the target '{data.target}' is missing in {len(missing):,} of {n:,} rows "
                            f"(rows {shown}, counted from 0)", str(composed.origin("data.target")),
                            "fill it in or remove those rows"))
    task = target_task(target, data.task)
    labels = target_labels(target) if task != "regression" else []
    if task != "regression":
        sure += _class_problems(recipe, composed, labels, n)
    if not rows.sampled and not missing:
        counts = _class_sizes(target) if task != "regression" and data.split.stratify else None
        shortfall = split_shortfall(n, data.split, counts)
        if shortfall:
            sure.append(Problem("data.path", shortfall, _path_where(composed), "add rows, or change data.split"))
    if not rows.sampled:
        return sure, warnings
    return [], warnings + [Problem(p.key, p.message + _in_sample(rows), p.where, p.hint) for p in sure]


def builtin_class_problems(recipe: Recipe, composed: Composed) -> list[Problem]:
    """A built-in data set's classes against the task and the fairness settings, from BUILTIN_CLASSES: known
    without loading it (validate imports no scikit-learn)."""
    labels = BUILTIN_CLASSES.get((recipe.data.dataset or "", recipe.data.target))
    if labels is None or recipe.data.task == "regression":
        return []
    return _class_problems(recipe, composed, labels, len(labels))


def _class_problems(recipe: Recipe, composed: Composed, labels: list[str], n: int) -> list[Problem]:
    """The target's classes against the task and the fairness settings. Like every message about a data file's
    rows, these name no value of it beyond a did-you-mean (a recipe may be untrusted, the file may be anything)."""
    data, fairness = recipe.data, recipe.evaluate.fairness
    problems = []
    if len(labels) == 1:
        problems.append(Problem("data.target", f"the target '{data.target}' has a single class in {n:,} rows: a "
                                "classifier needs two or more", str(composed.origin("data.target")),
                                "check the data, or set data.task: regression"))
    elif data.task == "binary" and len(labels) > 2:
        problems.append(Problem("data.task", f"task is binary but the target '{data.target}' has {len(labels)} "
                                "classes", str(composed.origin("data.task")), "set data.task: multiclass"))
    if fairness is None or len(labels) < 2:
        return problems
    if fairness.positive_label is not None and fairness.positive_label not in labels:
        hint = closest(fairness.positive_label, labels)
        problems.append(Problem("evaluate.fairness.positive_label", f"'{fairness.positive_label}' is not a class of "
                                f"the target '{data.target}' ({len(labels)} classes)",
                                str(composed.origin("evaluate.fairness.positive_label")),
                                f"did you mean '{hint}'?" if hint else "one of the target's values, as the file "
                                "writes it"))
    elif fairness.positive_label is None and len(labels) > 2:
        problems.append(Problem("evaluate.fairness", f"fairness on a multiclass target needs the favourable class "
                                f"({len(labels)} classes)", str(composed.origin("evaluate.fairness")),
                                "set evaluate.fairness.positive_label"))
    return problems


def split_shortfall(n: int, split: SplitConfig, counts: list[int] | None) -> str | None:
    """Why `n` rows cannot be split as `mlops.data.split.split_indices` splits them, or None: the sizes
    scikit-learn's train_test_split computes (floor of the train share, the rest to the other side), and
    what a stratified split needs (two rows of every class, a class's worth of rows on each side).
    `counts`: the rows of each class, for a stratified split."""
    asked = f"{n:,} rows cannot be split {split.train:g}/{split.val:g}/{split.test:g}"
    if counts is not None and min(counts) < 2:
        return f"{asked} with stratification: {sum(c < 2 for c in counts)} class(es) have a single row"
    k = len(counts) if counts is not None else 1
    train = math.floor(split.train * n)
    val = math.floor(split.val / (split.val + split.test) * (n - train))
    for name, size in (("train", train), ("val", val), ("test", n - train - val)):
        if size < k:
            need = f"at least one row of each of the {k} classes" if k > 1 else "at least one row"
            return f"{asked}: the {name} split would get {size}, it needs {need}"
    return None


def _path_where(composed: Composed) -> str:
    """Where data.path was set, for a problem with the data: worked out only then (finding the origins of a
    recipe's keys costs about as much as composing it, and `mlops validate` must start fast)."""
    return str(composed.origin("data.path"))


def _path_overridden(composed: Composed) -> bool:
    """Whether data.path comes from the command line, as `composed.origin("data.path").override` says, without
    working out the files' origins when no override can have set it (none names data, data.path or below)."""
    keys = [o.lstrip("+~").partition("=")[0] for o in composed.overrides]
    if not any(k in ("data", "data.path") or k.startswith("data.path.") for k in keys):
        return False
    return composed.origin("data.path").override is not None


def _in_sample(rows: DataRows) -> str:
    return f" (in the rows read: validate {rows.sampled})" if rows.sampled else ""


def _unknown_column(key: str, name: str, columns: list[str], composed: Composed) -> Problem:
    suggestion = closest(name, columns)
    # a data file's header is its content (a recipe's data.path may name any file of the project): only a built-in
    # data set's columns are listed
    listed = f"columns: {', '.join(columns[:12])}" if composed.config.get("data", {}).get("path") is None else ""
    hint = f"did you mean '{suggestion}'?" if suggestion else listed
    return Problem(key, f"column '{name}' is not in the data", str(composed.origin(key)), hint)
