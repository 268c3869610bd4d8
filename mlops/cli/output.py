"""What the commands print: `--json` mode (one JSON object on stdout, everything else on stderr), and the
few lines several commands share."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import IO, Any

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


HEADLINE = ("accuracy", "auroc", "f1", "f1_macro", "rmse", "mae", "r2")


def headline(metric: str) -> bool:
    """A test metric worth one line of a summary."""
    split, _, name = metric.partition("/")
    return split == "test" and name in HEADLINE
