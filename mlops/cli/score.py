"""`mlops batch` and `mlops stream`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from mlops.cli.output import emit
from mlops.core.atomic import check_output
from mlops.core.errors import MlopsError
from mlops.core.refs import Resolved, fetch
from mlops.data.sources import data_path
from mlops.recipe import LoadedRecipe, load_recipe
from mlops.score.batch import BatchResult, score_local
from mlops.score.source import open_input
from mlops.score.spark import score_spark
from mlops.score.stream import StreamConfig, consume


def model_ref(model: str | None, loaded: LoadedRecipe) -> str:
    """`--model`, else the recipe's model as champion."""
    return model or f"{loaded.recipe.model_name}@champion"


def _model(args: argparse.Namespace, loaded: LoadedRecipe) -> Resolved:
    return fetch(model_ref(args.model, loaded))


def default_input(loaded: LoadedRecipe) -> tuple[str, str | None]:
    """The recipe's data file, and its declared format."""
    data = loaded.recipe.data
    if data.path is None:
        raise MlopsError(f"recipe {loaded.composed.display} uses the built-in data set '{data.dataset}': "
                         "give the rows to score with --input FILE")
    return str(data_path(data, loaded.path)), data.format


def parse_spark_conf(items: list[str]) -> dict[str, str]:
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise MlopsError(f"--spark-conf {item!r}: expected KEY=VALUE with a spark.* key, "
                             "e.g. spark.executor.memory=4g")
        conf[key.strip()] = value
    return conf


# output names that promise another format than the Parquet `mlops batch` writes
OTHER_FORMATS = {".csv": "CSV", ".tsv": "TSV", ".json": "JSON", ".jsonl": "JSON lines", ".txt": "text",
                 ".xlsx": "Excel", ".arrow": "Arrow IPC", ".feather": "Feather"}


def cmd_batch(args: argparse.Namespace) -> int:
    loaded = load_recipe(args.recipe, args.overrides)
    if args.chunk_rows < 1:
        raise MlopsError(f"--chunk-rows {args.chunk_rows}: expected a positive number of rows")
    if (args.spark_master or args.spark_conf) and args.engine != "spark":
        raise MlopsError("--spark-master and --spark-conf need --engine spark")
    spark_conf = parse_spark_conf(args.spark_conf)
    path, fmt = (args.input, args.format) if args.input else default_input(loaded)
    inp = open_input(path, args.format or fmt)  # a missing input fails before the model is fetched
    if args.engine == "local":  # spark's output is a dataset directory or a URI, checked by Spark
        check_output(args.output, "--output")
    suffix = Path(args.output).suffix.lower()
    if suffix in OTHER_FORMATS:  # a .csv name on a Parquet file: whoever opens it next reads garbage
        raise MlopsError(f"--output {args.output}: the scores are written as Parquet, not {OTHER_FORMATS[suffix]}: "
                         f"name it {Path(args.output).with_suffix('.parquet').name}")
    model = _model(args, loaded)
    if args.engine == "spark":
        result = score_spark(inp, model.path, model.version, args.output, args.chunk_rows, args.id_column,
                             args.spark_master, spark_conf)
    else:
        result = score_local(inp, model.path, model.version, Path(args.output), args.chunk_rows, args.id_column,
                             progress=not args.no_progress)
    _print_batch(result)
    emit(result.to_json())
    return 0


def _print_batch(r: BatchResult) -> None:
    console = Console(highlight=False, soft_wrap=True)
    resumed = f", {r.resumed_chunks} resumed from an earlier run" if r.resumed_chunks else ""
    console.print(f"[bold]batch[/bold] {r.model} version {r.version or '-'} ({r.engine}): scored {r.scored} of "
                  f"{r.rows} rows in {r.seconds:.1f} s ({r.chunks} chunks{resumed}) -> {r.output}")
    if r.failed:
        by = ", ".join(f"{c} {n}" for c, n in r.errors_by_column.items())
        console.print(f"  {r.failed} rows failed validation and have an error instead of a prediction (by first "
                      f"failing column: {by}), e.g.")
        for e in r.examples:
            console.print(f"    row {e['row']} (id {e['id']}): {e['error']}")


def cmd_stream(args: argparse.Namespace) -> int:
    loaded = load_recipe(args.recipe, args.overrides)
    config = StreamConfig.from_args(args, loaded.recipe.monitor.log)  # bad flags fail before the model is fetched
    model = _model(args, loaded)
    result = consume(config, model.path, model.version)
    print(f"stream {config.stream} (group {config.group}, consumer {config.consumer}): {result.handled} messages: "
          f"{result.predicted} predicted -> {config.output_stream}, {result.dead} dead-lettered -> "
          f"{config.dead_letter}; {result.recovered} recovered from earlier consumers, {result.duplicates} "
          f"already written (redelivered); stopped: {result.stopped}", flush=True)
    emit(result)
    return 0
