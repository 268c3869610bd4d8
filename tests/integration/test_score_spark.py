"""`mlops batch --engine spark` in Spark local mode writes what the local engine writes: the same ids, row
numbers, labels, errors, and probabilities to float tolerance, across several input partitions."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops.score.batch import score_local
from mlops.score.source import open_input
from tests.media_fixtures import IMAGE, MAX_CHARS, NUMBER, TEXT, build_media_bundle, image_png
from tests.serve_fixtures import build_bundle, training_frame

pytestmark = pytest.mark.integration

ROWS = 600


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local session for the module: Spark takes tens of seconds to start."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: `make system-deps` installs default-jre-headless")
    from mlops.score.spark import spark_session

    # small input splits: a few hundred rows give several partitions, so row numbering crosses partitions
    session = spark_session("local[2]", {"spark.sql.files.maxPartitionBytes": "16384",
                                         "spark.sql.files.openCostInBytes": "0"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("spark") / "bundle")


def assert_same_output(local: pd.DataFrame, spark: pd.DataFrame) -> None:
    spark = spark.sort_values("row").reset_index(drop=True)
    assert spark["row"].tolist() == list(range(len(local)))
    for column in ("id", "model", "version", "label", "error"):
        assert local[column].tolist() == spark[column].tolist(), column
    scored = local["error"].isna()
    assert (spark["probabilities"].isna() == ~scored).all()
    np.testing.assert_allclose(np.stack(local["probabilities"][scored]), np.stack(spark["probabilities"][scored]),
                               rtol=0, atol=1e-6)


def test_csv_scores_the_same_on_spark_and_locally(spark: Any, bundle: Path, tmp_path: Path) -> None:
    from mlops.score.spark import score_spark

    frame = training_frame(ROWS, seed=11).drop(columns="y").astype(object)
    frame.insert(0, "key", [f"k{i}" for i in range(ROWS)])
    rng = np.random.default_rng(5)
    for i, bad in zip(rng.choice(ROWS, 24, replace=False), ["x", "inf", "", "NA", "1e40", "7_0"] * 4, strict=True):
        frame.loc[i, rng.choice(["age", "income"])] = bad
    frame.loc[10, "city"] = 'east, "new" side'  # quotes and a comma inside a field
    frame.loc[11, "key"] = ""                    # a missing id
    frame.to_csv(tmp_path / "in.csv", index=False)
    inp = open_input(tmp_path / "in.csv")

    local = score_local(inp, bundle, "2", tmp_path / "local.parquet", chunk_rows=64, id_column="key", progress=False)
    result = score_spark(inp, bundle, "2", str(tmp_path / "spark.parquet"), chunk_rows=64, id_column="key",
                         spark=spark)

    assert result.chunks >= 2, "the input should span several partitions"
    assert (result.rows, result.failed, result.errors_by_column) == (local.rows, local.failed, local.errors_by_column)
    assert result.examples == local.examples
    assert local.failed >= 10
    assert_same_output(pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "spark.parquet"))
    assert pq.read_schema(next((tmp_path / "spark.parquet").glob("part-*.parquet"))).types == \
        pq.read_schema(tmp_path / "local.parquet").types


def test_parquet_scores_the_same_on_spark_and_locally(spark: Any, bundle: Path, tmp_path: Path) -> None:
    from mlops.score.spark import score_spark

    frame = training_frame(ROWS, seed=12).drop(columns="y")
    frame["income"] = frame["income"].round().astype("Int64")
    frame.loc[[3, 50], "income"] = pd.NA    # an integer column with nulls: pandas holds it as floats
    frame.loc[100, "income"] = 2**25          # still judged as the integer it is: refused, FP32 cannot hold it
    frame.loc[[7, 400], "age"] = [np.inf, np.nan]
    frame.loc[9, "city"] = None
    frame["key"] = pd.array(range(1000, 1000 + ROWS), dtype="Int64")
    frame.loc[20, "key"] = pd.NA
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet", row_group_size=100)
    inp = open_input(tmp_path / "in.parquet")
    (tmp_path / "spark.parquet").write_text("an older output, replaced")

    local = score_local(inp, bundle, None, tmp_path / "local.parquet", chunk_rows=64, id_column="key", progress=False)
    result = score_spark(inp, bundle, None, str(tmp_path / "spark.parquet"), chunk_rows=64, id_column="key",
                         spark=spark)

    assert result.chunks >= 2 and (result.rows, result.failed) == (ROWS, 3) == (local.rows, local.failed)
    assert_same_output(pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "spark.parquet"))


def test_images_and_texts_score_the_same_on_spark_and_locally(spark: Any, tmp_path: Path) -> None:
    """An image + text model (its tokenizer shipped with the job): images as Parquet bytes in one file and as
    paths relative to it in a CSV, texts in a column; bad rows reported alike."""
    from mlops.score.spark import score_spark

    bundle = build_media_bundle(tmp_path / "media-bundle")
    n = 60
    images = [image_png(i % 7) for i in range(n)]
    images[5] = b"not an image"
    texts = [f"review {i}: great coffee" if i % 4 else f"stale chips {i}" for i in range(n)]
    texts[9], texts[12] = "", "z" * (MAX_CHARS + 1)
    ages = [float(20 + i) if i % 6 else None for i in range(n)]
    (tmp_path / "img").mkdir()
    for i in range(7):
        (tmp_path / "img" / f"{i}.png").write_bytes(image_png(i))
    paths = [f"img/{i % 7}.png" for i in range(n)]
    paths[5] = "img/missing.png"
    paths[30], images[30] = "", b""  # empty cells: Spark reads an empty CSV field as null, the local engine as ""
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(n)], IMAGE: pa.array(images, pa.binary()), TEXT: texts,
                             NUMBER: ages}), tmp_path / "in.parquet", row_group_size=16)
    pd.DataFrame({"key": [f"k{i}" for i in range(n)], IMAGE: paths, TEXT: texts,
                  NUMBER: ["" if a is None else str(a) for a in ages]}).to_csv(tmp_path / "in.csv", index=False)

    for name in ("in.parquet", "in.csv"):
        inp = open_input(tmp_path / name)
        local = score_local(inp, bundle, "1", tmp_path / f"local-{name}", chunk_rows=16, id_column="key",
                            progress=False)
        result = score_spark(inp, bundle, "1", str(tmp_path / f"spark-{name}"), chunk_rows=16, id_column="key",
                             spark=spark)
        assert (result.rows, result.failed, result.errors_by_column) == (n, 4, {IMAGE: 2, TEXT: 2})
        assert (local.rows, local.failed, local.errors_by_column) == (n, 4, {IMAGE: 2, TEXT: 2})
        assert_same_output(pd.read_parquet(tmp_path / f"local-{name}"),
                           pd.read_parquet(tmp_path / f"spark-{name}"))
