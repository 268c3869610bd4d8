"""`mlops collect`: land a Redis stream of the prediction log, or KServe's payload logger, in a log store."""

from __future__ import annotations

import argparse

from mlops.cli.output import emit
from mlops.collect.http import serve_cloudevents
from mlops.collect.stream import collect_stream
from mlops.core.errors import MlopsError


def http_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` as (host, port); loopback unless a host is given."""
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MlopsError(f"--http {text!r}: expected [HOST:]PORT, e.g. 8081 or 0.0.0.0:8081")
    return (host.strip("[]") if sep and host else "127.0.0.1"), int(port)


def cmd_collect(args: argparse.Namespace) -> int:
    if (args.url is None) == (args.http is None):
        raise MlopsError("give either a stream URL (mlops collect redis://HOST:PORT/DB --log STORE) or --http "
                         "[HOST:]PORT (KServe's payload logger), not both and not neither")
    if args.http is not None:
        if args.once:  # a receiver has no backlog to finish: it would run until stopped all the same
            raise MlopsError("--once lands a stream's backlog and stops; with --http the collector receives "
                             "events until SIGTERM or Ctrl-C: drop --once")
        host, port = http_address(args.http)
        names = [n.strip() for n in args.input_names.split(",") if n.strip()] if args.input_names else None
        emit(serve_cloudevents(args.log, host, port, input_names=names))  # its summary, once stopped
        return 0
    result = collect_stream(args.url, args.log, once=args.once, batch=args.batch, claim_idle_s=args.claim_idle,
                            trim=not args.keep)
    if not args.json:
        print(f"{result.landed} rows landed in {result.log} from {result.stream} ({result.skipped} already there, "
              f"{result.dead} not rows: moved to {result.stream}:dead); {result.pending} pending, "
              f"{result.trimmed} landed entries removed from the stream")
    emit(result)
    return 0
