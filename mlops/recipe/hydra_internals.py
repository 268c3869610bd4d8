"""The one place mlops touches Hydra's private API (`hydra._internal`): nothing else may import it.

Hydra's public API composes one config; expanding a multirun's sweep (`a=1,2 b=x,y`) into its jobs is done by
the basic sweeper's `split_arguments`, which lives under `hydra._internal`. A Hydra upgrade may move or change
it without notice: tests/unit/test_hydra_conventions.py calls everything here against the installed Hydra and
fails loudly, naming what changed, when it does.
"""

from __future__ import annotations

from typing import Any

TESTED_HYDRA = "1.3"  # the Hydra series these were read from (hydra-core 1.3.8)


def split_sweep(overrides: list[Any]) -> list[list[str]]:
    """Parsed overrides (Hydra's `Override` objects) to one override list per job, every combination of the
    sweeps' values, in Hydra's own order (the last sweep varies fastest)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


# What Hydra imports lazily on the first compose of a process (its core plugins, found by scanning): the sweep's
# warm worker imports them once, so that no trial forked from it pays for them (mlops/sweep/warm.py).
COMPOSE_MODULES = (
    "hydra._internal.hydra",
    "hydra._internal.config_loader_impl",
    "hydra._internal.core_plugins.basic_launcher",
    "hydra._internal.core_plugins.basic_sweeper",
    "hydra._internal.core_plugins.file_config_source",
    "hydra._internal.core_plugins.importlib_resources_config_source",
    "hydra._internal.core_plugins.structured_config_source",
    "hydra._internal.core_plugins.bash_completion",
    "hydra._internal.core_plugins.fish_completion",
    "hydra._internal.core_plugins.zsh_completion",
)
