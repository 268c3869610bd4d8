"""The library's progress lines: one logger, `mlops`, instead of `print()`.

A person at a terminal reads them on stdout as before ("mlops: step train: done"); Prefect's run logs hold
them too, because the runner names `mlops` in PREFECT_LOGGING_EXTRA_LOGGERS, so a flow run in the Prefect UI
shows what the command printed.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LOGGER_NAME = "mlops"


class _CurrentStdout(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is when a line is logged: `--json` mode and pytest's capture swap it,
    and a handler that kept the stream it was created with would write past them."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def logger() -> logging.Logger:
    """The `mlops` logger, with its terminal handler attached once per process."""
    log = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _CurrentStdout) for h in log.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(who)s: %(message)s", defaults={"who": LOGGER_NAME}))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # a root handler (Prefect's console, pytest's) would print every line twice
    return log


def say(message: str, who: str = LOGGER_NAME) -> None:
    """One progress line: "<who>: <message>" on stdout ("mlops: ..." by default, "mlops serve: ..." for the
    server), and a record in the run's logs under Prefect."""
    logger().info(message, extra={"who": who})
    for handler in logger().handlers:
        # the terminal's line now; not Prefect's API handler, whose flush waits for the server to store every
        # queued line (about 35 ms a line): its worker sends them in batches, and drains them at exit
        if isinstance(handler, _CurrentStdout):
            handler.flush()
