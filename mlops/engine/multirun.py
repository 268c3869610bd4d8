"""Expand Hydra multirun overrides (`a=1,2 b=x,y`, `range()`, `choice()`) into one override list per job."""

from __future__ import annotations

from mlops.core.errors import MlopsError
from mlops.recipe.hydra_internals import split_sweep


def expand(overrides: list[str]) -> list[list[str]]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise MlopsError(f"cannot parse overrides {overrides}: {exc}") from None
    try:
        return split_sweep(parsed)
    except HydraException as exc:  # a sweep the basic sweeper cannot enumerate: interval(0,1)
        raise MlopsError(f"cannot expand overrides {overrides}: {exc}") from None
