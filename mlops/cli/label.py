"""`mlops label export` and `mlops label import`: a labelling round trip with Label Studio."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlops.cli.output import emit
from mlops.cli.readout import _log_and_recipe, _name_and_version
from mlops.core.atomic import check_output
from mlops.core.timespec import time_option
from mlops.core.workspace import workspace
from mlops.improve.labelling import export_tasks, import_annotations, parse_criteria
from mlops.serve.run import feedback_log_path


def cmd_label_export(args: argparse.Namespace) -> int:
    name, version = _name_and_version(args.model)
    log, _ = _log_and_recipe(args, name)
    default = workspace().root / "improve" / "labelling" / name / "tasks.json"
    out = check_output(args.output, "--output") if args.output else default
    config_out = check_output(args.config_out, "--config-out") if args.config_out else None
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    result = export_tasks(log, name, out, count=args.count, criteria=parse_criteria(args.by),
                          config_out=config_out, labels=labels,
                          since=time_option("--since", args.since), version=version,
                          monitor_store=workspace().monitor_store(name), include_labelled=args.include_labelled)
    reasons = ", ".join(f"{k} {v}" for k, v in result.by_reason.items()) or "-"
    print(f"label export of {name}: {result.tasks} tasks of {result.considered} unlabelled predictions ({reasons}; "
          f"{result.drift_windows} drifted windows)")
    print(f"  tasks    {result.path}\n  config   {result.config}")
    print("  next     create a Label Studio project with the config, import the tasks, annotate, export as JSON, "
          "then: mlops label import EXPORT.json --model " + name)
    emit(result)
    return 0


def cmd_label_import(args: argparse.Namespace) -> int:
    log = feedback_log_path(args.model, args.log)
    result = import_annotations(Path(args.file), log)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())) or "none"
    print(f"label import from {args.file}: {result.imported} of {result.tasks} tasks recorded as feedback "
          f"(log {result.log}); skipped: {skipped}")
    if result.unknown_ids:
        print(f"  unknown ids, e.g. {', '.join(result.unknown_ids)}")
    emit(result)
    return 0
