"""The recipe's `deploy:` section (config group `configs/deploy/`). Pydantic only: imported by the recipe schema,
so `mlops validate` checks it without importing anything heavy."""

from __future__ import annotations

from mlops.recipe.section import Section


class DeployConfig(Section):
    """Filled by the deploy phase."""
