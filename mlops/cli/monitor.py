"""`mlops monitor`."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from mlops.cli.output import emit
from mlops.engine.validate import load_validated
from mlops.monitor.results import BacktestResult, LiveResult, MonitorResult, WindowBrief
from mlops.monitor.run import monitor


def cmd_monitor(args: argparse.Namespace) -> int:
    loaded = load_validated(args.recipe, args.overrides)  # a recipe error stops here, before anything loads
    result = monitor(loaded, args.model, log=args.log, since=args.since, until=args.until, backtest=args.backtest)
    print_result(result)
    emit(result)
    return 0


def print_result(result: MonitorResult) -> None:
    console = Console(highlight=False, soft_wrap=True)
    mode = "backtest of" if result.backtest else "monitored"
    ref = result.reference
    console.print(f"[bold]{mode} {result.model}[/bold] version {result.version or '-'}: "
                  f"{len(result.windows)} windows from {result.log} ({result.pending_rows} rows wait for "
                  f"the next window); reference: {ref['description']}")
    for note in result.notes:
        console.print(f"  note: {note}")
    if result.windows:
        table = Table("#", "window end", "rows", "drifted features", "live metric", "p99 ms", "schema", "breaches",
                      box=None, pad_edge=False)
        for w in result.windows[-30:]:
            metric = ", ".join(f"{k} {v:.3f}" for k, v in list(w.metrics.items())[:1]) or "-"
            p99 = (w.latency_ms or {}).get("p99")
            table.add_row(str(w.index), w.end, str(w.rows) + ("" if w.judged else " (too few)"),
                          _drifted(w), metric, "-" if p99 is None else f"{p99:.1f}",
                          "-" if w.schema_violation_rate is None else f"{w.schema_violation_rate:.1%}",
                          ", ".join(w.breaches) or "-")
        console.print(table)
    for a in result.alerts:
        colour = "red" if a.state == "fired" else "green"
        console.print(f"  [{colour}]{a.state.upper()}[/{colour}] {a.rule} at window {a.window.index} "
                      f"(ending {a.window.end_iso}): {a.reason}")
    if not result.alerts:
        console.print("  no alert fired" if result.backtest else "  no alert fired or resolved in this run")
    if isinstance(result, BacktestResult):
        console.print(f"  report     {result.report}")
    if isinstance(result, LiveResult) and result.evidently is not None:
        console.print(f"  evidently  {result.evidently.html}")
    # a backtest's page (beside its report) or the live dashboard: the one page this run wrote
    console.print(f"  dashboard  {result.dashboard}")


def _drifted(w: WindowBrief) -> str:
    names = w.drifted_features
    if w.drift_share is None:
        return "-"
    return f"{len(names)} ({w.drift_share:.0%})" + (f": {', '.join(names[:3])}" if names else "") + (
        "..." if len(names) > 3 else "")
