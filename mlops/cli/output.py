"""What the commands print: `--json` mode (one JSON object on stdout, everything else on stderr), and the
few lines several commands share."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mlops.core.errors import MlopsError
from mlops.core.workspace import workspace

_sink: IO[str] | None = None  # where `emit` writes while a command runs with --json


def jsonable(value: Any) -> Any:
    """A result as plain JSON data: pydantic models and dataclasses by their fields, paths as text."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: Any) -> None:
    """The command's result as one JSON object on stdout, when it runs with --json (else nothing)."""
    if _sink is not None:
        _sink.write(json.dumps(jsonable(result), default=str) + "\n")
        _sink.flush()


@contextmanager
def json_mode(enabled: bool) -> Iterator[None]:
    """With --json, stdout carries only what `emit` writes: every other line, ours or a library's or a child
    process's (a training worker writes to file descriptor 1), goes to stderr."""
    global _sink
    if not enabled:
        yield
        return
    real = sys.stdout
    try:
        fd_level = real.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a captured stdout (tests): no descriptor to move
        fd_level = False
    saved: int | None = None
    if fd_level:
        real.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
        _sink = os.fdopen(os.dup(saved), "w")
    else:
        _sink = real
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            _sink.close()
            os.dup2(saved, 1)
            os.close(saved)
        _sink = None


class UserErrorTraces(logging.Filter):
    """Keeps off the terminal what Prefect logs about a flow or task run that failed on a user's mistake (an
    `MlopsError`): its traceback, and the lines that repeat the error. They go to `path`, created on first
    need; the CLI prints the error once, in one line, with that path. A bug's traceback still shows."""

    RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.written = False
        self._errors: set[str] = set()  # how a user error seen so far shows in later lines about it
        self._format = logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.RUN_LOGGERS):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, MlopsError):
            # "Finished in state Failed('... ExpectationError: <its first line>...')" repeats it
            self._errors |= {f"{type(error).__name__}: ", *str(error).splitlines()[:1]}
        elif not any(e in record.getMessage() for e in self._errors):
            return True
        if not getattr(record, "mlops_traced", False):  # once, whichever of the handlers sees it first
            record.mlops_traced = True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(self._format.format(record) + "\n")
            self.written = True
        return False


@contextmanager
def user_error_traces(command: str) -> Iterator[UserErrorTraces]:
    """While a command runs, the terminal's log handlers (Prefect's console) leave user errors' tracebacks to
    a log file in the workspace: `workspace().trace_log`."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    traces = UserErrorTraces(workspace().trace_log(command, f"{stamp}-{os.getpid()}"))
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(traces)
    try:
        yield traces
    finally:
        for handler in handlers:
            handler.removeFilter(traces)


HEADLINE = ("accuracy", "auroc", "f1", "f1_macro", "rmse", "mae", "r2")


def headline(metric: str) -> bool:
    """A test metric worth one line of a summary."""
    split, _, name = metric.partition("/")
    return split == "test" and name in HEADLINE
