"""`mlops batch` and `mlops stream`. Importing this module must stay light (argparse only): heavy
libraries are imported inside the command functions."""

from __future__ import annotations

import argparse
import json
from typing import Any

BATCH_EPILOG = """examples:
  mlops batch recipes/churn_csv.yaml --input new_customers.csv --output scores.parquet
  mlops batch recipes/churn_csv.yaml --model churn/3 --input new.parquet --output scores.parquet --id-column customer
  mlops batch recipes/churn_csv.yaml --input new.csv --output scores.parquet --engine spark --spark-master local[2]
"""

STREAM_EPILOG = """examples:
  mlops stream recipes/quickstart.yaml --stream requests
  mlops stream recipes/quickstart.yaml --model quickstart/4 --source redis://cache:6379/0 --stream requests \\
      --group scorers --consumer worker-1 --output-stream requests:predictions
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this phase's subcommands on the `mlops` parser."""
    p = sub.add_parser("batch", help="score a CSV/Parquet file with a model: chunked, resumable, bad rows reported",
                       epilog=BATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="the recipe: its model name is the default model, its data file the default input")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe: key=value")
    p.add_argument("--model", help="NAME@ALIAS, NAME/VERSION or a bundle directory (default: <recipe model>@champion)")
    p.add_argument("--input", help="CSV or Parquet file to score (default: the recipe's data file)")
    p.add_argument("--format", choices=("csv", "parquet"), help="input format when its suffix does not say")
    p.add_argument("--output", required=True, help="predictions as Parquet: a file (local engine), a dataset "
                                                   "directory or URI (spark engine)")
    p.add_argument("--id-column", help="input column holding each row's id (default: <input file name>:<row>)")
    p.add_argument("--chunk-rows", type=int, default=10_000, metavar="N",
                   help="rows per chunk: the unit of scoring, of resuming and of Spark's Arrow batches (default 10000)")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="local: pandas/pyarrow chunks on this machine, resumable (default); spark: PySpark "
                        "mapInPandas over the same bundle")
    p.add_argument("--spark-master", metavar="URL",
                   help="with --engine spark: e.g. local[2], spark://host:7077 (default: spark-submit's, else local[*])")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="with --engine spark: a Spark setting, e.g. spark.executor.memory=4g (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="last line of stdout: the summary as JSON")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("stream", help="score a Redis Stream with a consumer group: at-least-once, idempotent by "
                                      "message id", epilog=STREAM_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="the recipe: its model name is the default model")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe: key=value")
    p.add_argument("--model", help="NAME@ALIAS, NAME/VERSION or a bundle directory (default: <recipe model>@champion)")
    p.add_argument("--source", default="redis://127.0.0.1:6379/0", help="Redis URL (default redis://127.0.0.1:6379/0)")
    p.add_argument("--stream", required=True, help="the input stream: one message per row")
    p.add_argument("--group", default="mlops", help="consumer group (created at the start of the stream if absent)")
    p.add_argument("--consumer", help="this consumer's name in the group (default <host>-<pid>); a restart under "
                                      "the same name picks up its own pending messages at once")
    p.add_argument("--output-stream", help="where predictions go (default <stream>:predictions)")
    p.add_argument("--dead-letter", help="where bad messages go, with the error (default <stream>:dead)")
    p.add_argument("--log", help="prediction log (SQLite); default .mlops/predictions/<model>.sqlite")
    p.add_argument("--batch", type=int, default=64, metavar="N", help="messages read and scored at once (default 64)")
    p.add_argument("--block-ms", type=int, default=1000, help="how long one read waits for new messages")
    p.add_argument("--claim-idle-ms", type=int, default=60_000,
                   help="take over messages another consumer has held unacknowledged this long (default 60000)")
    p.add_argument("--max-messages", type=int, metavar="N", help="stop after handling N messages")
    p.add_argument("--idle-exit-s", type=float, metavar="S", help="stop after S seconds without a message")
    p.add_argument("--json", action="store_true", help="last line of stdout: the counts as JSON")
    p.set_defaults(func=cmd_stream)


def _load(args: argparse.Namespace) -> Any:
    from mlops.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides, check_data=False)


def _model_ref(args: argparse.Namespace, loaded: Any) -> str:
    return args.model or f"{loaded.recipe.model_name}@champion"


def default_input(loaded: Any) -> tuple[str, str | None]:
    """The recipe's data file, and its declared format."""
    from mlops.core.errors import MlopsError
    from mlops.data.sources import data_path

    data = loaded.recipe.data
    if data.path is None:
        raise MlopsError(f"recipe {loaded.composed.display} uses the built-in data set '{data.dataset}': "
                         "give the rows to score with --input FILE")
    return str(data_path(data, loaded.path)), data.format


def parse_spark_conf(items: list[str]) -> dict[str, str]:
    from mlops.core.errors import MlopsError

    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise MlopsError(f"--spark-conf {item!r}: expected KEY=VALUE with a spark.* key, "
                             "e.g. spark.executor.memory=4g")
        conf[key.strip()] = value
    return conf


def cmd_batch(args: argparse.Namespace) -> int:
    from mlops.core.errors import MlopsError
    from mlops.score.source import open_input

    loaded = _load(args)
    if args.chunk_rows < 1:
        raise MlopsError(f"--chunk-rows {args.chunk_rows}: expected a positive number of rows")
    if (args.spark_master or args.spark_conf) and args.engine != "spark":
        raise MlopsError("--spark-master and --spark-conf need --engine spark")
    spark_conf = parse_spark_conf(args.spark_conf)
    path, fmt = (args.input, args.format) if args.input else default_input(loaded)
    inp = open_input(path, args.format or fmt)  # a missing input fails before the model is fetched
    from mlops.core.refs import fetch

    served = fetch(_model_ref(args, loaded))
    bundle, version = served.path, served.version
    if args.engine == "spark":
        from mlops.score.spark import score_spark

        result = score_spark(inp, bundle, version, args.output, args.chunk_rows, args.id_column, args.spark_master,
                             spark_conf)
    else:
        from pathlib import Path

        from mlops.score.batch import score_local

        result = score_local(inp, bundle, version, Path(args.output), args.chunk_rows, args.id_column,
                             progress=not args.no_progress)
    _print_batch(result)
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def _print_batch(r: Any) -> None:
    from rich.console import Console

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
    from mlops.core.refs import fetch
    from mlops.score.stream import StreamConfig, consume

    loaded = _load(args)
    config = StreamConfig.from_args(args)  # bad flags fail before the model is fetched
    served = fetch(_model_ref(args, loaded))
    bundle, version = served.path, served.version
    result = consume(config, bundle, version)
    print(f"stream {config.stream} (group {config.group}, consumer {config.consumer}): {result.handled} messages: "
          f"{result.predicted} predicted -> {config.output_stream}, {result.dead} dead-lettered -> "
          f"{config.dead_letter}; {result.recovered} recovered from earlier consumers, {result.duplicates} "
          f"already written (redelivered); stopped: {result.stopped}", flush=True)
    if args.json:
        print(json.dumps(result.__dict__))
    return 0
