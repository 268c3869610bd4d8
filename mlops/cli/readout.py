"""`mlops ab report` and `mlops errors`: what the prediction log and its feedback say about a model."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pydantic import ValidationError

from mlops.cli.output import emit
from mlops.core.atomic import check_output
from mlops.core.errors import MlopsError
from mlops.core.predlog_store import log_target
from mlops.core.refs import ModelRef
from mlops.core.timespec import time_option
from mlops.core.workspace import workspace
from mlops.improve.ab import ab_report, render
from mlops.improve.error_analysis import analyse_errors, write_report
from mlops.recipe import load_recipe
from mlops.recipe.improve import AbConfig, ImproveConfig


def _name_and_version(model: str, old_version: str | None = None) -> tuple[str, str | None]:
    """MODEL as NAME, or NAME/VERSION for one version (the old `--version V` too)."""
    if "@" in model or "/" in model:
        ref = ModelRef.parse(model)
        if ref.kind == "alias":
            raise MlopsError(f"'{model}': give NAME or NAME/VERSION (the log records versions, not aliases)")
        if ref.kind == "version":
            return ref.name, ref.version
    return model, old_version


def _log_and_recipe(args: argparse.Namespace, name: str) -> tuple[str | Path, ImproveConfig | None]:
    improve = load_recipe(args.recipe).recipe.improve if args.recipe else None
    if args.log:
        return log_target(args.log), improve
    if improve and improve.refresh.log:
        return log_target(improve.refresh.log), improve
    return workspace().prediction_log(name), improve


AB_FLAGS = {"metric": "--metric", "business_metric": "--business", "min_effect": "--min-effect", "alpha": "--alpha"}


def cmd_ab_report(args: argparse.Namespace) -> int:
    name, _ = _name_and_version(args.model)
    log, improve = _log_and_recipe(args, name)
    cfg = improve.ab if improve else AbConfig()
    updates = {k: v for k, v in (("metric", args.metric), ("business_metric", args.business),
                                 ("min_effect", args.min_effect), ("alpha", args.alpha)) if v is not None}
    try:
        cfg = AbConfig.model_validate(cfg.model_dump() | updates)
    except ValidationError as exc:  # pydantic's dump names the model's fields: say the flags the user typed
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            where = f"{AB_FLAGS[key]} {updates[key]}" if key in updates else f"improve.ab.{key}"
            problems.append(f"{where}: {error['msg']}")
        raise MlopsError("ab report: " + "; ".join(problems)) from None
    report = ab_report(log, name, cfg, improve.feedback if improve else None, time_option("--since", args.since))
    print(render(report), end="")
    emit(report)
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    if args.bins < 2 or args.top < 1 or args.min_rows < 1:
        raise MlopsError("--bins must be at least 2, --top and --min-rows at least 1")
    if args.tolerance is not None and not 0 <= args.tolerance < math.inf:  # NaN fails too: no error would count
        raise MlopsError(f"--tolerance {args.tolerance}: expected an absolute error, a number from 0")
    name, version = _name_and_version(args.model, args.renamed_version)
    log, improve = _log_and_recipe(args, name)
    out = check_output(args.output, "--output", directory=True) if args.output else workspace().errors_dir(name)
    analysis = analyse_errors(log, name, since=time_option("--since", args.since), version=version,
                              variants=tuple(args.variant or ("champion", "challenger")),
                              feedback=improve.feedback if improve else None, bins=args.bins, top=args.top,
                              min_rows=args.min_rows, tolerance=args.tolerance)
    paths = write_report(analysis, out)
    o = analysis["overall"]
    print(f"errors of {name}: {o['errors']} of {o['rows']} labelled predictions wrong ({o['error_rate']:.1%}, "
          f"interval [{o['ci'][0]:.1%}, {o['ci'][1]:.1%}])")
    if analysis["skipped"]["rows"]:
        print(f"  skipped  {analysis['skipped']['reason']}")
    for s in analysis["slices"][:5]:
        print(f"  slice    {s['column']} {s['slice']}: {s['errors']}/{s['rows']} = {s['error_rate']:.1%} "
              f"[{s['ci'][0]:.1%}, {s['ci'][1]:.1%}]")
    for c in analysis["clusters"][:3]:
        print(f"  cluster  {c['rule']}: {c['errors']}/{c['rows']} = {c['error_rate']:.1%}")
    print(f"  report   {paths['html']}\n  json     {paths['json']}")
    emit(analysis | {"report": paths})
    return 0
