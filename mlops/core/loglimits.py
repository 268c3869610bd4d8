"""How large the prediction log may grow: its own module, light, because the recipe's `monitor:` section declares
it and `mlops validate` must not import the log's machinery (threads, sqlite, asyncio) to read a recipe."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogLimits:
    """How large the log may grow (None: unbounded). `archive`: rows past retention go to Parquet files beside
    the log, which `LogReader` still reads; False: they are deleted."""

    wal_max_bytes: int | None = None
    max_age_s: float | None = None
    max_bytes: int | None = None
    archive: bool = True

    @property
    def retains(self) -> bool:
        return self.max_age_s is not None or self.max_bytes is not None
