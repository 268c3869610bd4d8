"""Expand Hydra multirun overrides (`a=1,2 b=x,y`, `range()`, `choice()`) into one override list per job."""

from __future__ import annotations

from mlops.core.errors import MlopsError


def expand(overrides: list[str]) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise MlopsError(f"cannot parse overrides {overrides}: {exc}") from None
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]
