"""Data sources: CSV and Parquet files, built-in data sets, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.core.errors import DataError, RecipeError
from mlops.data.schema import label_names
from mlops.data.sources import (
    BUILTIN_CLASSES,
    BUILTIN_COLUMNS,
    column_names,
    file_format,
    load_builtin,
    load_frame,
)
from mlops.engine.validate import load_validated
from mlops.recipe.schema import DataConfig


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"x": [1.0, np.nan, 3.0, 4.0], "c": ["a", None, "b", "a"], "y": ["n", "y", "n", "y"]})


def test_parquet_and_csv_give_the_same_rows(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    frame.to_csv(tmp_path / "d.csv", index=False)
    recipe = tmp_path / "r.yaml"
    from_parquet, raw = load_frame(DataConfig(path="d.parquet", target="y"), recipe)
    from_csv, _ = load_frame(DataConfig(path="d.csv", target="y"), recipe)
    assert raw == (tmp_path / "d.parquet").read_bytes()  # the fingerprint covers exactly these bytes
    pd.testing.assert_frame_equal(from_parquet, from_csv, check_dtype=False)
    assert column_names(DataConfig(path="d.parquet", target="y"), recipe) == ["x", "c", "y"]


def test_format_given_explicitly_for_an_unusual_suffix(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "d.bin", index=False)
    rows, _ = load_frame(DataConfig(path="d.bin", format="parquet", target="y"), tmp_path / "r.yaml")
    assert len(rows) == 4


def test_a_corrupt_file_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read .*d.parquet as parquet"):
        load_frame(DataConfig(path="d.parquet", target="y"), tmp_path / "r.yaml")


def test_builtin_datasets_load_with_their_target(tmp_path: Path) -> None:
    rows, raw = load_frame(DataConfig(dataset="wine", target="target"), tmp_path / "r.yaml")
    assert raw is None and len(rows) == 178 and rows["target"].nunique() == 3


def test_parquet_recipe_target_checked_at_validate_time(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: d.parquet\n  target: why\n")
    with pytest.raises(RecipeError) as err:
        load_validated(recipe)
    assert "r.yaml:4: data.target: column 'why' is not in the data" in str(err.value)


def test_the_builtin_columns_validate_knows_are_the_loaded_ones() -> None:
    """`mlops validate` checks a built-in data set's columns from a table (no scikit-learn import): the table
    must say what loading the data set gives."""
    for name, columns in BUILTIN_COLUMNS.items():
        assert list(load_builtin(name).columns) == columns, name
    for (name, target), classes in BUILTIN_CLASSES.items():
        assert label_names(load_builtin(name)[target]) == classes, name


def test_a_folder_is_an_image_folder_and_a_file_cannot_be_one(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    assert file_format(DataConfig(path="imgs", target="label"), tmp_path / "imgs") == "image_folder"
    with pytest.raises(DataError, match="image folder not found: .*d.csv"):
        load_frame(DataConfig(path="d.csv", format="image_folder", target="label"), tmp_path / "r.yaml")


def test_a_missing_image_folder_is_reported_at_data_path(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\ndata:\n  path: imgs\n  format: image_folder\n  target: label\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:3: data\.path: image folder not found: .*imgs"):
        load_validated(recipe)


def test_strings_that_are_not_all_image_paths_stay_categorical(tmp_path: Path) -> None:
    """Only a column whose every value names an image file is read as images: no file is looked for here."""
    pd.DataFrame({"f": ["a.png", "b"], "y": [0, 1]}).to_csv(tmp_path / "d.csv", index=False)
    rows, raw = load_frame(DataConfig(path="d.csv", target="y"), tmp_path / "r.yaml")
    assert rows["f"].tolist() == ["a.png", "b"] and raw == (tmp_path / "d.csv").read_bytes()
