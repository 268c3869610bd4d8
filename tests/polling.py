"""Waiting in a test for something another process or thread does: one polling loop for every test that needs
one, so a timeout reads the same everywhere and names what never came."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], what: str, timeout: float = 60, *, interval: float = 0.05,
          proc: subprocess.Popen[Any] | None = None, diagnose: Callable[[], str] | None = None,
          ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call `check` every `interval` s until it returns something truthy, and return that. Fails naming `what`
    after `timeout` s, or at once when `proc` exits first (with what it printed to its stdout pipe). `diagnose`
    adds to a timeout's message (a server's log, say); an exception in `ignore` counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignore:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            said = proc.stdout.read() if proc.stdout is not None else "(no output)"
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n{said}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s" + (f"\n{diagnose()}" if diagnose else ""))
        time.sleep(interval)
