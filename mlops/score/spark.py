"""`mlops batch --engine spark`: the same scoring as the local engine, as a PySpark job.

Spark reads the file (CSV as text, exactly as the local engine does; Parquet typed), and `mapInPandas` hands
each partition's rows to `mlops.score.rows.score_frame`, the function the local engine calls per chunk, over
an ONNX Runtime session each task opens once from the bundle broadcast by the driver. Nothing but this package,
onnxruntime and pandas must be installed on the executors; the bundle travels with the job.

Row numbers are the rows' positions in the file: a first pass counts each input partition's rows, so a task
knows the number of the first row it holds. Both passes plan the same scan, so their partitions are the same.

Output is a Parquet dataset (a directory of part files), as Spark writes; for a local path it is written
next to the target and renamed into place, so a failed job leaves the previous output alone.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlops.core.atomic import publishing
from mlops.core.errors import MlopsError
from mlops.package.bundle import bundle_files, read_bundle
from mlops.package.predictor import Predictor
from mlops.score.batch import MAX_EXAMPLES, BatchResult
from mlops.score.rows import output_fields, score_frame
from mlops.score.source import check_columns, check_unique_ids

if TYPE_CHECKING:
    import pandas as pd

    from mlops.score.source import InputFile

SPARK_TYPES = {"string": "STRING", "float32": "FLOAT", "float64": "DOUBLE", "int64": "BIGINT", "int32": "INT",
               "bool": "BOOLEAN"}


def output_ddl(fields: list[tuple[str, str, bool]]) -> str:
    """The Spark schema of the output, matching `mlops.score.rows.arrow_schema`."""
    cols = ["`id` STRING", "`row` BIGINT", "`model` STRING", "`version` STRING"]
    for name, dtype, is_list in fields:
        t = SPARK_TYPES[dtype]
        cols.append(f"`{name}` {'ARRAY<' + t + '>' if is_list else t}")
    cols.append("`error` STRING")
    return ", ".join(cols)


def spark_session(master: str | None, conf: dict[str, str] | None = None) -> Any:
    """A session on `master`, else the one spark-submit configured, else local mode on every core; `conf` is
    set on the builder (e.g. spark.executor.memory)."""
    if master is None or master.startswith("local"):
        # local mode: the Python workers must be this interpreter, which has onnxruntime and mlops
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise MlopsError("--engine spark needs Java 17+ (`java` on PATH or JAVA_HOME); on Debian/Ubuntu: "
                         "apt-get install default-jre-headless")
    try:
        from pyspark import SparkConf
        from pyspark.sql import SparkSession
    except ImportError:
        raise MlopsError("--engine spark needs PySpark: pip install 'mlops[score]'") from None
    builder = SparkSession.builder.appName("mlops-batch")
    if master is not None:
        builder = builder.master(master)
    elif not SparkConf().contains("spark.master"):
        builder = builder.master("local[*]")
    builder = (builder.config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def read_input(spark: Any, inp: InputFile, columns: list[str], id_column: str | None) -> Any:
    from pyspark.sql import functions as F

    uri = inp.path.as_uri()
    if inp.format == "csv":
        # text only, like the local engine: every column a string, RFC 4180 quotes ("" inside a quoted field)
        df = spark.read.csv(uri, header=True, inferSchema=False, escape='"', multiLine=False)
    else:
        df = spark.read.parquet(uri)
    selected = [F.col(f"`{c}`") for c in columns]
    if id_column is not None and id_column not in columns:
        selected.append(F.col(f"`{id_column}`").cast("string"))
    return df.select(*selected)


def score_spark(inp: InputFile, bundle: Path, version: str | None, output: str, chunk_rows: int = 10_000,
                id_column: str | None = None, master: str | None = None, conf: dict[str, str] | None = None,
                spark: Any = None) -> BatchResult:
    """Score `inp` into the Parquet dataset `output` (a local path or any URI Spark can write), on `spark` or a
    session started for `master` with `conf`."""

    if chunk_rows < 1:
        raise MlopsError(f"--chunk-rows {chunk_rows}: expected a positive number of rows")
    started = time.perf_counter()
    meta = read_bundle(bundle)  # checks the ONNX file against its checksum before shipping it
    needed = [i.name for i in meta.inputs]
    check_columns(inp, needed, id_column)
    if id_column is not None:  # read here, on the driver: the input is a local file
        check_unique_ids(inp, id_column, as_text=id_column not in needed)
    fields = output_fields(meta)
    # the bundle travels with the job: its graph, its metadata and the assets its inputs read (a tokenizer)
    files = {name: (bundle / name).read_bytes() for name in bundle_files(meta)}
    spark = spark or spark_session(master, conf)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_rows))
    df = read_input(spark, inp, needed, id_column)

    counts = df.mapInPandas(_count_partition, "p INT, n BIGINT").collect()
    first_rows: dict[int, int] = {}
    total = 0
    for p, n in sorted((int(r["p"]), int(r["n"])) for r in counts):
        first_rows[p] = total
        total += n
    shipped = spark.sparkContext.broadcast(files)
    scorer = _PartitionScorer(shipped, first_rows, inp.text, inp.path.name, id_column, version, fields,
                              inp.integer_columns, inp.path.parent)
    scored = df.mapInPandas(scorer, output_ddl(fields))

    target, staging = _staging(output)
    try:
        scored.write.mode("overwrite").parquet(staging)
    except BaseException:
        if staging != target:
            shutil.rmtree(urlparse(staging).path, ignore_errors=True)
        raise
    finally:
        shipped.unpersist()
    if staging != target:
        _replace(Path(urlparse(staging).path), Path(urlparse(target).path))

    result = BatchResult(output, "spark", meta.name, version)
    _summarise(spark, target, result)
    result.chunks = len(counts)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _count_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    import pandas as pd
    from pyspark import TaskContext

    n = sum(len(b) for b in batches)
    yield pd.DataFrame({"p": [TaskContext.get().partitionId()], "n": [n]}).astype({"p": "int32", "n": "int64"})


class _PartitionScorer:
    """The function `mapInPandas` runs on each partition (pickled to the executors with its state)."""

    def __init__(self, shipped: Any, first_rows: dict[int, int], text: bool, source: str, id_column: str | None,
                 version: str | None, fields: list[tuple[str, str, bool]], integers: frozenset[str],
                 base: Path | None = None) -> None:
        self.shipped = shipped
        self.first_rows = first_rows
        self.text = text
        self.source = source
        self.id_column = id_column
        self.version = version
        self.fields = fields
        self.integers = integers
        self.base = base  # where relative image paths are: the input file's directory (a path every executor sees)

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext


        predictor = Predictor(executor_bundle(self.shipped.value), max_batch=1 << 30, threads=1)  # once per task
        row = self.first_rows.get(TaskContext.get().partitionId(), 0)
        for frame in batches:
            yield score_frame(predictor, frame, self.text, row, self.source, self.id_column, self.version,
                              self.fields, self.integers, self.base)
            row += len(frame)


def executor_bundle(files: dict[str, bytes]) -> Path:
    """The shipped bundle as a directory on this executor, written once per bundle (by checksum) and renamed
    into place, so concurrent tasks never see half of it."""
    import hashlib

    # every file counts: two bundles may share a graph and differ in their metadata or tokenizer
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{len(files[name])}\0".encode())
        h.update(files[name])
    digest = h.hexdigest()
    root = Path(tempfile.gettempdir()) / "mlops-bundles"
    path = root / digest
    if (path / "bundle.json").is_file():
        return path
    with publishing(path, keep_existing=True) as tmp:  # another task may get there first: the same bytes
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return path


def _staging(output: str) -> tuple[str, str]:
    """(target URI, where to write first): a local target is staged next to it; a remote one is written in
    place (Spark's commit protocol and its _SUCCESS marker cover it)."""
    parsed = urlparse(output)
    if parsed.scheme not in ("", "file"):
        return output, output
    target = Path(parsed.path if parsed.scheme else output).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.spark-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    return target.as_uri(), staging.as_uri()


def _replace(staging: Path, target: Path) -> None:
    if target.is_dir():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if target.exists():
            target.unlink()
        staging.rename(target)


def _summarise(spark: Any, target: str, result: BatchResult) -> None:
    from pyspark.sql import functions as F

    out = spark.read.parquet(target)
    totals = out.agg(F.count(F.lit(1)).alias("rows"), F.count("error").alias("failed")).first()
    result.rows, result.failed = int(totals["rows"]), int(totals["failed"])
    result.scored = result.rows - result.failed
    failed = out.where(F.col("error").isNotNull())
    by_column = failed.groupBy(F.substring_index("error", ": ", 1).alias("c")).count().collect()
    result.errors_by_column = {r["c"]: int(r["count"]) for r in sorted(by_column, key=lambda r: r["c"])}
    result.examples = [{"row": int(r["row"]), "id": r["id"], "error": r["error"]}
                       for r in failed.orderBy("row").limit(MAX_EXAMPLES).select("row", "id", "error").collect()]
