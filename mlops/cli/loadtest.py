"""`mlops loadtest MODEL`: the evaluation's load test, on its own, against a bundle served here or a live URL."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlops.cli.output import emit
from mlops.core.errors import GateError, MlopsError
from mlops.core.refs import fetch
from mlops.evaluate.loadtest import Settings, check_bounds, read_rows, run_load_test, schema_rows

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def cmd_loadtest(args: argparse.Namespace) -> int:
    settings = Settings(users=args.users, duration_s=args.duration, warmup_s=args.warmup, rps=args.rps,
                        spawn_rate=args.spawn_rate, rows=args.rows, timeout_s=args.timeout)
    bounds = {metric: (lo, hi) for metric, lo, hi in (("load/p99_ms", None, args.max_p99_ms),
                                                      ("load/error_rate", None, args.max_error_rate),
                                                      ("load/rps", args.min_rps, None)) if lo is not None or hi is not None}
    if args.url and not args.url.startswith(("http://", "https://")):
        raise MlopsError(f"--url {args.url}: expected http://HOST:PORT (a running `mlops serve`)")
    resolved = fetch(args.model)
    rows = read_rows(Path(args.data)) if args.data else schema_rows(resolved.path, settings.rows)
    if args.url:
        host = args.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        where = "" if host in LOOPBACK else " (not loopback: its figures include the network)"
        print(f"load-testing the live server {args.url} with requests for {resolved.label}{where}")
    else:
        print(f"load-testing {resolved.label} served here by `mlops serve` on 127.0.0.1")
    result = run_load_test(resolved.path, rows, settings, url=args.url)
    print(result.line())
    if result.errors:
        print("  failures: " + ", ".join(f"{why} x{n}" for why, n in result.errors.items()))
    broken = check_bounds(result, bounds)
    for line in broken:
        print(f"  FAILED: {line}")
    emit(result.model_dump() | {"model": resolved.label, "failed": broken})
    if broken:
        raise GateError(f"the load test broke {len(broken)} bound(s): {'; '.join(broken)}")
    return 0
