"""Retries with exponential backoff (tenacity) for calls that cross a network: webhooks, a server's
/metrics, the live server's control routes, kubectl.

Only transient failures are retried: a refused or reset connection, a timeout, a 5xx or 429 answer, or what
the caller's predicate calls transient. A 4xx is the caller's mistake (a wrong URL, a bad token, a body the
receiver refuses) and fails at once. Each retry is one progress line. MLflow's REST client retries by itself
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, 429/5xx and connection errors), so its calls are not wrapped again here.
"""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Callable
from typing import Any, TypeVar

from mlops.core.log import say

T = TypeVar("T")

ATTEMPTS = 4
# 0.5, 1, 2 s between the four attempts: a receiver restarting or a load balancer's brief 503 passes, a dead
# one costs under 4 s. Tests lower these module values.
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 8.0

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def transient_http(exc: BaseException) -> bool:
    """A failure of an HTTP call worth another try: no connection, a timeout, a 5xx or 429."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in _TRANSIENT_STATUS
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        # a name that does not resolve is a wrong URL, not a blip
        return isinstance(reason, OSError) and not isinstance(reason, socket.gaierror)
    return isinstance(exc, ConnectionError | TimeoutError | socket.timeout)


def with_retries(call: Callable[[], T], what: str, *, transient: Callable[[BaseException], bool] = transient_http,
                 attempts: int | None = None) -> T:
    """`call()`, again after a backoff while it fails transiently; its last error is raised as it is."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    n = attempts or ATTEMPTS

    def log(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        say(f"{what} failed ({exc}); retry {state.attempt_number} of {n - 1} in {state.upcoming_sleep:.2g} s")

    retrying = Retrying(stop=stop_after_attempt(n), wait=wait_exponential(multiplier=FIRST_WAIT_S, max=MAX_WAIT_S),
                        retry=retry_if_exception(transient), before_sleep=log, reraise=True)
    return retrying(call)
