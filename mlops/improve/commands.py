"""`mlops` subcommands of the improve phase: retrain, approve, reject, ab report, errors. Importing this module
must stay light (argparse only): heavy libraries are imported inside the command functions."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

EXIT_SKIPPED = 1  # nothing was trained: no trigger, a limit, or no new labelled rows
EXIT_STOPPED = 3  # trained, and stopped (gates, policy) or rolled back: the champion did not change

RETRAIN_EPILOG = """reasons:
  (none) or auto       retrain if the monitor recorded a drift or accuracy-drop alert no retrain answered yet
  drift[: detail]      the drift trigger (also: mlops.alert.drift); accuracy_drop[: detail]; schedule
  any other text       a manual retrain, with that text as its reason

exit codes: 0 promoted or waiting for approval, 1 skipped, 2 bad input, 3 stopped or rolled back
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this phase's subcommands on the `mlops` parser."""
    p = sub.add_parser("retrain", help="refresh data, retrain, gate vs the champion, then promote, wait for "
                                       "approval, stop or roll back (a Prefect flow)",
                       epilog=RETRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. improve.promotion.policy=auto")
    p.add_argument("--reason", default="auto", help="why (see below); default: answer the monitor's alerts")
    p.add_argument("--force", action="store_true", help="ignore the cooldown and the daily limit (recorded)")
    p.add_argument("--by", help="who asks (recorded; default: the current user for a manual retrain)")
    _rollout_args(p)
    p.add_argument("--json", action="store_true", help="last line of stdout: what happened, as JSON")
    p.set_defaults(func=cmd_retrain)

    for name, verb in (("approve", "accept"), ("reject", "turn down")):
        p = sub.add_parser(name, help=f"{verb} a retrained model that waits for a person"
                           + (" (it then goes through shadow and canary to champion)" if name == "approve" else ""))
        p.add_argument("run", help="the retrain's MLflow run id (or a unique prefix), as `mlops retrain` printed it")
        p.add_argument("--by", help="who decides (recorded; default: the current user)")
        p.add_argument("--note", default="", help="why (recorded)")
        if name == "approve":
            _rollout_args(p)
        p.add_argument("--json", action="store_true", help="last line of stdout: what happened, as JSON")
        p.set_defaults(func=cmd_approve if name == "approve" else cmd_reject)

    ab = sub.add_parser("ab", help="A/B tests read from the prediction log")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="COMMAND", required=True)
    p = ab_sub.add_parser("report", help="the difference between the champion and challenger arms, with its "
                                         "interval, whether the sample is large enough, and a business metric")
    p.add_argument("name", help="the model's name (its log is .mlops/predictions/NAME.sqlite unless --log)")
    p.add_argument("--log", help="the prediction log of `mlops serve --ab`")
    p.add_argument("--recipe", help="take defaults (improve.ab, improve.feedback) from this recipe")
    p.add_argument("--metric", choices=("accuracy", "error_rate", "mae", "mse"), help="default accuracy")
    p.add_argument("--business", metavar="FIELD", help="a feedback field to compare too, e.g. converted")
    p.add_argument("--min-effect", type=float, help="the smallest difference worth detecting (default 0.02)")
    p.add_argument("--alpha", type=float, help="significance level (default 0.05)")
    p.add_argument("--since", help="only predictions since: ISO time, unix seconds, or a duration ago (7d, 12h)")
    p.add_argument("--json", action="store_true", help="last line of stdout: the report as JSON")
    p.set_defaults(func=cmd_ab_report)

    p = sub.add_parser("errors", help="error analysis from ground truth: worst slices, confident mistakes, "
                                      "clusters of errors (HTML + JSON)")
    p.add_argument("name", help="the model's name (its log is .mlops/predictions/NAME.sqlite unless --log)")
    p.add_argument("--log", help="the prediction log")
    p.add_argument("--recipe", help="read improve.feedback (thumbs, outcome) from this recipe")
    p.add_argument("--since", help="only predictions since: ISO time, unix seconds, or a duration ago (7d, 12h)")
    p.add_argument("--version", help="only this model version")
    p.add_argument("--variant", action="append", choices=("champion", "challenger", "shadow"),
                   help="only these variants (repeatable; default champion and challenger: the served answers)")
    p.add_argument("--bins", type=int, default=4, help="quantile bins per numeric column (default 4)")
    p.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    p.add_argument("--min-rows", type=int, default=10, help="smallest slice or cluster shown (default 10)")
    p.add_argument("--tolerance", type=float, help="regression: an error is an absolute error above this "
                                                    "(default: the 90th percentile)")
    p.add_argument("--out", help="output directory (default .mlops/improve/errors/NAME)")
    p.add_argument("--json", action="store_true", help="last line of stdout: the analysis as JSON")
    p.set_defaults(func=cmd_errors)


def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local-port", type=int, metavar="PORT", help="canary steps: move traffic on a local "
                   "`mlops serve --ab` on PORT (restarted at each step)")
    p.add_argument("--metrics-url", help="canary steps: read the canary's Prometheus /metrics here")
    p.add_argument("--live-url", metavar="URL", help="shadow and canary on the live server at URL (`mlops serve "
                   "NAME@champion --shadow NAME@challenger --ab NAME@challenger:0`): traffic moved there, no restart")


def _rollout_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in (("local_port", args.local_port), ("metrics_url", args.metrics_url),
                              ("live_url", args.live_url)) if v is not None}


def cmd_retrain(args: argparse.Namespace) -> int:
    from mlops.improve.audit import AuditLog
    from mlops.improve.retrain import preflight
    from mlops.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)  # a bad recipe fails here, before anything starts
    _, refusal = preflight(loaded, args.reason, args.force, AuditLog(), time.time())
    if refusal:  # recorded, without starting Prefect for nothing
        from mlops.improve.retrain import retrain_recipe

        result = retrain_recipe(args.recipe, args.overrides, args.reason, by=args.by, force=args.force)
    else:
        from mlops.flows import retrain as retrain_flow

        result = retrain_flow(args.recipe, args.overrides, args.reason, args.by, args.force,
                              _rollout_options(args) or None)
    return _finish(result, args.json)


def cmd_approve(args: argparse.Namespace) -> int:
    from mlops.improve.retrain import approve

    return _finish(approve(args.run, args.by, args.note, rollout_options=_rollout_options(args)), args.json)


def cmd_reject(args: argparse.Namespace) -> int:
    from mlops.improve.retrain import reject

    return _finish(reject(args.run, args.by, args.note), args.json)


def _finish(result: dict[str, Any], as_json: bool) -> int:
    outcome = result["outcome"]
    print(result["message"])
    if result.get("run_id"):
        print(f"  run        {result['run_id']}  (model {result['model']}/{result.get('version') or '-'})")
    refresh = result.get("refresh") or {}
    if refresh.get("path"):
        print(f"  data       {refresh['path']}: {refresh['reference_rows']} reference + "
              f"{refresh['production_rows']} production rows ({refresh['fingerprint']})")
    for stage in result.get("stages", []):
        print(f"  {stage['stage']:<10} {'passed' if stage['passed'] else 'FAILED'}: {stage['summary']}")
    if as_json:
        print(json.dumps(result, default=str))
    return {"skipped": EXIT_SKIPPED, "stopped": EXIT_STOPPED, "rolled_back": EXIT_STOPPED}.get(outcome, 0)


def _since(text: str | None) -> float | None:
    """ISO 8601 (UTC when naive), unix seconds, or a duration ago (`30m`, `12h`, `7d`)."""
    if text is None:
        return None
    from mlops.core.errors import MlopsError
    from mlops.core.timespec import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise MlopsError(f"--since {text!r}: {exc}") from None


def _log_and_recipe(args: argparse.Namespace) -> tuple[Any, Any]:
    from pathlib import Path

    from mlops.improve.refresh import default_log

    improve = None
    if args.recipe:
        from mlops.recipe import load_recipe

        improve = load_recipe(args.recipe, check_data=False).recipe.improve
    log = Path(args.log) if args.log else Path(improve.refresh.log) if improve and improve.refresh.log else \
        default_log(args.name)
    return log, improve


def cmd_ab_report(args: argparse.Namespace) -> int:
    from mlops.core.errors import MlopsError
    from mlops.improve.ab import ab_report, render
    from mlops.improve.config import AbConfig

    log, improve = _log_and_recipe(args)
    cfg = improve.ab if improve else AbConfig()
    updates = {k: v for k, v in (("metric", args.metric), ("business_metric", args.business),
                                 ("min_effect", args.min_effect), ("alpha", args.alpha)) if v is not None}
    try:
        cfg = AbConfig.model_validate(cfg.model_dump() | updates)
    except ValueError as exc:
        raise MlopsError(f"ab report: {exc}") from None
    report = ab_report(log, args.name, cfg, improve.feedback if improve else None, _since(args.since))
    print(render(report), end="")
    if args.json:
        print(json.dumps(report, default=str))
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlops.core.errors import MlopsError
    from mlops.core.workspace import workspace
    from mlops.improve.error_analysis import analyse_errors, write_report

    if args.bins < 2 or args.top < 1 or args.min_rows < 1:
        raise MlopsError("--bins must be at least 2, --top and --min-rows at least 1")
    log, improve = _log_and_recipe(args)
    analysis = analyse_errors(log, args.name, since=_since(args.since), version=args.version,
                              variants=tuple(args.variant or ("champion", "challenger")),
                              feedback=improve.feedback if improve else None, bins=args.bins, top=args.top,
                              min_rows=args.min_rows, tolerance=args.tolerance)
    out = Path(args.out) if args.out else workspace().errors_dir(args.name)
    paths = write_report(analysis, out)
    o = analysis["overall"]
    print(f"errors of {args.name}: {o['errors']} of {o['rows']} labelled predictions wrong ({o['error_rate']:.1%}, "
          f"interval [{o['ci'][0]:.1%}, {o['ci'][1]:.1%}])")
    for s in analysis["slices"][:5]:
        print(f"  slice    {s['column']} {s['slice']}: {s['errors']}/{s['rows']} = {s['error_rate']:.1%} "
              f"[{s['ci'][0]:.1%}, {s['ci'][1]:.1%}]")
    for c in analysis["clusters"][:3]:
        print(f"  cluster  {c['rule']}: {c['errors']}/{c['rows']} = {c['error_rate']:.1%}")
    print(f"  report   {paths['html']}\n  json     {paths['json']}")
    if args.json:
        print(json.dumps(analysis | {"report": paths}, default=str))
    return 0
