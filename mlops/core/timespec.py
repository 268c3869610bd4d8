"""Durations (`90s`, `15m`, `1h`, `7d`) and points in time (ISO 8601, unix seconds, or a duration ago).

Light on purpose: the recipe schema validates `monitor.window.duration` and `alerts.cooldown` with it.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from mlops.core.errors import MlopsError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
MAX_UNIX = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last moment datetime can name
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text` (`30s`, `15m`, `1h`, `1.5d`, `2w`); raises ValueError with what is accepted."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"'{text}' is not a duration: use a positive number with a unit s, m, h, d or w "
                         "(e.g. 15m, 1h, 7d)")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from an ISO 8601 time (naive means UTC), unix seconds, or a duration ago (`2h`)."""
    text = str(text).strip()
    now = time.time() if now is None else now
    if _DURATION.match(text):
        return now - parse_duration(text)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # nan compared with every row's time leaves none; 1e400 is inf; neither is a moment
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_UNIX:
            raise ValueError(f"'{text}' is not a time: unix seconds are a number from 0 to {MAX_UNIX:.0f} (year "
                             "9999)")
        return seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not a time: use ISO 8601 (2026-11-03T10:00, UTC when no zone is given), "
                         "unix seconds, or a duration ago such as 2h or 7d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def time_option(flag: str, text: str | None) -> float | None:
    """A command-line time (`--since 24h`) as unix seconds; None when the option was not given. A bad value
    is the user's to fix: MlopsError naming the option."""
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise MlopsError(f"{flag}: {exc}") from None


def iso(ts: float | None) -> str | None:
    """Unix seconds as a readable UTC time (to the second)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
