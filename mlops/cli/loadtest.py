"""`mlops loadtest MODEL`: the evaluation's load test, on its own, against a bundle served here or a live URL."""

from __future__ import annotations

import argparse
import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from mlops.cli.output import emit
from mlops.core.errors import GateError, MlopsError
from mlops.core.refs import fetch
from mlops.evaluate.loadtest import (
    Settings,
    check_bounds,
    check_settings,
    read_rows,
    run_load_test,
    schema_rows,
)

LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, a CI runner, `kill`) as Ctrl-C: the server and Locust run in sessions of their own, so
    only the blocks that started them can stop them, and Python's default SIGTERM ends the process without
    running those blocks (both children went on at full CPU)."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_loadtest(args: argparse.Namespace) -> int:
    settings = Settings(users=args.users, duration_s=args.duration, warmup_s=args.warmup, rps=args.rps,
                        spawn_rate=args.spawn_rate, rows=args.rows, timeout_s=args.timeout)
    bounds = {metric: (lo, hi) for metric, lo, hi in (("load/p99_ms", None, args.max_p99_ms),
                                                      ("load/error_rate", None, args.max_error_rate),
                                                      ("load/rps", args.min_rps, None)) if lo is not None or hi is not None}
    if args.url and not args.url.startswith(("http://", "https://")):
        raise MlopsError(f"--url {args.url}: expected http://HOST:PORT (a running `mlops serve`)")
    check_settings(settings)
    for flag, value, top in (("--max-p99-ms", args.max_p99_ms, math.inf), ("--max-error-rate", args.max_error_rate, 1.0),
                             ("--min-rps", args.min_rps, math.inf)):
        if value is not None and not 0 <= value <= top:  # NaN fails too
            raise MlopsError(f"{flag} {value:g}: expected a number from 0 to {top:g}")
    if not args.rows >= 1:
        raise MlopsError(f"--rows {args.rows}: expected at least 1")
    resolved = fetch(args.model)
    rows = read_rows(Path(args.data)) if args.data else schema_rows(resolved.path, settings.rows)
    if args.url:
        host = args.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        where = "" if host in LOOPBACK else " (not loopback: its figures include the network)"
        print(f"load-testing the live server {args.url} with requests for {resolved.label}{where}")
    else:
        print(f"load-testing {resolved.label} served here by `mlops serve` on 127.0.0.1")
    with terminate_as_interrupt():
        result = run_load_test(resolved.path, rows, settings, url=args.url)
    print(result.line())
    if result.errors:
        print("  failures: " + ", ".join(f"{why} x{n}" for why, n in result.errors.items()))
    if result.requests and result.failures == result.requests:  # its figures measure the failures, not the model
        raise MlopsError(f"every one of the {result.requests} requests to {result.target} failed: is the server "
                         "up and serving this model?")
    broken = check_bounds(result, bounds)
    for line in broken:
        print(f"  FAILED: {line}")
    emit(result.model_dump() | {"model": resolved.label, "failed": broken})
    if broken:
        raise GateError(f"the load test broke {len(broken)} bound(s): {'; '.join(broken)}")
    return 0
