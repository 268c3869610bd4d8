"""The recipe's `monitor:` section (config group `configs/monitor/`). Pydantic only: imported by the recipe schema,
so `mlops validate` checks it without importing anything heavy."""

from __future__ import annotations

from mlops.recipe.section import Section


class MonitorConfig(Section):
    """Filled by the monitor phase."""
