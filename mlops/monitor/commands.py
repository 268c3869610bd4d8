"""`mlops` subcommands of the monitor phase. Importing this module must stay light (argparse only): heavy
libraries are imported inside the command functions."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this phase's subcommands on the `mlops` parser."""
    p = sub.add_parser("monitor", help="drift, live accuracy, latency and alerts over the prediction log (or a "
                                       "backtest of the alert rules)")
    p.add_argument("recipe", help="a recipe YAML file; its monitor: section sets windows, thresholds and alerts")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. monitor.window.size=500")
    p.add_argument("--model", help="NAME@ALIAS, NAME/VERSION or a bundle directory (default: the recipe's "
                                   "model @champion)")
    p.add_argument("--log", help="the prediction log (default: where `mlops serve` writes it, "
                                 ".mlops/predictions/<model>.sqlite)")
    p.add_argument("--since", help="only log rows from this time: ISO 8601 (UTC unless zoned), unix seconds, or a "
                                   "duration ago such as 24h")
    p.add_argument("--until", help="only log rows before this time (same forms as --since)")
    p.add_argument("--backtest", action="store_true",
                   help="replay the log window by window from scratch and report when each rule would have fired; "
                        "records nothing and sends no alert")
    p.add_argument("--json", action="store_true", help="last line of stdout: the result as one JSON object")
    p.set_defaults(func=cmd_monitor)


def cmd_monitor(args: argparse.Namespace) -> int:
    from mlops.recipe import load_recipe

    loaded = load_recipe(args.recipe, args.overrides)  # a recipe error stops here, before anything loads
    from mlops.monitor.run import monitor

    result = monitor(loaded, args.model, log=args.log, since=args.since, until=args.until, backtest=args.backtest)
    print_result(result)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def print_result(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    mode = "backtest of" if result["backtest"] else "monitored"
    ref = result["reference"]
    console.print(f"[bold]{mode} {result['model']}[/bold] version {result['version'] or '-'}: "
                  f"{len(result['windows'])} windows from {result['log']} ({result['pending_rows']} rows wait for "
                  f"the next window); reference: {ref['description']}")
    for note in result["notes"]:
        console.print(f"  note: {note}")
    if result["windows"]:
        table = Table("#", "window end", "rows", "drifted features", "live metric", "p99 ms", "schema", "breaches",
                      box=None, pad_edge=False)
        for w in result["windows"][-30:]:
            metric = ", ".join(f"{k} {v:.3f}" for k, v in list(w["metrics"].items())[:1]) or "-"
            p99 = (w["latency_ms"] or {}).get("p99")
            table.add_row(str(w["index"]), w["end"], str(w["rows"]) + ("" if w["judged"] else " (too few)"),
                          _drifted(w), metric, "-" if p99 is None else f"{p99:.1f}",
                          "-" if w["schema_violation_rate"] is None else f"{w['schema_violation_rate']:.1%}",
                          ", ".join(w["breaches"]) or "-")
        console.print(table)
    for a in result["alerts"]:
        colour = "red" if a["state"] == "fired" else "green"
        console.print(f"  [{colour}]{a['state'].upper()}[/{colour}] {a['rule']} at window {a['window']['index']} "
                      f"(ending {a['window']['end_iso']}): {a['reason']}")
    if not result["alerts"]:
        console.print("  no alert fired" if result["backtest"] else "  no alert fired or resolved in this run")
    if result["backtest"]:
        console.print(f"  report     {result['report']}")
    if result.get("evidently"):
        console.print(f"  evidently  {result['evidently']['html']}")
    console.print(f"  dashboard  {result['dashboard']}")


def _drifted(w: dict[str, Any]) -> str:
    names = w["drifted_features"]
    if w["drift_share"] is None:
        return "-"
    return f"{len(names)} ({w['drift_share']:.0%})" + (f": {', '.join(names[:3])}" if names else "") + (
        "..." if len(names) > 3 else "")
