"""The `mlops` command. Thin: parse, call one handler, print.

The parser (`mlops.cli.parser`) is light; each command's handler module is imported only when that command
runs. A user's mistake (`MlopsError`) is one line on stderr and exit code 2 (3 for failed gates), never a
traceback: what Prefect logs about it goes to a log file in the workspace, whose path follows the error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from mlops import __version__
from mlops.cli.output import json_mode, user_error_traces
from mlops.cli.parser import build_parser
from mlops.core.errors import MlopsError

__all__ = ["build_parser", "main"]


def _overrides_after_options(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """Overrides after an option (`RECIPE --model X a=1`) are still overrides."""
    if not extra:
        return
    if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    else:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _apply_renames(args: argparse.Namespace) -> None:
    """A flag spelt the old way still works for one release: say so, and use it under its new name."""
    for renamed in getattr(args, "renamed", []):
        value = getattr(args, renamed.dest, None)
        if value is None:
            continue
        print(f"warning: {renamed.old} is deprecated: use {renamed.new} (the old spelling goes away in the next "
              "release; see CHANGELOG.md)", file=sys.stderr)
        if renamed.new.startswith("--"):
            dest = renamed.new.lstrip("-").replace("-", "_")
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)


def _handler(spec: str) -> Callable[[argparse.Namespace], int]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _overrides_after_options(parser, args, extra)
    if args.version:
        print(__version__)
        return 0
    spec: str | None = getattr(args, "handler", None)
    if spec is None:
        parser.print_help()
        return 0
    _apply_renames(args)
    traces = None
    try:
        handler = _handler(spec)  # imports the command's module: Prefect, if it uses it, sets up its logging
        with json_mode(getattr(args, "json", False)), user_error_traces(args.command) as traces:
            code = handler(args)
        sys.stdout.flush()  # here, where a reader that went away is caught below, not at exit
        if traces.written:  # a sweep goes on past a failed trial: its trace is kept all the same
            print(f"(the full traces of the errors reported are in {traces.path})", file=sys.stderr)
        return code
    except MlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if traces is not None and traces.written:
            print(f"(the full trace is in {traces.path})", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader stopped reading (`mlops runs | head`): end quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush goes nowhere
        return 141  # 128 + SIGPIPE, what a shell reports for a writer the pipe ended


if __name__ == "__main__":
    raise SystemExit(main())
