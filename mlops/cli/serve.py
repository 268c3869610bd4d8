"""`mlops serve` and `mlops feedback`."""

from __future__ import annotations

import argparse

from mlops.cli.output import emit
from mlops.core.errors import MlopsError
from mlops.core.predlog import read_feedback_file
from mlops.core.predlog_store import log_name, record_feedback
from mlops.serve.run import ServeOptions, feedback_log_path, serve


def cmd_serve(args: argparse.Namespace) -> int:
    serve(ServeOptions.from_args(args))
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    log_path = feedback_log_path(args.model, args.log)
    result = record_feedback(log_path, read_feedback_file(args.file))
    if not result["checked"]:  # a Redis stream cannot be searched: appended as given, `mlops collect` lands them
        print(f"feedback from {args.file}: {result['rows']} rows appended to {result['log']} (a stream: ids are "
              "not checked)")
        emit(result)
        return 0
    print(f"feedback from {args.file}: {result['matched']} of {result['rows']} ids matched a prediction and were "
          f"recorded, {result['unknown']} unknown (log {result['log']})")
    if result["unknown"]:
        print(f"  unknown ids, e.g. {', '.join(result['unknown_ids'])}")
    emit(result)
    if not result["matched"]:
        raise MlopsError(f"none of the {result['rows']} ids in {args.file} has a prediction in {log_name(log_path)}: "
                         "is it the right log?")
    return 0
